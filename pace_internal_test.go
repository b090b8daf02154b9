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
	f := newFeedback(RateLimit{}, Throttle{}, 4, func(r rate.Limit) { rates = append(rates, r) })
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
	f := newFeedback(RateLimit{Emails: 40, Per: time.Second, Burst: 8}, Throttle{MinRate: 15}, 1, func(rate.Limit) {})
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

// The controller against a model of the upstream: 100 emails a
// second accepted (a fixed window, as relaytest's Throttle), the rest
// answered 451 4.7.0, a 10 ms round trip, a client that would send 5,000
// a second. Over 30 s it delivers at least 90% of what the upstream
// allows and draws 451s for under 5% of what it delivered.
func TestFeedbackAgainstAThrottlingUpstream(t *testing.T) {
	f := newFeedback(RateLimit{}, Throttle{}, 1, func(rate.Limit) {})
	const rtt = 10 * time.Millisecond
	t0 := time.Unix(3000, 0)
	type inflight struct{ sent, reply time.Time }
	var pending []inflight
	accepted, refused := 0, 0
	window, inWindow := t0, 0
	next := t0
	for now := t0; now.Before(t0.Add(30 * time.Second)); now = now.Add(100 * time.Microsecond) {
		for len(pending) > 0 && !pending[0].reply.After(now) {
			p := pending[0]
			pending = pending[1:]
			if p.sent.Sub(window) >= time.Second {
				window, inWindow = window.Add(p.sent.Sub(window).Truncate(time.Second)), 0
			}
			if inWindow < 100 {
				inWindow++
				accepted++
				f.clean(now)
			} else {
				refused++
				f.cut(now, p.sent)
			}
		}
		// Send when the limiter allows, at most 5,000/s.
		if !now.Before(next) && f.lim.AllowN(now, 1) {
			f.sent(now)
			pending = append(pending, inflight{sent: now, reply: now.Add(rtt)})
			next = now.Add(200 * time.Microsecond)
		}
	}
	t.Logf("accepted %d, refused %d", accepted, refused)
	assert.GreaterOrEqual(t, accepted, 2700, "at least 90%% of 100/s over 30 s")
	assert.Less(t, refused, accepted/20)
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
