package smtpc

import (
	"math"
	"sync/atomic"
	"time"
)

// window sizes the transactions in flight in a pipelined BDAT session to
// what the link needs, as BBR sizes a TCP flow: the bandwidth-delay
// product, the highest reply rate measured lately times the shortest time
// from a flush to its reply, with headroom (twice, and never under
// minWindow, so that writes still go out in batches). In flight beyond it
// would not go faster, and a cut would leave every one of them unknown.
// It starts at minWindow and, while the window is what holds the rate
// back, about doubles each round trip, up to the configured Window.
type window struct {
	fixed bool
	max   int
	lim   atomic.Int32 // read by the writer; written by the reader (p.mu)

	// The reader's, under p.mu.
	rttMin time.Duration
	done   [64]time.Time // when the last replies came, a ring
	n      int           // replies seen
}

// minWindow is the least an adaptive window holds: the batching of writes
// (a window refills an eighth at a time) needs a few in flight.
const minWindow = 32

func (w *window) init(most, start int, fixed bool) {
	w.max, w.fixed = most, fixed
	if fixed {
		w.lim.Store(int32(most))
		return
	}
	w.lim.Store(int32(min(max(minWindow, start), most)))
}

// Window is the number of transactions that may be in flight now, for the
// next session's Config.StartWindow.
func (c *Client) Window() int { return c.p.win.get() }

// get is the number of transactions that may be in flight now.
func (w *window) get() int { return int(w.lim.Load()) }

// sample records a transaction answered at now whose end of data was
// flushed at flushed, with inFlight transactions (itself included) in
// flight, and sizes the window again. p.mu is held.
func (w *window) sample(now, flushed time.Time, inFlight int) {
	if w.fixed {
		return
	}
	if rtt := now.Sub(flushed); w.rttMin == 0 || rtt < w.rttMin {
		w.rttMin = max(rtt, time.Microsecond)
	}
	w.done[w.n%len(w.done)] = now
	w.n++
	if w.n < len(w.done)/4 {
		return
	}
	k := min(w.n, len(w.done))
	oldest := w.done[(w.n-k)%len(w.done)]
	span := now.Sub(oldest)
	if span <= 0 {
		return // a burst read at once: no rate to be had from it
	}
	rate := float64(k-1) / span.Seconds()
	want := int(math.Ceil(2 * rate * w.rttMin.Seconds()))
	lim := w.get()
	if want > lim && inFlight < lim/2 {
		// The window did not hold the rate back: the caller did. Keep it.
		return
	}
	w.lim.Store(int32(min(max(want, minWindow), w.max)))
}
