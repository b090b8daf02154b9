package mxrelay

import (
	"errors"
	"strings"
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// Throttle says how the client answers an upstream that asks it to slow
// down. The zero Throttle is throttle feedback on, with the default texts.
type Throttle struct {
	// Disable turns throttle feedback off: a "slow down" reply is then a
	// temporary failure like any other.
	Disable bool
	// Texts are the reply texts, matched case-insensitively as substrings,
	// that mark a 5xx reply as a request to slow down (providers answer
	// "too many emails per second" with a 5xx): such a reply is temporary.
	// Nil: DefaultThrottleTexts. Empty, not nil: no 5xx is.
	Texts []string
	// MinRate is the lowest rate, in emails per second, that feedback lowers
	// the client to. Zero: one email a second.
	MinRate float64
}

// DefaultThrottleTexts are the texts that mark a 5xx reply as a request to
// slow down when Throttle.Texts is nil: what Amazon SES, Microsoft 365 and
// providers' own MTAs are seen to send.
var DefaultThrottleTexts = []string{
	"too many emails per second", "too many messages", "rate limit",
	"throttl", "sending rate", "slow down",
}

// throttleWords mark a 4xx as a request to slow down when its enhanced
// code does not (4.7.x does).
var throttleWords = []string{"throttl", "rate limit", "too many", "too fast", "slow down", "sending rate", "try again later"}

// slowDown reports whether err is a reply that asks the client to slow
// down: a 421, 450, 451, 452 or 454 with an enhanced code 4.7.x or a
// throttling text, or a 5xx with one of texts (see Throttle.Texts).
func slowDown(err error, texts []string) bool {
	var se *SMTPError
	if !errors.As(err, &se) {
		return false
	}
	switch se.Code {
	case 421, 450, 451, 452, 454:
		return se.EnhancedCode[0] == 4 && se.EnhancedCode[1] == 7 || mentions(se.Message, throttleWords)
	}
	return se.Code/100 == 5 && mentions(se.Message, texts)
}

func mentions(msg string, words []string) bool {
	msg = strings.ToLower(msg)
	for _, w := range words {
		if w != "" && strings.Contains(msg, strings.ToLower(w)) {
			return true
		}
	}
	return false
}

// feedback lowers the client's sending rate and its concurrency when the
// upstream asks it to slow down, and raises them again while replies are
// clean: AIMD, as TCP's congestion control. A cut halves the rate (from
// the rate measured over the last seconds when none was set) and the
// sessions allowed, once per round: replies to emails sent before the last
// cut were asked at the old rate and do not cut again. Each clean second
// after a cut adds a twentieth of the rate the client had when it was cut,
// and a session; back at that rate (or at Options.RateLimit), the
// client is unthrottled.
type feedback struct {
	min     rate.Limit
	base    rate.Limit // Options.RateLimit, or rate.Inf
	burst   int        // Options.RateLimit's burst
	maxConc int
	lim     *rate.Limiter // shared by every session; rate.Inf when unthrottled
	onRate  func(rate.Limit)

	mu       sync.Mutex
	cur      rate.Limit // rate.Inf: not throttled
	target   rate.Limit // what a raise climbs back to
	conc     int        // sessions allowed
	lastCut  time.Time
	lastStep time.Time
	cuts     int64
	meter    meter
}

func newFeedback(r RateLimit, t Throttle, maxConc int, onRate func(rate.Limit)) *feedback {
	f := &feedback{min: rate.Limit(t.MinRate), base: rate.Inf, burst: 1, maxConc: maxConc, onRate: onRate, conc: maxConc}
	if f.min <= 0 {
		f.min = 1
	}
	if l := r.limiter(); l != nil {
		f.base, f.burst = l.Limit(), l.Burst()
	}
	f.cur = f.base
	f.lim = rate.NewLimiter(f.base, f.burst)
	return f
}

// limited reports whether sessions must wait for the limiter.
func (f *feedback) limited() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.cur != rate.Inf
}

// sent counts an email taken by a session at now, for the measured rate.
func (f *feedback) sent(now time.Time) {
	f.mu.Lock()
	f.meter.add(now)
	f.mu.Unlock()
}

// cut is a "slow down" reply at now to an email sent at sentAt. It
// reports whether it lowered the rate (false: the email was sent before
// the last cut, which already answered its round).
func (f *feedback) cut(now, sentAt time.Time) bool {
	f.mu.Lock()
	if !f.lastCut.IsZero() && sentAt.Before(f.lastCut) {
		f.mu.Unlock()
		return false
	}
	r := f.cur
	if r == rate.Inf {
		r = f.meter.rate(now)
	}
	if f.target == 0 || f.cur == f.base {
		f.target = min(max(r, f.min), f.base)
	}
	f.cur = max(r/2, f.min)
	f.conc = max(f.conc/2, 1)
	f.lastCut, f.lastStep = now, now
	f.cuts++
	cur := f.cur
	f.lim.SetLimitAt(now, cur)
	f.lim.SetBurstAt(now, 1)
	f.mu.Unlock()
	f.onRate(cur)
	return true
}

// clean is a reply at now that did not ask to slow down: a second after
// the last step, the rate and the sessions allowed go up one step.
func (f *feedback) clean(now time.Time) {
	f.mu.Lock()
	if f.cur == f.base || now.Sub(f.lastStep) < time.Second {
		f.mu.Unlock()
		return
	}
	f.lastStep = now
	f.cur += max(f.target/20, f.min)
	f.conc = min(f.conc+1, f.maxConc)
	burst := 1
	if f.cur >= f.target {
		f.cur, f.conc, f.target, burst = f.base, f.maxConc, 0, f.burst
	}
	cur := f.cur
	f.lim.SetLimitAt(now, cur)
	f.lim.SetBurstAt(now, burst)
	f.mu.Unlock()
	f.onRate(cur)
}

// sessions is how many sessions may run now.
func (f *feedback) sessions() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.conc
}

// state is the current rate (0: not throttled) and the cuts so far.
func (f *feedback) state() (float64, int64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.cur == rate.Inf {
		return 0, f.cuts
	}
	return float64(f.cur), f.cuts
}

// meter measures the sending rate over the last few seconds: it keeps the
// times of the last sends in a ring.
type meter struct {
	t    [512]time.Time
	next int
}

// meterSpan is how far back the measured rate looks.
const meterSpan = 3 * time.Second

func (m *meter) add(now time.Time) {
	m.t[m.next] = now
	m.next = (m.next + 1) % len(m.t)
}

// rate is the sends per second since the oldest send kept within
// meterSpan of now; zero when there is none.
func (m *meter) rate(now time.Time) rate.Limit {
	n := 0
	var oldest time.Time
	for _, t := range m.t {
		if !t.IsZero() && now.Sub(t) < meterSpan {
			n++
			if oldest.IsZero() || t.Before(oldest) {
				oldest = t
			}
		}
	}
	if n == 0 {
		return 0
	}
	return rate.Limit(float64(n) / max(now.Sub(oldest).Seconds(), 0.01))
}
