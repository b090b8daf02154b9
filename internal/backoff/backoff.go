// Package backoff computes exponential delays with jitter for retry loops.
package backoff

import (
	"math/rand/v2"
	"time"
)

// Policy is an exponential backoff: the first delay is Initial, each next
// one is Multiplier times the last, never above Max, and each is spread by
// ±Jitter of itself so that many clients do not retry in step.
type Policy struct {
	Initial    time.Duration
	Max        time.Duration
	Multiplier float64 // zero → 2
	Jitter     float64 // fraction in [0, 1]; zero → no jitter
	// Rand returns a number in [0, 1); nil → math/rand/v2.
	Rand func() float64
}

// Delay returns the wait before retry number attempt (1 for the first
// retry). It is safe for concurrent use if Rand is.
func (p Policy) Delay(attempt int) time.Duration {
	if attempt < 1 {
		attempt = 1
	}
	m := p.Multiplier
	if m <= 0 {
		m = 2
	}
	d := float64(p.Initial)
	for i := 1; i < attempt && (p.Max <= 0 || d < float64(p.Max)); i++ {
		d *= m
	}
	if p.Max > 0 && d > float64(p.Max) {
		d = float64(p.Max)
	}
	if p.Jitter > 0 {
		r := p.Rand
		if r == nil {
			r = rand.Float64
		}
		d += d * p.Jitter * (2*r() - 1)
	}
	if d < 0 {
		d = 0
	}
	return time.Duration(d)
}
