package bench

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestDeferredRow: the good emails enqueued behind the deferred ones are
// delivered before the deferred ones have used up their retries; each
// deferred one fails with the upstream's 450 after the default attempts.
func TestDeferredRow(t *testing.T) {
	ctx := testCtx(t)
	cfg := Config{DeferredN: 3, RetryInterval: 20 * time.Millisecond, Timeout: 25 * time.Second}
	e, err := NewEnvFor(deferredSetup(cfg))
	require.NoError(t, err)
	t.Cleanup(e.Close)
	row := deferredRow(ctx, cfg, e, testMail(t))
	require.NoError(t, row.Err)
	assert.Equal(t, 3, row.Delivered)
	assert.Equal(t, 3, row.Failed)
	assert.Equal(t, 4, row.Attempts, "the first attempt and the default 3 retries")
	assert.Positive(t, row.MedianGood)
	assert.LessOrEqual(t, row.MedianGood, row.LastDelivered)
	assert.Less(t, row.LastDelivered, row.LastFailed, "the good ones did not wait for the retries")
	assert.Equal(t, row.LastFailed, row.Elapsed)
}

// TestDeferredRowChecksTheDeferral: an upstream that does not defer the
// recipient fails the row: its figures would measure nothing.
func TestDeferredRowChecksTheDeferral(t *testing.T) {
	cfg := Config{DeferredN: 2, Timeout: 25 * time.Second}
	row := deferredRow(testCtx(t), cfg, newEnv(t, 0, Chunking), testMail(t))
	assert.ErrorContains(t, row.Err, "delivered to the recipient the upstream defers")
	assert.Contains(t, row.summary(), "FAILED")
}
