package mxrelay_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mxrelay/mxrelay"
	"github.com/mxrelay/mxrelay/internal/testkit"
	"github.com/mxrelay/mxrelay/relaytest"
)

// One limiter for every session: three sessions at once stay under an
// upstream that throttles past 5 emails a quarter second, with the
// Client limited to 10 a second. With a limiter per session (30 a second
// in all), or none, the upstream answers 451.
func TestRateLimitIsSharedBySessions(t *testing.T) {
	s := testkit.NewRelay(t, &relaytest.Options{Throttle: &relaytest.Throttle{Limit: 5, Per: 250 * time.Millisecond}})
	c := testkit.NewClient(t, s, &mxrelay.Options{
		MaxConcurrentSessions: 3,
		RateLimit:             mxrelay.RateLimit{Emails: 10, Per: time.Second},
	})
	var hs []*mxrelay.Handle
	for i := range 24 {
		h, err := c.Enqueue(testkit.Mail(fmt.Sprint("paced ", i)), mxrelay.WithRetries(0))
		require.NoError(t, err)
		hs = append(hs, h)
	}
	for _, h := range hs {
		_, err := h.Wait(testkit.Ctx(t))
		require.NoError(t, err)
	}
	assert.Zero(t, s.Stats().Throttled, "the upstream had to throttle")
	assert.Len(t, s.Mailbox(), 24)
}

// The same upstream without a limit: the test above can fail.
func TestWithoutRateLimitTheUpstreamThrottles(t *testing.T) {
	s := testkit.NewRelay(t, &relaytest.Options{Throttle: &relaytest.Throttle{Limit: 5, Per: time.Hour}})
	c := testkit.NewClient(t, s, &mxrelay.Options{MaxConcurrentSessions: 3, Throttle: mxrelay.Throttle{Disable: true}})
	var hs []*mxrelay.Handle
	for i := range 12 {
		h, err := c.Enqueue(testkit.Mail(fmt.Sprint("unpaced ", i)), mxrelay.WithRetries(0))
		require.NoError(t, err)
		hs = append(hs, h)
	}
	for _, h := range hs {
		h.Wait(testkit.Ctx(t))
	}
	assert.Equal(t, 7, s.Stats().Throttled)
}

func TestRateLimitValidation(t *testing.T) {
	for _, r := range []mxrelay.RateLimit{{Emails: -1, Per: time.Second}, {Emails: 1}, {Emails: 1, Per: -time.Second}, {Emails: 1, Per: time.Second, Burst: -1}} {
		_, err := mxrelay.New("ws://127.0.0.1:1/smtp", "k", &mxrelay.Options{RateLimit: r})
		assert.Error(t, err, "%+v", r)
	}
}

// sendThrottled enqueues n emails and waits for each result; it returns how
// many were not delivered.
func sendThrottled(t *testing.T, c *mxrelay.Client, n int, opts ...mxrelay.SendOption) int {
	t.Helper()
	var hs []*mxrelay.Handle
	for i := range n {
		h, err := c.Enqueue(testkit.Mail(fmt.Sprint("throttled ", i)), opts...)
		require.NoError(t, err)
		hs = append(hs, h)
	}
	failed := 0
	for _, h := range hs {
		if _, err := h.Wait(testkit.Ctx(t)); err != nil {
			failed++
		}
	}
	return failed
}

