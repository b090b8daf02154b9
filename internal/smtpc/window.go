package smtpc

import (
	"math"
	"sync/atomic"
	"time"
)

// window sizes the transactions in flight in a pipelined BDAT session to
// what the link needs, as BBR sizes a TCP flow. Two things set it, the
// larger of them wins, within minWindow and the configured Window:
//
//   - The bandwidth-delay product with headroom: twice the highest reply
//     rate of the last bwRounds rounds (a round: a window's worth of
//     replies) times the shortest time from a flush to its reply seen in
//     the last rttLife. While the window is what holds the rate back, this
//     about doubles it each round. Over a link, in flight beyond it would
//     not go faster, and a cut would leave every one of them unknown.
//     Where the server is slower than the window, each reply waits behind
//     the window's own queue there, and a round trip taken through it
//     would make the product twice the window: when the shortest expires,
//     as BBR's ProbeRTT does, the window drops to minWindow until that
//     queue is answered, and takes the round trip measured then.
//   - A floor. Where the link is not the limit (at a low round trip the
//     CPUs of client, relay and server are), more in flight still goes
//     faster (each process does more per wake-up), which no
//     bandwidth-delay product can see. A link's first bwRounds rounds with
//     a rate (its Startup) raise the floor, where the bandwidth-delay
//     product is short of it (a round trip under startDelay/2), to hold
//     startDelay's worth of the highest reply rate (minWindow doubled
//     until it does): there, that is what the CPUs need (measured on
//     loopback, 32, 64 and 128 in flight went 0.72, 0.83 and 0.91 times as
//     fast as 256), and a cut leaves a few milliseconds of sending
//     unknown; where the rate is low it changes nothing (and a floor
//     that came to hold more than floorMost of the rate, a server that
//     got slow, goes back to that). Then, as BBR's
//     ProbeBW does, the window now and then tries a floor twice as large,
//     or half as large, in rounds taken in turns with the floor it has (so
//     that a change in load weighs on both alike), and keeps it only if
//     the cycles of turns show, beyond their own scatter, that the reply
//     rate rose by more than probeGain, or, for a smaller one, fell by no
//     more than probeLoss (tally.judge): on a busy machine a difference of
//     a few percent is lost in the scatter of the rates (at 0 ms RTT on 2
//     shared CPUs, those of 256 replies scatter by about 30%), and a floor
//     kept on a lucky draw would cost for long. It goes on at once in the
//     direction that worked and turns where one did not. A probe costs
//     (half its rounds run at the trial), so after one that moved nothing
//     the next waits four times as long as it took, quietRounds at least.
//
// Only the rounds in which the window was full, the caller never left
// the pipe empty and no ProbeRTT held the window are taken for rates and
// probes: a caller with nothing to send says nothing about the link. A
// round ends after roundTime at most, so that at a slow server rates,
// probes and the floor's return take seconds, not a round of 256 replies
// each. What the window learned of the link
// (WindowState) goes from one session to the next on the same link
// (Config.StartWindow); a session with nothing learned starts at
// minWindow.
type window struct {
	fixed       bool
	max         int
	lim         atomic.Int32 // read by the writer; written by the reader (p.mu)
	WindowState              // the reader's, under p.mu
	// ProbeRTT, under p.mu: the window is held at minWindow since it
	// expired the shortest round trip (draining), and since drained (not
	// zero) nothing more was in flight; probeMin is the shortest round
	// trip of the transactions flushed since. Not carried: a session
	// starts with nothing in flight.
	draining bool
	drained  time.Time
	probeMin time.Duration
}

// WindowState is what an adaptive window learned of a link: its shortest
// round trip, its recent reply rates, the floor it keeps and a probe
// under way, carried to the next session on the same link
// (Config.StartWindow) so that it neither ramps up again nor cuts a probe
// short. The zero value has learned nothing.
type WindowState struct {
	rttMin time.Duration
	rttAt  time.Time         // when rttMin was measured: it expires after rttLife
	last   time.Time         // the last reply
	rates  [bwRounds]float64 // the reply rates of the last rounds that had one
	rounds int               // rounds that had a rate; Startup is the first bwRounds
	bw     float64           // the highest of rates
	bdp    int               // the bandwidth-delay product with headroom, after the last round
	round  span              // the round under way
	floor  int               // the floor kept: the least the window holds outside a probe
	// A probe: trial is the floor tried (0: none); its rounds go by in
	// cycles of four turns of turnRounds, at the floor kept, the trial,
	// the trial again and the floor kept again (so that a rate that rises
	// or falls meanwhile weighs on both alike), the first round of each
	// turn not counted (the window settles); kept and tried sum the
	// counted rounds of the cycle under way at each, cycles what the
	// cycles so far measured. Between probes, calm rounds go by, wait at
	// least.
	trial       int
	turn        int
	kept, tried span
	cycles      tally
	calm, wait  int
	moved       bool // the last probe moved the floor: the next goes on at once
	down        bool // the next probe tries a smaller floor
}

