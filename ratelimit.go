package mxrelay

import (
	"time"

	"golang.org/x/time/rate"
)

// RateLimit is a sending rate: Emails per Per, in bursts of up to Burst
// (zero: 1). The zero RateLimit is no limit.
type RateLimit struct {
	Emails int
	Per    time.Duration
	Burst  int
}

// limiter is the token bucket for r, or nil for no limit.
func (r RateLimit) limiter() *rate.Limiter {
	if r.Emails <= 0 {
		return nil
	}
	return rate.NewLimiter(rate.Limit(float64(r.Emails)/r.Per.Seconds()), max(r.Burst, 1))
}