// An upstream that accepts 20 emails every 200 ms and answers the rest
// 451 4.7.0: with throttle feedback the client slows down and delivers
// every email with one retry each; without it, emails run out of retries.
func TestThrottleFeedbackSlowsDownAndDelivers(t *testing.T) {
	throttle := &relaytest.Throttle{Limit: 20, Per: 200 * time.Millisecond}
	s := testkit.NewRelay(t, &relaytest.Options{Throttle: throttle})
	var rates []float64
	c := testkit.NewClient(t, s, &mxrelay.Options{MaxQueueSize: 300, OnEvent: func(e mxrelay.Event) {
		if e.Type == mxrelay.EventRateChanged {
			rates = append(rates, e.Rate)
		}
	}})
	assert.Zero(t, sendThrottled(t, c, 200, mxrelay.WithRetries(1)), "every email delivered")
	st := c.Stats()
	assert.Positive(t, st.ThrottleCuts)
	assert.Len(t, s.Mailbox(), 200, "no duplicate, none lost")
	require.NoError(t, c.Close(testkit.Ctx(t)))
	assert.NotEmpty(t, rates, "rateChanged announced the cuts")

	off := testkit.NewRelay(t, &relaytest.Options{Throttle: throttle})
	c2 := testkit.NewClient(t, off, &mxrelay.Options{MaxQueueSize: 300, Throttle: mxrelay.Throttle{Disable: true}})
	assert.Positive(t, sendThrottled(t, c2, 200, mxrelay.WithRetries(1)), "without feedback the retries run out")
	assert.Zero(t, c2.Stats().ThrottleCuts)
}

// A 5xx that a provider sends to mean "too many emails per second" is
// temporary: the email goes again. With no texts configured, it fails.
func TestThrottle5xxTextsAreTemporary(t *testing.T) {
	for _, tc := range []struct {
		name   string
		texts  []string
		failed bool
	}{
		{"default texts", nil, false},
		{"no texts", []string{}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := testkit.NewRelay(t, nil)
			s.Inject(relaytest.Fault{Kind: relaytest.ReplaceReply, Command: ".", Reply: "554 5.7.1 Too many emails per second, slow down"})
			c := testkit.NewClient(t, s, &mxrelay.Options{Throttle: mxrelay.Throttle{Texts: tc.texts}})
			res, err := c.Send(testkit.Ctx(t), testkit.Mail("five hundred"))
			if tc.failed {
				require.Error(t, err)
				assert.Equal(t, 1, res.Attempts)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, 2, res.Attempts)
		})
	}
}

// Greylisting says "later" for a sender and recipient, not for the rate:
// retried as any 4xx, and the rate is left alone.
func TestGreylistingIsNotThrottling(t *testing.T) {
	s := testkit.NewRelay(t, nil)
	s.Inject(relaytest.Fault{Kind: relaytest.ReplaceReply, Command: "RCPT", Reply: "451 4.7.1 Greylisted, please try again later"})
	c := testkit.NewClient(t, s, nil)
	res, err := c.Send(testkit.Ctx(t), testkit.Mail("grey"))
	require.NoError(t, err)
	assert.Equal(t, 2, res.Attempts)
	assert.Zero(t, c.Stats().ThrottleCuts)
}

// A "slow down" refusal spends no retry while the client slows down for
// it: an email with no retries at all still goes again.
func TestThrottledAttemptSpendsNoRetry(t *testing.T) {
	s := testkit.NewRelay(t, nil)
	s.Inject(relaytest.Fault{Kind: relaytest.ReplaceReply, Command: "MAIL", Reply: "451 4.7.0 Throttling: too many messages"})
	c := testkit.NewClient(t, s, nil)
	res, err := c.Send(testkit.Ctx(t), testkit.Mail("free try"), mxrelay.WithRetries(0))
	require.NoError(t, err)
	assert.Equal(t, 2, res.Attempts)
	assert.EqualValues(t, 1, c.Stats().ThrottleCuts)
}

// An upstream that never lets anything through: the email still ends,
// after its free tries and its retries.
func TestThrottledForeverStillEnds(t *testing.T) {
	s := testkit.NewRelay(t, nil)
	s.Inject(relaytest.Fault{Kind: relaytest.ReplaceReply, Command: "MAIL", Reply: "451 4.7.0 Throttling", Times: -1})
	c := testkit.NewClient(t, s, &mxrelay.Options{Throttle: mxrelay.Throttle{MinRate: 1000}})
	res, err := c.Send(testkit.Ctx(t), testkit.Mail("never"), mxrelay.WithRetries(1))
	require.Error(t, err)
	assert.Equal(t, 10, res.Attempts, "8 free tries, the first attempt and one retry")
	assert.Equal(t, mxrelay.OutcomeFailed, res.Outcome)
}