// span is the replies of a round, or of a probe's counted rounds.
type span struct {
	n      int
	busy   time.Duration // the time something was in flight
	rttMin time.Duration
	full   bool // the window was full at some reply
	idle   bool // nothing was in flight for a while: the caller had nothing to send
	drain  bool // ProbeRTT held the window at minWindow in it: its rate is not the window's
}

// tally is what a probe's cycles measured: of each that had a rate at
// both floors, the log of the trial's rate over the kept floor's; and the
// replies counted at each floor.
type tally struct {
	n, all      int     // the cycles that had a rate at both floors; all that ended
	sum, sumSq  float64 // of their log ratios
	kept, tried int
}

const (
	// minWindow is the least an adaptive window holds: the batching of
	// writes (a window refills an eighth at a time) needs a few in flight.
	minWindow = 32
	// bwRounds is how many rounds the highest reply rate is taken over,
	// and how many rounds with a rate a link's Startup lasts.
	bwRounds = 8
	// startDelay is how much of the reply rate Startup's floor holds in
	// flight.
	startDelay = 5 * time.Millisecond
	// rttLife is how long the shortest round trip holds: a route or a
	// server that got slower for good is seen within it. When it expires
	// without a sample as short, ProbeRTT holds the window at minWindow
	// until what was in flight beyond it is answered, and then for
	// probeRTTHold and a round trip at least, and takes the shortest
	// round trip of the transactions flushed meanwhile.
	rttLife      = 10 * time.Second
	probeRTTHold = 50 * time.Millisecond
	// roundTime is the busy time that ends a round even if it is short
	// of a window's worth of replies (at least minRound): where the
	// server is slow (10 a second, 256 in flight are 25.6 s), rates,
	// Startup and probes would take minutes a round.
	roundTime = time.Second
	minRound  = 16
	// floorMost is the most of the reply rate a floor may hold in flight:
	// past it (a slow server), the floor goes back to what Startup would
	// give it (paced), to be earned again by probes. Startup's floor and
	// those probes find hold a few milliseconds of it.
	floorMost = 50 * time.Millisecond
	// idleGap is the least pause with nothing in flight that is taken for
	// the caller's (it had nothing to send), not counted as busy.
	idleGap = 2 * time.Millisecond
	// A probe decides after probeCycles cycles at least, each floor
	// counted over probeReplies replies at least, and gives up (the floor
	// stays) after probeMaxCycles that decided nothing.
	probeReplies   = 512
	probeCycles    = 4
	probeMaxCycles = 6
	turnRounds     = 4
	// calmRounds go by between a probe that moved the floor and the next;
	// quietRounds at least after one that did not.
	calmRounds  = 4
	quietRounds = 64
	// probeGain is the rise in reply rate a larger floor must bring to be
	// kept; probeLoss the fall a smaller one may cost and still be kept.
	probeGain = 0.05
	probeLoss = 0.03
)

func (w *window) init(most int, st WindowState, fixed bool) {
	// lim is an int32: a Window past it (math.MaxInt for no bound) would
	// wrap to 0 or below, and Send would wait for good.
	w.max, w.fixed = min(most, math.MaxInt32), fixed
	if fixed {
		w.lim.Store(int32(w.max))
		return
	}
	w.WindowState = st
	w.floor = min(max(minWindow, w.floor), most)
	w.trial = min(w.trial, most)
	w.draining, w.drained, w.probeMin = false, time.Time{}, 0
	w.resize()
}

// Window is the number of transactions that may be in flight now.
func (c *Client) Window() int { return c.p.win.get() }

// WindowState is what the adaptive window learned of the link, for the
// next session's Config.StartWindow.
func (c *Client) WindowState() WindowState {
	p := &c.p
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.win.WindowState
}

// get is the number of transactions that may be in flight now.
func (w *window) get() int { return int(w.lim.Load()) }

// resize sets the window from the bandwidth-delay product and the floor
// in force (a probe's trial in its turns), within bounds.
func (w *window) resize() {
	floor := w.floor
	if w.trial > 0 && w.trying() {
		floor = w.trial
	}
	lim := max(w.bdp, floor, minWindow)
	if w.draining {
		lim = minWindow
	}
	w.lim.Store(int32(min(lim, w.max)))
}

