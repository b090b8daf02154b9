package bench

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mxrelay/mxrelay/relaytest"
)

// TestWarmRows: a lingering session serves every Send, with either
// MaxEmailsPerSession when it is above their number; without Linger each
// Send opens a session and a channel of its own.
func TestWarmRows(t *testing.T) {
	ctx := testCtx(t)
	cfg := Config{WarmSends: 3, WarmGap: 10 * time.Millisecond, Timeout: 20 * time.Second}
	e := newEnv(t, 2*time.Millisecond, Chunking)
	m := testMail(t)
	vs := warmVariants(cfg)
	require.Len(t, vs, 3)
	for i, want := range []int{1, 1, 4} {
		row := warmRow(ctx, cfg, e, vs[i], m)
		require.NoError(t, row.Err, row.Label)
		assert.Len(t, row.Latency, 3, row.Label)
		assert.Equal(t, int64(want), row.Sessions, "%s: SMTP sessions", row.Label)
		assert.Equal(t, want, row.Channels, "%s: channels", row.Label)
		assert.Positive(t, row.P50, row.Label)
		assert.GreaterOrEqual(t, row.P99, row.P50, row.Label)
		assert.Positive(t, row.InRTT(row.P50), row.Label)
		assert.Contains(t, row.summary(), "sessions for 4 Sends")
	}
	assert.Equal(t, time.Duration(-1), vs[2].linger, "the last row lingers not at all")
}

// TestWarmFailsOnARefusedEmail: a Send that is not delivered fails the
// row, which then gives no figure.
func TestWarmFailsOnARefusedEmail(t *testing.T) {
	ctx := testCtx(t)
	cfg := Config{WarmSends: 2, WarmGap: time.Millisecond, Timeout: 20 * time.Second}
	e := newEnv(t, 0, Chunking)
	m := testMail(t)
	e.Relay.Inject(relaytest.Fault{Kind: relaytest.ReplaceReply, Command: "RCPT", Recipient: m.To[0], Reply: "550 5.1.1 no such user", Times: -1})
	row := warmRow(ctx, cfg, e, warmVariants(cfg)[0], m)
	require.ErrorContains(t, row.Err, "Send 1")
	assert.ErrorContains(t, row.Err, "warm Sends")
	assert.Zero(t, row.P50)
	assert.Contains(t, row.summary(), "FAILED")
}
