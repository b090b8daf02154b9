package mxrelay

import (
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/time/rate"
)

func TestSlowDownReplies(t *testing.T) {
	se := func(code int, enh [3]int, msg string) error {
		return fmt.Errorf("wrapped: %w", &SMTPError{Code: code, EnhancedCode: enh, Message: msg})
	}
	for _, tc := range []struct {
		err  error
		want bool
	}{
		{se(451, [3]int{4, 7, 0}, "Try later"), true},
		{se(421, [3]int{4, 7, 28}, "Our system has detected an unusual rate"), true},
		{se(454, [3]int{}, "Throttling failure: Maximum sending rate exceeded."), true},
		{se(450, [3]int{4, 2, 1}, "receiving mail at a rate that prevents additional messages; slow down"), true},
		{se(452, [3]int{4, 5, 3}, "Too many recipients"), true},
		{se(451, [3]int{4, 3, 0}, "Local error in processing"), false},
		{se(450, [3]int{4, 1, 1}, "Mailbox unavailable"), false},
		{se(554, [3]int{5, 7, 1}, "Too many emails per second, slow down"), true},
		{se(550, [3]int{5, 7, 1}, "Relaying denied"), false},
		{se(550, [3]int{5, 1, 1}, "No such user"), false},
		{se(471, [3]int{4, 7, 0}, "odd code"), false},
		{fmt.Errorf("connection reset"), false},
	} {
		assert.Equal(t, tc.want, slowDown(tc.err, DefaultThrottleTexts), "%v", tc.err)
	}
	assert.False(t, slowDown(se(554, [3]int{5, 7, 1}, "too many emails per second"), []string{}), "no texts: no 5xx slows down")
	assert.True(t, slowDown(se(550, [3]int{}, "Quota EXCEEDED"), []string{"quota exceeded"}))
}

// The AIMD loop with a clock of its own: a cut halves the measured rate
// and the sessions allowed, once per round; clean seconds climb back a
// twentieth at a time, and at the old rate the client is unthrottled.
func TestFeedbackCutsOncePerRoundAndRecovers(t *testing.T) {
	var rates []rate.Limit
	f := newFeedback(RateLimit{}, Throttle{}, 4, func(r rate.Limit) { rates = append(rates, r) })
	t0 := time.Unix(1000, 0)
	for i := range 200 { // 100 emails a second for two seconds
		f.sent(t0.Add(time.Duration(i) * 10 * time.Millisecond))
	}
	now := t0.Add(2 * time.Second)
	require.False(t, f.limited())
	assert.True(t, f.cut(now, now.Add(-time.Millisecond)))
	r, cuts := f.state()
	assert.InDelta(t, 50, r, 1, "half the measured 100/s")
	assert.EqualValues(t, 1, cuts)
	assert.Equal(t, 2, f.sessions())
	assert.True(t, f.limited())
	assert.False(t, f.cut(now.Add(time.Millisecond), now.Add(-time.Millisecond)), "sent before the cut: the same round")
	r2, _ := f.state()
	assert.Equal(t, r, r2)

	// A second within the second after a cut changes nothing; then each
	// clean second adds 5/s (a twentieth of 100) and a session.
	f.clean(now.Add(500 * time.Millisecond))
	r3, _ := f.state()
	assert.Equal(t, r, r3)
	at := now
	for i := 1; i <= 9; i++ {
		at = at.Add(time.Second)
		f.clean(at)
		got, _ := f.state()
		assert.InDelta(t, float64(r)+5*float64(i), got, 1, "step %d", i)
	}
	assert.Equal(t, 4, f.sessions(), "sessions climb back to the maximum, one a step")
	at = at.Add(time.Second)
	f.clean(at)
	got, _ := f.state()
	assert.Zero(t, got, "back at the rate it was cut from: unthrottled")
	assert.False(t, f.limited())
	assert.Equal(t, rate.Inf, f.lim.Limit())

	// A reply sent after a cut, at the lower rate, cuts again.
	f.cut(at.Add(time.Second), at.Add(time.Second))
	f.cut(at.Add(3*time.Second), at.Add(2*time.Second))
	got, cuts = f.state()
	assert.EqualValues(t, 3, cuts)
	assert.GreaterOrEqual(t, got, 1.0, "never under MinRate")
	assert.Len(t, rates, 13, "every change of the rate announced")
}

// With Options.RateLimit the cut starts from it and recovery stops at it;
// the burst comes back with it.
func TestFeedbackUnderARateLimit(t *testing.T) {
	f := newFeedback(RateLimit{Emails: 40, Per: time.Second, Burst: 8}, Throttle{MinRate: 15}, 1, func(rate.Limit) {})
	now := time.Unix(2000, 0)
	require.True(t, f.cut(now, now))
	r, _ := f.state()
	assert.EqualValues(t, 20, r)
	assert.Equal(t, 1, f.lim.Burst(), "no bursts while throttled")
	assert.Equal(t, 1, f.sessions(), "never fewer than one session")
	f.cut(now.Add(time.Second), now.Add(time.Second))
	r, _ = f.state()
	assert.EqualValues(t, 15, r, "MinRate is the floor")
	for i := 1; i <= 20; i++ {
		f.clean(now.Add(time.Duration(1+i) * time.Second))
	}
	assert.Equal(t, rate.Limit(40), f.lim.Limit())
	assert.Equal(t, 8, f.lim.Burst())
}