// A relay that closes with 1008 (policy violation: its rate limit) makes
// the client slow down, and the email goes again.
func TestRelayPolicyCloseSlowsDown(t *testing.T) {
	s := testkit.NewRelay(t, nil)
	s.Inject(relaytest.Fault{Kind: relaytest.CloseWebSocket, Command: "EHLO", Code: 1008})
	c := testkit.NewClient(t, s, nil)
	_, err := c.Send(testkit.Ctx(t), testkit.Mail("policy"))
	require.NoError(t, err)
	assert.EqualValues(t, 1, c.Stats().ThrottleCuts)
	assert.Positive(t, c.Stats().SendRate)
}

// The run, under the bubble's clock: an upstream that accepts
// 100 emails a second (relaytest's window of a second) and answers the
// rest 451 4.7.0, a 10 ms round trip, 3,000 emails enqueued at once on a
// client at its defaults (one session of 10 emails at a time). Every
// email is delivered, at 90% of the limit or more, with fewer 451s than
// 5% of the emails; the blast before the first refusal costs about what
// a session has in flight, not the rest of the first second; the rate
// falls on each refusal and rises back while replies are clean, never
// under MinRate. The client, its sessions' set-up and the relay are the
// real ones: a model of the controller alone, sending without sessions,
// met these figures while the client sent at 0.7 of the limit.
func TestFeedbackAgainstAThrottlingUpstream(t *testing.T) {
	testkit.Bubble(t, func(t *testing.T) {
		const n, limit = 3000, 100
		s := testkit.NewRelay(t, &relaytest.Options{
			Throttle: &relaytest.Throttle{Limit: limit, Per: time.Second},
			Latency:  relaytest.Latency{ToServer: 5 * time.Millisecond, ToClient: 5 * time.Millisecond},
		})
		var mu sync.Mutex
		var rates []float64
		c := testkit.NewClient(t, s, &mxrelay.Options{
			MaxQueueSize: n, RetryInterval: time.Second, MaxRetryInterval: time.Minute,
			OnEvent: func(e mxrelay.Event) {
				if e.Type == mxrelay.EventRateChanged {
					mu.Lock()
					rates = append(rates, e.Rate)
					mu.Unlock()
				}
			},
		})
		firstSecond := make(chan int, 1)
		go func() {
			time.Sleep(1500 * time.Millisecond)
			firstSecond <- s.Stats().Throttled
		}()
		start := time.Now()
		var hs []*mxrelay.Handle
		for i := range n {
			h, err := c.Enqueue(testkit.Mail(fmt.Sprint("throttled ", i)))
			require.NoError(t, err)
			hs = append(hs, h)
		}
		failed := 0
		for _, h := range hs {
			if _, err := h.Wait(context.Background()); err != nil {
				failed++
			}
		}
		elapsed := time.Since(start)
		require.NoError(t, c.Close(context.Background()))
		assert.Zero(t, failed)
		assert.Len(t, s.Mailbox(), n, "no duplicate, none lost")
		assert.GreaterOrEqual(t, float64(n)/elapsed.Seconds(), 0.9*limit, "delivered at 90%% of the limit: %d in %v", n, elapsed)
		refused := s.Stats().Throttled
		assert.Less(t, refused, n/20, "451s under 5% of the emails")
		first := <-firstSecond
		assert.LessOrEqual(t, first, 20, "the first second's 451s: two sessions' emails at most")
		t.Logf("%d delivered in %v, %d answered 451 (%d in the first 1.5 s), %d cuts", n, elapsed, refused, first, c.Stats().ThrottleCuts)

		mu.Lock()
		defer mu.Unlock()
		falls, rises := 0, 0
		for i, r := range rates {
			assert.True(t, r == 0 || r >= 1, "rate %v: under MinRate", r)
			if i > 0 {
				switch prev := rates[i-1]; {
				case r != 0 && (prev == 0 || r < prev):
					falls++
				case r == 0 || r > prev:
					rises++
				}
			}
		}
		assert.Positive(t, falls, "the rate fell: %v", rates)
		assert.Greater(t, rises, falls, "and rose back, a step at a time: %v", rates)
	})
}
