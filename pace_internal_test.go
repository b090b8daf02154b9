package mxrelay

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mxrelay/mxrelay/relaytest"
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
		{se(451, [3]int{4, 7, 1}, "Greylisted, try again later"), false},
		{se(451, [3]int{4, 3, 0}, "Temporary failure, try again later"), false},
		{se(552, [3]int{5, 2, 2}, "Mailbox full: too many messages"), false},
		{fmt.Errorf("connection reset"), false},
	} {
		assert.Equal(t, tc.want, slowDown(tc.err, DefaultThrottleTexts), "%v", tc.err)
	}
	assert.False(t, slowDown(se(554, [3]int{5, 7, 1}, "too many emails per second"), []string{}), "no texts: no 5xx slows down")
	assert.True(t, slowDown(se(550, [3]int{}, "Quota EXCEEDED"), []string{"quota exceeded"}))
}

// accept feeds f n emails sent and accepted over d, ending at end.
func accept(f *feedback, end time.Time, n int, d time.Duration) {
	for i := range n {
		at := end.Add(-d + time.Duration(i)*d/time.Duration(n))
		f.sent(at)
		f.clean(at)
	}
}

// The loop with a clock of its own: a cut takes the rate to 70% of what
// the upstream accepted over the last second and halves the sessions,
// once per round and not within a second; clean seconds climb back three
// quarters of the way to the refused rate, then probe past it, and past
// the rate before the first cut the client is unthrottled.
func TestFeedbackCutsOncePerRoundAndRecovers(t *testing.T) {
	var rates []rate.Limit
	f := newFeedback(RateLimit{}, Throttle{}, 4, 10, func(r rate.Limit) { rates = append(rates, r) })
	now := time.Unix(1000, 0)
	accept(f, now, 200, 2*time.Second) // 100 a second
	require.False(t, f.limited())
	assert.True(t, f.cut(now, now.Add(-time.Millisecond)))
	r, cuts := f.throttled()
	assert.InDelta(t, 70, r, 1, "70% of the 100/s accepted")
	assert.EqualValues(t, 1, cuts)
	assert.Equal(t, 2, f.sessions())
	assert.True(t, f.limited())
	assert.Equal(t, rate.Limit(r), f.lim.Limit())
	assert.Equal(t, 1, f.lim.Burst(), "no bursts while throttled")
	assert.False(t, f.cut(now.Add(2*time.Second), now.Add(-time.Millisecond)), "sent before the cut: the same round")
	assert.False(t, f.cut(now.Add(500*time.Millisecond), now.Add(100*time.Millisecond)), "within a second of the cut")

	f.clean(now.Add(500 * time.Millisecond))
	r2, _ := f.throttled()
	assert.Equal(t, r, r2, "no step within a second of the last")
	steps := []float64{92.5, 98.1}
	at := now
	for _, want := range steps {
		at = at.Add(time.Second)
		f.clean(at)
		got, _ := f.throttled()
		assert.InDelta(t, want, got, 0.5)
	}
	assert.Equal(t, 4, f.sessions(), "a session back each step")
	at = at.Add(time.Second)
	f.clean(at)
	got, _ := f.throttled()
	assert.Zero(t, got, "past the 100/s sent before the cut: unthrottled")
	assert.False(t, f.limited())
	assert.Equal(t, rate.Inf, f.lim.Limit())
	assert.Len(t, rates, 4, "each change announced")

	// Throttled again: a reply to an email sent after the cut, a second
	// later, cuts again, never under MinRate.
	at = at.Add(time.Second)
	require.True(t, f.cut(at, at))
	for range 10 {
		at = at.Add(time.Second)
		require.True(t, f.cut(at, at))
	}
	got, cuts = f.throttled()
	assert.EqualValues(t, 12, cuts)
	assert.EqualValues(t, 1, got, "MinRate: one a second")
}

// With Options.RateLimit the cut starts from it and recovery stops at it,
// with its burst.
func TestFeedbackUnderARateLimit(t *testing.T) {
	f := newFeedback(RateLimit{Emails: 40, Per: time.Second, Burst: 8}, Throttle{MinRate: 15}, 1, 10, func(rate.Limit) {})
	now := time.Unix(2000, 0)
	require.True(t, f.limited(), "a RateLimit always paces")
	accept(f, now, 40, time.Second)
	require.True(t, f.cut(now, now))
	r, _ := f.throttled()
	assert.EqualValues(t, 28, r)
	assert.Equal(t, 1, f.sessions(), "never fewer than one session")
	now = now.Add(time.Second)
	require.True(t, f.cut(now, now))
	r, _ = f.throttled()
	assert.EqualValues(t, 15, r, "MinRate is the floor")
	for i := 1; i <= 20; i++ {
		f.clean(now.Add(time.Duration(i) * time.Second))
	}
	r, _ = f.throttled()
	assert.Zero(t, r)
	assert.Equal(t, rate.Limit(40), f.lim.Limit())
	assert.Equal(t, 8, f.lim.Burst())
}

