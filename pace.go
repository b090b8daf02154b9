package mxrelay

import (
	"errors"
	"math"
	"strings"
	"sync"
	"time"

	"golang.org/x/time/rate"

	"github.com/mxrelay/mxrelay/internal/smtpc"
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
	// the client to; feedback never raises a RateLimit that is lower.
	// Zero: one email a second.
	MinRate float64
}

// DefaultThrottleTexts are the texts that mark a 5xx reply as a request to
// slow down when Throttle.Texts is nil: what Amazon SES, Microsoft 365 and
// providers' own MTAs are seen to send.
var DefaultThrottleTexts = []string{
	"too many emails per second", "rate limit", "throttl", "sending rate",
	"slow down",
}

// throttleWords mark a 4xx as a request to slow down when its enhanced
// code does not (4.7.x does).
var throttleWords = []string{"throttl", "rate limit", "too many", "too fast", "slow down", "sending rate"}

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
		if mentions(se.Message, notThrottle) {
			return false
		}
		return se.EnhancedCode[0] == 4 && se.EnhancedCode[1] == 7 || mentions(se.Message, throttleWords)
	}
	return se.Code/100 == 5 && mentions(se.Message, texts)
}

// notThrottle are texts of replies that say "later" for another reason
// than the rate: greylisting is per sender and recipient.
var notThrottle = []string{"greylist", "graylist"}

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
// clean, as TCP's congestion control does (a multiplicative decrease, and
// CUBIC's way back: fast towards the rate that was refused, slow past it).
//
// A cut takes the rate to 70% of the lower of the rate in effect (the
// rate measured over the last seconds, when none was set) and what the
// upstream accepted over the last second (85% when it comes while the
// rate steps back up after a cut: near the limit that cut found), and
// halves the sessions allowed, once per round:
// replies to emails sent before the last cut were asked at the old rate
// and do not cut again. A cut after less than a second of sending (the
// blast at the start) also holds sending back until that second is over
// (see cut). Each clean second after a cut the rate climbs
// three quarters of the way back to the rate that was refused; within 5%
// of it, it probes past it by 2%, 4%, 8%... a second, and a session comes
// back each step. Back at the rate it had before the first cut (or at
// Options.RateLimit), the client is unthrottled. A cut never raises the
// rate: a RateLimit under MinRate stays as it is, and the sessions the
// cut took come back at the next clean step.
//
// While throttled the limiter keeps the tokens of the time a session
// spends setting up and ending (heldBurst), so that the rate it holds is
// the rate sent, session after session, not what the gaps between
// sessions leave of it.
type feedback struct {
	min      rate.Limit
	base     rate.Limit // Options.RateLimit, or rate.Inf
	burst    int        // Options.RateLimit's burst
	maxBurst int        // the most a throttled limiter keeps (see setup)
	maxConc  int
	lim      *rate.Limiter // shared by every session; rate.Inf when unthrottled
	onRate   func(rate.Limit)

	mu       sync.Mutex
	held     bool       // a cut holds the client back: clean replies step it up
	cur      rate.Limit // the limiter's rate; base when not throttled
	target   rate.Limit // the rate before the first cut: unthrottled again there
	refused  rate.Limit // the rate of the last cut
	probe    float64    // past refused: the next step's growth
	conc     int        // sessions allowed
	lastCut  time.Time
	lastStep time.Time
	holdEnd  time.Time // the last cut's hold (see cut); zero: none
	freed    time.Time // unthrottled again (zero: never held)
	cuts     int64
	sends    meter     // emails taken by sessions
	run      time.Time // the client started sending (after a second without)
	lastSend time.Time
	accepts  meter         // clean replies
	gap      time.Duration // a session's set-up and end, as measured
}