// sample records a transaction answered at now whose end of data was
// flushed at flushed, with inFlight transactions (itself included) in
// flight, and sizes the window again at the end of a round. p.mu is held.
func (w *window) sample(now, flushed time.Time, inFlight int) {
	if w.fixed {
		return
	}
	rtt := max(now.Sub(flushed), time.Microsecond)
	if w.rttMin == 0 || rtt <= w.rttMin {
		w.rttMin, w.rttAt = rtt, now
	}
	w.probeRTT(now, flushed, rtt, inFlight)
	// Busy since the reply before, less the time nothing was in flight if
	// it was long: replies come in order, so when this one left after the
	// reply before, every transaction before it was answered. A long pause
	// is the caller's; a short one our own writer's, and it counts.
	r := &w.round
	from := w.last
	if flushed.Sub(from) > idleGap {
		from = flushed
		r.idle = true
	}
	w.last = now
	lim := w.get()
	r.n++
	r.busy += max(now.Sub(from), 0)
	if r.rttMin == 0 || rtt < r.rttMin {
		r.rttMin = rtt
	}
	r.full = r.full || inFlight > lim-lim/4
	r.drain = r.drain || w.draining
	if r.n < minRound || r.busy < w.rttMin || r.n < max(lim, w.trial) && r.busy < roundTime {
		// A round is a window's worth of replies and at least a round
		// trip, so that replies read in bursts do not make a rate; in a
		// probe, the larger window's worth, so that the round that
		// settles after a turn lasts until what the larger window had in
		// flight is answered. Or roundTime, where replies are slow.
		return
	}
	w.endRound(now)
	w.resize()
}

// rate is the replies a second over the span's busy time; false for a
// burst read at once, which has no rate.
func (s *span) rate() (float64, bool) {
	if s.busy <= 0 {
		return 0, false
	}
	return float64(s.n) / s.busy.Seconds(), true
}

func (s *span) add(r span) {
	s.n += r.n
	s.busy += r.busy
}

// endRound ends the round under way: the shortest round trip, once
// expired, is the round's; a round the window held back and the caller
// did not gives a rate, the bandwidth-delay product, and Startup's floor
// or a probe's step.
func (w *window) endRound(now time.Time) {
	r := w.round
	w.round = span{}
	rate, ok := r.rate()
	if !ok || r.idle || r.drain || !r.full {
		if w.trial > 0 && w.turn%turnRounds == 0 {
			w.step(span{}, false) // a round to settle: one that counts nothing does
		}
		return
	}
	w.rates[w.rounds%bwRounds] = rate
	w.rounds++
	w.bw = 0
	for _, x := range w.rates[:min(w.rounds, bwRounds)] {
		w.bw = max(w.bw, x)
	}
	w.setBDP()
	if w.rounds <= bwRounds {
		// Startup: where the bandwidth-delay product falls short of
		// startDelay's worth (a round trip under half of it), the link
		// is not what sets the rate.
		if f := w.paced(); f > w.bdp {
			w.floor = max(w.floor, f)
		}
		return
	}
	if float64(w.floor) > max(minWindow, w.bw*floorMost.Seconds()) {
		// The floor holds more of the rate than a floor is for (the
		// server got slow): back to Startup's, and no probe from the old.
		w.floor = w.paced()
		w.trial, w.turn, w.kept, w.tried, w.cycles, w.calm = 0, 0, span{}, span{}, tally{}, 0
		return
	}
	w.step(r, true)
}

// setBDP sets the bandwidth-delay product, with headroom, from the
// highest reply rate and the shortest round trip.
func (w *window) setBDP() {
	w.bdp = int(math.Ceil(2 * w.bw * w.rttMin.Seconds()))
}

// probeRTT moves ProbeRTT on by a reply at now, flushed at flushed, of
// round trip rtt, with inFlight in flight: it starts once the shortest
// round trip expired (every transaction's round trip may then be the
// queue the window itself makes at a slow server, and one taken through
// it would make the bandwidth-delay product twice the window), holds the
// window at minWindow until at most that many are in flight, and ends,
// with the shortest round trip of the transactions flushed since, at the
// reply of one flushed after that and probeRTTHold at least.
func (w *window) probeRTT(now, flushed time.Time, rtt time.Duration, inFlight int) {
	switch {
	case !w.draining:
		if now.Sub(w.rttAt) <= rttLife {
			return
		}
		w.draining, w.drained, w.probeMin = true, time.Time{}, 0
		w.resize()
	case w.drained.IsZero():
		if inFlight <= minWindow {
			w.drained = now
		}
	case !flushed.Before(w.drained):
		if w.probeMin == 0 || rtt < w.probeMin {
			w.probeMin = rtt
		}
		if now.Sub(w.drained) >= probeRTTHold {
			w.draining = false
			w.rttMin, w.rttAt = w.probeMin, now
			if w.rounds > 0 {
				w.setBDP()
			}
			w.resize()
		}
	}
}

