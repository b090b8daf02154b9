package mxrelay_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mxrelay/mxrelay"
	"github.com/mxrelay/mxrelay/relaytest"
)

// sendThrottled enqueues n emails and waits for each result; it returns how
// many were not delivered.
func sendThrottled(t *testing.T, c *mxrelay.Client, n int, opts ...mxrelay.SendOption) int {
	t.Helper()
	var hs []*mxrelay.Handle
	for i := range n {
		h, err := c.Enqueue(mail(fmt.Sprint("throttled ", i)), opts...)
		require.NoError(t, err)
		hs = append(hs, h)
	}
	failed := 0
	for _, h := range hs {
		if _, err := h.Wait(ctxT(t)); err != nil {
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
	s := newRelay(t, &relaytest.Options{Throttle: throttle})
	var rates []float64
	c := newClient(t, s, &mxrelay.Options{MaxQueueSize: 300, OnEvent: func(e mxrelay.Event) {
		if e.Type == mxrelay.EventRateChanged {
			rates = append(rates, e.Rate)
		}
	}})
	assert.Zero(t, sendThrottled(t, c, 200, mxrelay.WithRetries(1)), "every email delivered")
	st := c.Stats()
	assert.Positive(t, st.ThrottleCuts)
	assert.Len(t, s.Mailbox(), 200, "no duplicate, none lost")
	require.NoError(t, c.Close(ctxT(t)))
	assert.NotEmpty(t, rates, "rateChanged announced the cuts")

	off := newRelay(t, &relaytest.Options{Throttle: throttle})
	c2 := newClient(t, off, &mxrelay.Options{MaxQueueSize: 300, Throttle: mxrelay.Throttle{Disable: true}})
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
			s := newRelay(t, nil)
			s.Inject(relaytest.Fault{Kind: relaytest.ReplaceReply, Command: ".", Reply: "554 5.7.1 Too many emails per second, slow down"})
			c := newClient(t, s, &mxrelay.Options{Throttle: mxrelay.Throttle{Texts: tc.texts}})
			res, err := c.Send(ctxT(t), mail("five hundred"))
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
	s := newRelay(t, nil)
	s.Inject(relaytest.Fault{Kind: relaytest.ReplaceReply, Command: "RCPT", Reply: "451 4.7.1 Greylisted, please try again later"})
	c := newClient(t, s, nil)
	res, err := c.Send(ctxT(t), mail("grey"))
	require.NoError(t, err)
	assert.Equal(t, 2, res.Attempts)
	assert.Zero(t, c.Stats().ThrottleCuts)
}

// A "slow down" refusal spends no retry while the client slows down for
// it: an email with no retries at all still goes again.
func TestThrottledAttemptSpendsNoRetry(t *testing.T) {
	s := newRelay(t, nil)
	s.Inject(relaytest.Fault{Kind: relaytest.ReplaceReply, Command: "MAIL", Reply: "451 4.7.0 Throttling: too many messages"})
	c := newClient(t, s, nil)
	res, err := c.Send(ctxT(t), mail("free try"), mxrelay.WithRetries(0))
	require.NoError(t, err)
	assert.Equal(t, 2, res.Attempts)
	assert.EqualValues(t, 1, c.Stats().ThrottleCuts)
}

// An upstream that never lets anything through: the email still ends,
// after its free tries and its retries.
func TestThrottledForeverStillEnds(t *testing.T) {
	s := newRelay(t, nil)
	s.Inject(relaytest.Fault{Kind: relaytest.ReplaceReply, Command: "MAIL", Reply: "451 4.7.0 Throttling", Times: -1})
	c := newClient(t, s, &mxrelay.Options{Throttle: mxrelay.Throttle{MinRate: 1000}})
	res, err := c.Send(ctxT(t), mail("never"), mxrelay.WithRetries(1))
	require.Error(t, err)
	assert.Equal(t, 10, res.Attempts, "8 free tries, the first attempt and one retry")
	assert.Equal(t, mxrelay.OutcomeFailed, res.Outcome)
}

// A relay that closes with 1008 (policy violation: its rate limit) makes
// the client slow down, and the email goes again.
func TestRelayPolicyCloseSlowsDown(t *testing.T) {
	s := newRelay(t, nil)
	s.Inject(relaytest.Fault{Kind: relaytest.CloseWebSocket, Command: "EHLO", Code: 1008})
	c := newClient(t, s, nil)
	_, err := c.Send(ctxT(t), mail("policy"))
	require.NoError(t, err)
	assert.EqualValues(t, 1, c.Stats().ThrottleCuts)
	assert.Positive(t, c.Stats().SendRate)
}