func newFeedback(r RateLimit, t Throttle, maxConc, perSession int, onRate func(rate.Limit)) *feedback {
	f := &feedback{min: rate.Limit(t.MinRate), base: rate.Inf, burst: 1, maxBurst: max(perSession, 1), maxConc: maxConc, onRate: onRate, conc: maxConc}
	if f.min <= 0 {
		f.min = 1
	}
	if l := r.limiter(); l != nil {
		f.base, f.burst = l.Limit(), l.Burst()
		// A burst the caller did not allow is a rate they did not.
		f.maxBurst = min(f.maxBurst, f.burst)
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
	if f.lastSend.IsZero() || now.Sub(f.lastSend) >= time.Second {
		f.run = now
	}
	f.lastSend = now
	f.sends.add(now)
	f.mu.Unlock()
}

// cut is a "slow down" reply at now to an email sent at sentAt. It
// reports whether it lowered the rate: not for an email sent before the
// last cut (that cut answered its round), nor within a second of it
// (upstreams count their limits per second or longer: until the interval
// is over, a refusal says nothing about the lower rate) unless it was
// sent after the cut's hold.
func (f *feedback) cut(now, sentAt time.Time) bool {
	f.mu.Lock()
	if !f.lastCut.IsZero() && (sentAt.Before(f.lastCut) ||
		now.Sub(f.lastCut) < time.Second && (f.holdEnd.IsZero() || sentAt.Before(f.holdEnd))) {
		f.mu.Unlock()
		return false
	}
	r := f.cur
	if r == rate.Inf {
		// The rate sent at unthrottled: over the last 3 s, or since the
		// client started sending or was last unthrottled when that is less.
		span := min(3*time.Second, now.Sub(f.run), now.Sub(f.freed))
		r = rate.Limit(float64(f.sends.count(now, span)) / max(span.Seconds(), 0.01))
	}
	if !f.held {
		f.target = max(r, f.min)
	}
	r = max(min(r, rate.Limit(f.accepts.count(now, time.Second))), f.min)
	b := rate.Limit(betaAgain)
	if f.held && f.lastStep.After(f.lastCut) {
		// Refused while stepping back up after a cut: near the limit the
		// last cut found, not far above it.
		b = beta
	}
	f.refused, f.probe = r, 0.02
	// Never up: a rate already under MinRate (Options.RateLimit can be)
	// stays where it is.
	f.cur = min(max(r*b, f.min), f.cur)
	f.conc = max(f.conc/2, 1)
	f.lastCut, f.lastStep = now, now
	f.held = true
	f.cuts++
	cur := f.cur
	f.lim.SetLimitAt(now, cur)
	// What the bucket held was for the rate before: it keeps one token.
	f.lim.SetBurstAt(now, 1)
	// The client started sending less than a second ago (the blast at the
	// start, or after a pause), faster than the new rate: the upstream,
	// counting per second (a window fixed or sliding), is full until a
	// second after the first of those emails reached it (now-sentAt, a
	// round trip, bounds the way there). Nothing goes until then: the
	// bucket owes the tokens of that time. A refusal of an email sent
	// after it says the limit is not per second: it cuts again at once.
	f.holdEnd = time.Time{}
	end := f.run.Add(time.Second + min(now.Sub(sentAt), 100*time.Millisecond))
	if since := now.Sub(f.run); end.After(now) && float64(f.sends.count(now, since)) > float64(cur)*since.Seconds()+1 {
		f.holdEnd = end
		// The next token at end: the bucket then holds 1 - cur × hold.
		if d := int(math.Ceil(f.lim.TokensAt(now) - 1 + float64(cur)*end.Sub(now).Seconds())); d > 0 {
			f.lim.SetBurstAt(now, d)
			f.lim.ReserveN(now, d)
		}
	}
	f.lim.SetBurstAt(now, f.heldBurst())
	f.mu.Unlock()
	f.onRate(cur)
	return true
}

// clean is a reply at now that did not ask to slow down: a second after
// the last step, the rate and the sessions allowed go up one step.
func (f *feedback) clean(now time.Time) {
	f.mu.Lock()
	f.accepts.add(now)
	if !f.held || now.Sub(f.lastStep) < time.Second {
		f.mu.Unlock()
		return
	}
	f.lastStep = now
	if f.cur < f.refused*0.95 {
		f.cur += (f.refused - f.cur) * 3 / 4
	} else {
		f.cur += max(f.cur*rate.Limit(f.probe), f.min)
		f.probe *= 2
	}
	f.conc = min(f.conc+1, f.maxConc)
	burst := f.heldBurst()
	if f.cur >= min(f.target, f.base) {
		f.cur, f.conc, burst = f.base, f.maxConc, f.burst
		f.held = false
		f.freed = now
	}
	cur := f.cur
	f.lim.SetLimitAt(now, cur)
	f.lim.SetBurstAt(now, burst)
	f.mu.Unlock()
	f.onRate(cur)
}

// setup is a session that spent d setting up and ending (its channel,
// greeting, EHLO; its last replies, QUIT) with no email to send: the
// tokens of that time are kept while throttled (heldBurst).
func (f *feedback) setup(d time.Duration) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.gap == 0 {
		f.gap = d
	} else {
		f.gap += (d - f.gap) / 4
	}
	if f.held {
		f.lim.SetBurst(f.heldBurst())
	}
}

