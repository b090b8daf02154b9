package mxrelay

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"golang.org/x/time/rate"
)

// A cut slows the client down, never up: with Options.RateLimit under
// Throttle.MinRate (100 emails an hour, MinRate's default of one a
// second), a "slow down" reply must leave the limiter at or under the
// configured rate, and so must the clean replies after it, which give
// back the sessions and the burst the cut took.
func TestRedteam8CutNeverRaisesTheRate(t *testing.T) {
	for _, tc := range []struct {
		name string
		r    RateLimit
		th   Throttle
	}{
		{"RateLimit under the default MinRate", RateLimit{Emails: 100, Per: time.Hour}, Throttle{}},
		{"RateLimit under MinRate", RateLimit{Emails: 5, Per: time.Second, Burst: 5}, Throttle{MinRate: 10}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFeedback(tc.r, tc.th, 4, 10, func(rate.Limit) {})
			base := f.lim.Limit()
			now := time.Unix(1000, 0)
			accept(f, now, 3, 3*time.Second)
			f.cut(now, now.Add(-time.Millisecond))
			assert.LessOrEqual(t, f.lim.Limit(), base, "the cut raised the rate")
			for i := range 10 {
				at := now.Add(time.Duration(i+1) * time.Second)
				f.sent(at)
				f.clean(at)
				assert.LessOrEqual(t, f.lim.Limit(), base, "clean second %d raised the rate past RateLimit", i+1)
			}
			// And clean seconds give back what the cut took.
			r, _ := f.throttled()
			assert.Zero(t, r, "unthrottled again")
			assert.Equal(t, 4, f.sessions(), "the sessions are back")
			assert.Equal(t, max(tc.r.Burst, 1), f.lim.Burst(), "the burst is back")
		})
	}
}
