package test

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mxrelay/mxrelay"
	"github.com/mxrelay/mxrelay/internal/testkit"
	"github.com/mxrelay/mxrelay/relaytest"
)

// A RateLimit whose next token is further off than a session can wait
// (SessionTimeout less CommandTimeout) ends the session rather than hold
// it: the next one must wait for the token, not open at once, find the
// same wait, and end again, a session a few milliseconds for as long as
// the wait lasts. Here the second email's token is a minute off and a
// session lasts 30 s: two sessions do. (Under the bubble's clock a loop
// of sessions never lets the minute pass: at 20 sessions the test
// withdraws the email so that it ends.)
func TestRedteam8RateLimitWaitOpensNoSessionLoop(t *testing.T) {
	testkit.Bubble(t, func(t *testing.T) {
		s := testkit.NewRelay(t, nil)
		var sessions atomic.Int64
		var second atomic.Pointer[mxrelay.Handle]
		c := testkit.NewClient(t, s, &mxrelay.Options{
			RateLimit:      mxrelay.RateLimit{Emails: 1, Per: time.Minute},
			SessionTimeout: 30 * time.Second,
			CommandTimeout: 3 * time.Second,
			OnEvent: func(e mxrelay.Event) {
				if e.Type == mxrelay.EventSessionStarted && sessions.Add(1) == 20 {
					second.Load().Cancel()
				}
			},
		})
		h1, err := c.Enqueue(testkit.Mail("first"))
		require.NoError(t, err)
		h2, err := c.Enqueue(testkit.Mail("second"))
		require.NoError(t, err)
		second.Store(h2)
		// The bubble's clock: a minute passes in no time, and a hang is
		// a deadlock synctest reports.
		for _, h := range []*mxrelay.Handle{h1, h2} {
			res, err := h.Wait(context.Background())
			require.NotNil(t, res)
			assert.NoError(t, err)
			assert.Equal(t, mxrelay.OutcomeDelivered, res.Outcome)
		}
		assert.LessOrEqual(t, sessions.Load(), int64(2), "sessions opened while the rate limit made them wait")
		assert.Equal(t, []string{"first", "second"}, testkit.Subjects(s))
	})
}

// An upstream that answers every MAIL "slow down": the email goes round
// its free tries, paced at MinRate (one a second). Close with a deadline
// in the middle of that loop hands it back, not sent; its own timeout
// fails it with ErrTimeout; Close without a deadline waits for it to end
// after its free tries and retries. Each leaves no goroutine (goleak)
// and the Stats in step with the Result's Outcome.
func TestRedteam8ThrottledForeverLifecycle(t *testing.T) {
	for _, tc := range []struct {
		name    string
		opts    []mxrelay.SendOption
		close   time.Duration // Close's deadline, after the third try; 0: none
		outcome mxrelay.Outcome
		is      []error
	}{
		{name: "Close gives up mid-loop", opts: []mxrelay.SendOption{mxrelay.WithRetries(1)}, close: time.Second,
			outcome: mxrelay.OutcomeHandedBack, is: []error{mxrelay.ErrClosed}},
		{name: "the email's timeout mid-loop", opts: []mxrelay.SendOption{mxrelay.WithRetries(1), mxrelay.WithTimeout(4 * time.Second)},
			outcome: mxrelay.OutcomeFailed, is: []error{mxrelay.ErrTimeout, mxrelay.ErrCanceled}},
		{name: "Close drains it to its end", opts: []mxrelay.SendOption{mxrelay.WithRetries(1)}, close: -1,
			outcome: mxrelay.OutcomeFailed},
	} {
		t.Run(tc.name, func(t *testing.T) {
			testkit.Bubble(t, func(t *testing.T) {
				s := testkit.NewRelay(t, nil)
				s.Inject(relaytest.Fault{Kind: relaytest.ReplaceReply, Command: "MAIL", Reply: "451 4.7.0 Throttling: too many messages", Times: -1})
				tries := make(chan struct{}, 64)
				c, err := mxrelay.New(s.URL, s.APIKey, testkit.ClientOptions(s, &mxrelay.Options{OnEvent: func(e mxrelay.Event) {
					if e.Type == mxrelay.EventEmailRetrying {
						tries <- struct{}{}
					}
				}}))
				require.NoError(t, err)
				h, err := c.Enqueue(testkit.Mail("never"), tc.opts...)
				require.NoError(t, err)
				if tc.close != 0 {
					for range 3 {
						<-tries
					}
					ctx := context.Background()
					if tc.close > 0 {
						var cancel context.CancelFunc
						ctx, cancel = context.WithTimeout(ctx, tc.close)
						defer cancel()
					}
					c.Close(ctx)
				}
				res, err := h.Wait(context.Background())
				require.NotNil(t, res)
				require.Error(t, err)
				require.NoError(t, c.Close(context.Background()), "nothing left to hand back")
				testkit.CheckResult(t, res)
				assert.Equal(t, tc.outcome, res.Outcome, "%v", err)
				for _, is := range tc.is {
					assert.ErrorIs(t, err, is)
				}
				if tc.close < 0 {
					assert.Equal(t, 10, res.Attempts, "the first, 8 free tries and one retry")
				} else {
					assert.Less(t, res.Attempts, 10, "ended mid-loop")
				}
				st := c.Stats()
				assert.EqualValues(t, 1, st.EmailsFailed)
				assert.EqualValues(t, map[bool]int{true: 1}[tc.outcome == mxrelay.OutcomeHandedBack], st.EmailsHandedBack)
			})
		})
	}
}

// A relay that closes every connection with 1008 (its rate limit): each
// close slows the client down, and the email still ends, failed, within
// MaxReconnectAttempts set-ups (closed at EHLO, before any email is
// taken) or its retries (closed at MAIL); the relay sees no more
// connections than that allows.
func TestRedteam8PolicyCloseLoopEnds(t *testing.T) {
	for _, tc := range []struct {
		command string
		conns   int // the most relay connections it may take
		connErr bool
	}{
		{"EHLO", 4, true},
		{"MAIL", 3, false},
	} {
		t.Run(tc.command, func(t *testing.T) {
			testkit.Bubble(t, func(t *testing.T) {
				s := testkit.NewRelay(t, nil)
				s.Inject(relaytest.Fault{Kind: relaytest.CloseWebSocket, Command: tc.command, Code: 1008, Times: -1})
				// Lock-step: MAIL goes alone, so a close at it leaves no
				// end of data out (in a BDAT window it would be unknown).
				c := testkit.NewClient(t, s, &mxrelay.Options{MaxReconnectAttempts: 4, DisablePipelining: true})
				res, err := c.Send(context.Background(), testkit.Mail("policy"), mxrelay.WithRetries(2))
				require.Error(t, err)
				assert.Equal(t, mxrelay.OutcomeFailed, res.Outcome)
				var ce *mxrelay.ConnectError
				assert.Equal(t, tc.connErr, errors.As(err, &ce), "%v", err)
				var re *mxrelay.RelayError
				require.ErrorAs(t, err, &re)
				assert.Equal(t, 1008, re.Code)
				assert.LessOrEqual(t, s.Stats().Connections, tc.conns)
				assert.Positive(t, c.Stats().ThrottleCuts)
			})
		})
	}
}
