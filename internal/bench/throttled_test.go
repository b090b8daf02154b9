package bench

import (
	"bytes"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mxrelay/mxrelay"
	"github.com/mxrelay/mxrelay/relaytest"
)

// TestThrottleRows sends a burst past the upstream's limit, with throttle
// feedback and without: every email ends delivered or refused with 451
// (RunBatch checks it, and the sink against the delivered ones), the
// upstream refused some, and only feedback cut the rate.
func TestThrottleRows(t *testing.T) {
	ctx := testCtx(t)
	cfg := Config{ThrottleN: 40, ThrottleLimit: 20, RetryInterval: 20 * time.Millisecond, Timeout: 25 * time.Second}
	e, err := NewEnvFor(throttleSetup(cfg))
	require.NoError(t, err)
	t.Cleanup(e.Close)
	m := testMail(t)
	for _, disable := range []bool{false, true} {
		row := throttleRow(ctx, cfg, e, disable, m)
		require.NoError(t, row.Err, row.Label)
		assert.Equal(t, 40, row.Delivered+row.Failed, row.Label)
		assert.Positive(t, row.Throttled, "%s: 40 at once against 20 a second", row.Label)
		assert.Positive(t, row.Rate(), row.Label)
		assert.InDelta(t, row.Rate()/20, row.OfLimit(), 1e-9, row.Label)
		assert.InDelta(t, float64(row.Throttled)/40, row.ThrottledShare(), 1e-9, row.Label)
		if disable {
			assert.Zero(t, row.Cuts, "no feedback, no cut")
		} else {
			assert.Positive(t, row.Cuts, "the 451s cut the rate")
		}
	}
}

// TestBatchChecksHowEachEnded: an email refused otherwise than the run
// expects fails it, and so does a sink that did not get a delivered one.
func TestBatchChecksHowEachEnded(t *testing.T) {
	ctx := testCtx(t)
	m := testMail(t)
	e := newEnv(t, 0, Chunking)
	c, err := e.NewClientWith(mxrelay.Options{RetryInterval: time.Millisecond})
	require.NoError(t, err)
	defer closeClient(c)
	emails := func(n int) []mxrelay.Email {
		var es []mxrelay.Email
		for range n {
			es = append(es, mxrelay.Email{From: m.From, To: m.To, Body: bytes.NewReader(m.Body)})
		}
		return es
	}

	end, err := RunBatch(ctx, c, e.Sink, emails(3), len(m.Body), 451, nil)
	require.NoError(t, err)
	assert.Equal(t, Ending{Delivered: 3, Elapsed: end.Elapsed, LastDelivered: end.LastDelivered, Attempts: 1}, end)
	assert.Equal(t, end.Elapsed, end.LastDelivered)

	e.Relay.Inject(relaytest.Fault{Kind: relaytest.ReplaceReply, Command: "MAIL", Reply: "550 5.7.1 go away", Times: 1})
	_, err = RunBatch(ctx, c, e.Sink, emails(2), len(m.Body), 451, nil)
	assert.ErrorContains(t, err, "want delivered or refused with 451")

	_, err = RunBatch(ctx, c, e.Sink, emails(1), len(m.Body)+1, 451, nil)
	assert.ErrorContains(t, err, "the sink received 1 messages")
}