// paced is the floor that holds startDelay's worth of the highest reply
// rate: minWindow doubled until it does, at most the window's most.
func (w *window) paced() int {
	f := minWindow
	for f < w.max && float64(f) < w.bw*startDelay.Seconds() {
		f *= 2
	}
	return min(f, w.max)
}

// step moves a probe on by one round, r if counts: it starts one once
// enough calm rounds counted, takes the turns, and at the end of each
// cycle asks judge.
func (w *window) step(r span, counts bool) {
	if w.trial == 0 {
		w.calm++
		if w.calm >= max(w.wait, quietRounds) || w.moved && w.calm >= calmRounds {
			w.calm = 0
			w.start()
		}
		return
	}
	switch {
	case !counts || w.turn%turnRounds == 0:
	case w.trying():
		w.tried.add(r)
	default:
		w.kept.add(r)
	}
	w.turn = (w.turn + 1) % (4 * turnRounds)
	if w.turn != 0 {
		return
	}
	w.cycles.add(w.kept, w.tried)
	w.kept, w.tried = span{}, span{}
	keep, done := w.cycles.judge(w.trial > w.floor)
	if !done {
		return
	}
	if keep {
		w.floor = w.trial // it worked: the next probe goes the same way, soon
	} else {
		w.down = !w.down
		w.wait = 4 * 4 * turnRounds * w.cycles.all // four times the probe's rounds
	}
	w.moved = keep
	w.trial, w.cycles = 0, tally{}
}

// add records a cycle's counted rounds at the floor kept and at the
// trial; one without a rate at both counts nothing but its end.
func (c *tally) add(kept, tried span) {
	c.all++
	k, okK := kept.rate()
	t, okT := tried.rate()
	if !okK || !okT || kept.n == 0 || tried.n == 0 {
		return
	}
	x := math.Log(t / k)
	c.n++
	c.sum += x
	c.sumSq += x * x
	c.kept += kept.n
	c.tried += tried.n
}

// judge decides a probe from its cycles, up if the trial is the larger
// floor: done once the trial's rate over the kept floor's is, beyond the
// scatter of the cycles (a one-sided 99% t-test), above the bar (1 +
// probeGain up, 1 - probeLoss down), and then keep, or below it, or after
// probeMaxCycles cycles that decided nothing (keep false: the floor
// stays). Before probeCycles cycles, and each floor probeReplies replies,
// it decides nothing.
func (c *tally) judge(up bool) (keep, done bool) {
	if c.n < probeCycles || c.kept < probeReplies || c.tried < probeReplies {
		return false, c.all >= probeMaxCycles
	}
	bar := math.Log1p(-probeLoss)
	if up {
		bar = math.Log1p(probeGain)
	}
	n := float64(c.n)
	mean := c.sum / n
	se := math.Sqrt(max(c.sumSq/n-mean*mean, 0) / (n - 1)) // the standard error of the mean
	t := tOneSided99[min(c.n, len(tOneSided99))-1]
	switch {
	case mean-t*se > bar:
		return true, true
	case mean+t*se < bar:
		return false, true
	}
	return false, c.all >= probeMaxCycles
}

// tOneSided99 is Student's t for a one-sided 99% bound with n-1 degrees
// of freedom, by n from 1 (n = 1 has none: never used).
var tOneSided99 = [...]float64{math.Inf(1), 31.821, 6.965, 4.541, 3.747, 3.365, 3.143, 2.998}

// trying reports whether the probe's round under way is at the trial.
func (w *window) trying() bool {
	t := w.turn / turnRounds
	return t == 1 || t == 2
}

// start begins a probe, in the direction of the last one that worked: up
// unless the window is at its most, down only if the floor is what sets
// the window (else a smaller floor would change nothing).
func (w *window) start() {
	canUp := w.get() < w.max && w.floor >= w.bdp
	canDown := w.floor > minWindow && w.floor >= w.bdp
	switch {
	case canDown && (w.down || !canUp):
		w.down, w.trial = true, max(minWindow, w.floor/2)
	case canUp:
		w.down, w.trial = false, min(w.max, 2*max(w.floor, w.bdp))
	}
	w.turn = 0
}
