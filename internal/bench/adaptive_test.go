package bench

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestWindowRows measures both windows: each row has its runs, a rate, and
// a mean in flight that one session can hold (its window, and the email
// waiting for a place in it); the adaptive row has its ratio to the fixed
// one.
func TestWindowRows(t *testing.T) {
	cfg := Config{N: 300, Runs: 2, Timeout: 20 * time.Second}
	e := newEnv(t, 2*time.Millisecond, Chunking)
	rows := windowRows(testCtx(t), cfg, e, testMail(t))
	require.Len(t, rows, 2)
	assert.Equal(t, OursBinary, rows[0].Path)
	assert.Equal(t, OursFixedWindow, rows[1].Path)
	rep := &Report{Window: rows}
	for _, r := range rows {
		require.NoError(t, r.Err, r.Label)
		assert.Len(t, r.Samples, 2, r.Label)
		assert.Positive(t, r.Rate, r.Label)
		assert.Positive(t, r.InFlight, r.Label)
		assert.LessOrEqual(t, r.InFlight, float64(defaultWindow+1), r.Label)
		for _, s := range r.Samples {
			checkSample(t, s, 300)
		}
	}
	x, ok := rep.WindowRatio(rows[0])
	require.True(t, ok)
	assert.InDelta(t, rows[0].Rate/rows[1].Rate, x, 1e-9)
	assert.Equal(t, 0, rep.Failed())
	rows[1].Err = assert.AnError
	_, ok = rep.WindowRatio(rows[0])
	assert.False(t, ok, "no ratio to a failed row")
	assert.Equal(t, 1, rep.Failed())
}