// A cut slows the client down, never up: with Options.RateLimit under
// Throttle.MinRate (100 emails an hour, MinRate's default of one a
// second), a "slow down" reply must leave the limiter at or under the
// configured rate, and so must the clean replies after it, which give
// back the sessions and the burst the cut took. (Red team 8 found a cut
// that raised it.)
func TestFeedbackCutNeverRaisesTheRate(t *testing.T) {
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

// The meter counts the whole bucket a span starts in, whatever the
// span's length: a span shorter than a tick reaches into the bucket
// before now's when it starts there.
func TestMeterCountsTheBucketTheSpanStartsIn(t *testing.T) {
	var m meter
	t0 := time.Unix(1000, 0)
	m.add(t0.Add(50 * time.Millisecond))
	now := t0.Add(130 * time.Millisecond)
	assert.Equal(t, 1, m.count(now, 50*time.Millisecond), "the span starts in the event's bucket")
	assert.Zero(t, m.count(now, 20*time.Millisecond), "the span starts in now's bucket")
	assert.Equal(t, 1, m.count(now, time.Second))
	assert.Zero(t, m.count(t0.Add(5*time.Second), 3*time.Second), "past the meter's reach")
}

// While throttled the limiter keeps the tokens of a session's set-up and
// end at the rate in effect (the gap between two sessions, where nothing
// is sent), between 1 and a session's emails; unthrottled, the burst is
// RateLimit's again, and RateLimit's burst bounds it.
func TestFeedbackBurstCoversSessionSetUp(t *testing.T) {
	f := newFeedback(RateLimit{}, Throttle{}, 1, 10, func(rate.Limit) {})
	now := time.Unix(1000, 0)
	accept(f, now, 200, 2*time.Second)
	f.setup(40 * time.Millisecond)
	require.True(t, f.cut(now, now))
	assert.EqualValues(t, 70, f.lim.Limit())
	assert.Equal(t, 3, f.lim.Burst(), "70/s over 40 ms")
	at := now.Add(time.Second)
	f.clean(at)
	assert.InDelta(t, 92.5, float64(f.lim.Limit()), 0.1)
	assert.Equal(t, 4, f.lim.Burst(), "92.5/s over 40 ms")
	for range 20 {
		f.setup(time.Second) // a slow relay: a second to set up
	}
	assert.Equal(t, 10, f.lim.Burst(), "never more than a session's emails")
	for f.held {
		at = at.Add(time.Second)
		f.clean(at)
	}
	assert.Equal(t, rate.Inf, f.lim.Limit())
	assert.Equal(t, 1, f.lim.Burst())

	g := newFeedback(RateLimit{Emails: 200, Per: time.Second, Burst: 2}, Throttle{}, 1, 10, func(rate.Limit) {})
	accept(g, now, 200, 2*time.Second)
	g.setup(time.Second)
	require.True(t, g.cut(now, now))
	assert.Equal(t, 2, g.lim.Burst(), "RateLimit's burst bounds it")
}

// The blast at the start: 120 emails in 0.4 s, 100 accepted, then a
// refusal. The upstream's second is full until a second after the first
// of them: the limiter lets nothing go until then, and a refusal of an
// email sent after that cuts again at once, within the second; one of an
// email sent before it does not. After more than a second of sending a
// cut holds nothing back.
func TestFeedbackHoldsTheRestOfTheSecondAfterABlast(t *testing.T) {
	f := newFeedback(RateLimit{}, Throttle{}, 1, 10, func(rate.Limit) {})
	t0 := time.Unix(1000, 0)
	for i := range 120 {
		at := t0.Add(time.Duration(i) * 400 * time.Millisecond / 120)
		f.sent(at)
		if i < 100 {
			f.clean(at.Add(10 * time.Millisecond))
		}
	}
	now := t0.Add(410 * time.Millisecond)
	require.True(t, f.cut(now, now.Add(-10*time.Millisecond)))
	assert.EqualValues(t, 70, f.lim.Limit(), "70% of the 100 accepted")
	assert.Less(t, f.lim.TokensAt(t0.Add(time.Second)), 1.0, "a token within the second")
	assert.InDelta(t, 1, f.lim.TokensAt(t0.Add(time.Second+10*time.Millisecond)), 0.01, "a token a second and a round trip after the first")
	assert.False(t, f.cut(t0.Add(900*time.Millisecond), now.Add(time.Millisecond)), "sent before the hold's end: the same second")
	assert.True(t, f.cut(t0.Add(1030*time.Millisecond), t0.Add(1020*time.Millisecond)), "sent after it: the limit is not per second")
	assert.EqualValues(t, 49, f.lim.Limit())

	g := newFeedback(RateLimit{}, Throttle{}, 1, 10, func(rate.Limit) {})
	accept(g, t0, 300, 3*time.Second)
	require.True(t, g.cut(t0, t0))
	assert.InDelta(t, 1, g.lim.TokensAt(t0), 0.01, "sending for 3 s: no hold")
}

// A cut while the rate steps back up after a cut keeps 85% of the rate:
// near the limit the last one found. The first cut, and one with no step
// since the last, keep 70%.
func TestFeedbackCutDepth(t *testing.T) {
	f := newFeedback(RateLimit{}, Throttle{}, 1, 10, func(rate.Limit) {})
	now := time.Unix(1000, 0)
	accept(f, now, 200, 2*time.Second)
	require.True(t, f.cut(now, now))
	assert.EqualValues(t, 70, f.lim.Limit(), "the first cut: 70%")
	f.clean(now.Add(time.Second))
	require.InDelta(t, 92.5, float64(f.lim.Limit()), 0.1, "a step")
	at := now.Add(1500 * time.Millisecond)
	accept(f, at, 100, time.Second)
	require.True(t, f.cut(at, at))
	assert.InDelta(t, 0.85*92.5, float64(f.lim.Limit()), 0.1, "after a step: 85%")
	at = at.Add(time.Second)
	accept(f, at, 100, time.Second)
	require.True(t, f.cut(at, at))
	assert.InDelta(t, 0.7*0.85*92.5, float64(f.lim.Limit()), 0.1, "no step since: 70%")
}

// The rate before a first cut is what the client sent unthrottled: a
// blast at 250 a second right after it was unthrottled sets it, not an
// average with the throttled seconds before.
func TestFeedbackTargetIsTheRateSentUnthrottled(t *testing.T) {
	f := newFeedback(RateLimit{}, Throttle{}, 1, 10, func(rate.Limit) {})
	now := time.Unix(1000, 0)
	accept(f, now, 200, 2*time.Second)
	require.True(t, f.cut(now, now))
	at := now
	for f.held { // 70 a second, sent and accepted, until unthrottled
		at = at.Add(time.Second / 70)
		f.sent(at)
		f.clean(at)
	}
	require.Equal(t, rate.Inf, f.lim.Limit())
	for range 100 {
		at = at.Add(4 * time.Millisecond)
		f.sent(at)
	}
	require.True(t, f.cut(at, at))
	assert.InDelta(t, 250, float64(f.target), 30)
}

// While throttle feedback allows one session, only the first worker of
// four starts sessions, and a running session of another ends.
func TestThrottledSessionsCap(t *testing.T) {
	s := relaytest.NewServer(nil)
	defer s.Close()
	var mu sync.Mutex
	workers := map[int]bool{}
	c, err := New(s.URL, s.APIKey, &Options{MaxConcurrentSessions: 4, MaxEmailsPerSession: 2, OnEvent: func(e Event) {
		if e.Type == EventSessionStarted {
			mu.Lock()
			workers[e.Worker] = true
			mu.Unlock()
		}
	}})
	require.NoError(t, err)
	c.fb.mu.Lock()
	c.fb.conc = 1
	c.fb.mu.Unlock()
	var hs []*Handle
	for i := range 20 {
		h, err := c.Enqueue(Email{From: "a@example.com", To: []string{"b@example.com"}, Body: strings.NewReader(fmt.Sprintf("Subject: %d\r\n\r\nx\r\n", i))})
		require.NoError(t, err)
		hs = append(hs, h)
	}
	for _, h := range hs {
		_, err := h.Wait(context.Background())
		require.NoError(t, err)
	}
	require.NoError(t, c.Close(context.Background()))
	mu.Lock()
	defer mu.Unlock()
	assert.Equal(t, map[int]bool{1: true}, workers)
}