// heldBurst is the throttled limiter's burst: the tokens of a session's
// set-up and end at the rate in effect, so that a session after another
// sends at that rate, not at what the gap between them leaves of it;
// between 1 and a session's emails (or Options.RateLimit's burst).
func (f *feedback) heldBurst() int {
	b := int(math.Ceil(float64(f.cur) * f.gap.Seconds()))
	return min(max(b, 1), f.maxBurst)
}

// sessions is how many sessions may run now.
func (f *feedback) sessions() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.conc
}

// throttled is the rate feedback holds the client to (0: none, the
// client sends at Options.RateLimit or unlimited) and the cuts so far.
func (f *feedback) throttled() (float64, int64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.held {
		return 0, f.cuts
	}
	return float64(f.cur), f.cuts
}

// beta and betaAgain are the multiplicative decrease. A cut after clean
// steps keeps 85% of the rate: an upstream that limits a rate has no
// queue to drain (TCP's reason for cutting deeper), and the saw-tooth
// around its limit then averages over 90% of it. A cut right after
// another keeps 70%, CUBIC's, so that a limit far below (a quota per
// minute or per hour) is reached in a few seconds.
const (
	beta      = 0.85
	betaAgain = 0.7
)

// meter counts events in buckets of a tenth of a second, over the last
// 3.2 seconds.
type meter struct {
	at [32]int64 // the tenth of a second each bucket counts
	n  [32]int
}

const meterTick = 100 * time.Millisecond

func (m *meter) add(now time.Time) {
	t := now.UnixNano() / int64(meterTick)
	i := t % int64(len(m.at))
	if m.at[i] != t {
		m.at[i], m.n[i] = t, 0
	}
	m.n[i]++
}

// count is the events in the span (at most 3.1 s) before now, to a tenth
// of a second: the bucket the span starts in counts whole.
func (m *meter) count(now time.Time, span time.Duration) int {
	t := now.UnixNano() / int64(meterTick)
	n := 0
	for k := int64(0); k <= m.ticks(now, span); k++ {
		if i := (t - k) % int64(len(m.at)); m.at[i] == t-k {
			n += m.n[i]
		}
	}
	return n
}

// ticks is how many buckets before now's the span before now reaches
// into: the one it starts in counts.
func (m *meter) ticks(now time.Time, span time.Duration) int64 {
	k := now.UnixNano()/int64(meterTick) - now.Add(-span).UnixNano()/int64(meterTick)
	return min(k, int64(len(m.at))-1)
}

// statusPolicy is the WebSocket close code 1008, policy violation: what a
// relay closes with when the client goes over its rate limit (the
// protocol's section 5).
const statusPolicy = 1008

// maxFreeTries bounds the attempts of one email that a "slow down" refusal
// may take without spending a retry: against an upstream that never lets
// anything through, an email still ends.
const maxFreeTries = 8

// slowed reports whether any reply of an attempt asked the client to slow
// down: to MAIL, a RCPT, DATA or a chunk, the end of data, or a 421 that
// ended the session.
func slowed(res *smtpc.Result, texts []string) bool {
	for _, e := range []*SMTPError{res.Mail, res.DataCmd} {
		if e != nil && slowDown(e, texts) {
			return true
		}
	}
	for _, e := range res.Rcpt[:res.RcptAnswered] {
		if e != nil && slowDown(e, texts) {
			return true
		}
	}
	if end := res.End; end != nil && end.Code/100 != 2 && slowDown(end.Err(), texts) {
		return true
	}
	return res.Err != nil && slowDown(res.Err, texts)
}

// rateChanged tells the logs and OnEvent that throttle feedback changed
// the sending rate (rate.Inf: unthrottled).
func (c *Client) rateChanged(r rate.Limit) {
	v := float64(r)
	if r == rate.Inf {
		v = 0
	}
	c.log.Info("mxrelay: sending rate changed by the upstream's replies", "emailsPerSecond", v)
	c.events.emit(Event{Type: EventRateChanged, Rate: v})
	c.kick() // a worker held back by the sessions allowed may start now
}
