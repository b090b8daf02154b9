package backoff

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
)

func TestDelayGrowsAndCaps(t *testing.T) {
	p := Policy{Initial: 100 * time.Millisecond, Max: time.Second}
	want := []time.Duration{100, 200, 400, 800, 1000, 1000}
	for i, w := range want {
		assert.Equal(t, w*time.Millisecond, p.Delay(i+1), "attempt %d", i+1)
	}
	assert.Equal(t, 100*time.Millisecond, p.Delay(0), "attempt below 1 counts as the first")
	assert.Equal(t, time.Second, p.Delay(1000), "large attempts do not overflow")
}

func TestJitterStaysInBand(t *testing.T) {
	for _, r := range []float64{0, 0.25, 0.5, 0.999} {
		p := Policy{Initial: time.Second, Max: time.Minute, Jitter: 0.5, Rand: func() float64 { return r }}
		d := p.Delay(1)
		assert.GreaterOrEqual(t, d, 500*time.Millisecond)
		assert.Less(t, d, 1500*time.Millisecond)
	}
	lo := Policy{Initial: time.Second, Jitter: 0.5, Rand: func() float64 { return 0 }}.Delay(1)
	hi := Policy{Initial: time.Second, Jitter: 0.5, Rand: func() float64 { return 0.99 }}.Delay(1)
	assert.Less(t, lo, hi, "jitter spreads the delay")
}
