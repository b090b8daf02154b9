package relayconn

import (
	"sync"
	"time"
)

// deadline is a settable point in time that closes a channel when it
// passes, for the net.Conn deadline methods of Channel.
//
// It keeps one timer for its life. Moving the deadline later, as the SMTP
// engine does after each reply, touches no timer: the timer fires at the
// earlier time, finds the deadline not reached and waits for the rest.
// Only a deadline earlier than the timer's moves the timer.
type deadline struct {
	mu     sync.Mutex
	t      time.Time // the deadline; zero: none
	passed chan struct{}
	closed bool        // passed is closed: t has passed
	timer  *time.Timer // nil until the first deadline in the future
	at     time.Time   // when timer is due; zero: not armed
}

func newDeadline() *deadline { return &deadline{passed: make(chan struct{})} }

// set moves the deadline; the zero time means none. A deadline that has
// passed is re-armed by moving it into the future.
func (d *deadline) set(t time.Time) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.t = t
	if d.closed {
		d.passed, d.closed = make(chan struct{}), false
	}
	if t.IsZero() {
		if !d.at.IsZero() {
			d.timer.Stop() // a callback already under way finds nothing to do
			d.at = time.Time{}
		}
		return
	}
	dur := time.Until(t)
	if dur <= 0 {
		close(d.passed)
		d.closed = true
		return
	}
	if !d.at.IsZero() && !d.at.After(t) {
		return // the timer fires first, and waits for the rest
	}
	d.arm(t, dur)
}

// arm makes the timer fire after dur, at t (d.mu is held).
func (d *deadline) arm(t time.Time, dur time.Duration) {
	if d.timer == nil {
		d.timer = time.AfterFunc(dur, d.fire)
	} else {
		d.timer.Reset(dur)
	}
	d.at = t
}

// fire is the timer's callback: it closes passed when the deadline has
// passed, and waits for the rest when it was moved later.
func (d *deadline) fire() {
	d.mu.Lock()
	defer d.mu.Unlock()
	now := time.Now()
	if d.at.After(now) {
		return // a callback of an earlier time: the timer was moved since
	}
	d.at = time.Time{}
	if d.t.IsZero() || d.closed {
		return
	}
	if dur := d.t.Sub(now); dur > 0 {
		d.arm(d.t, dur)
		return
	}
	close(d.passed)
	d.closed = true
}

// wait returns a channel closed when the deadline passes.
func (d *deadline) wait() <-chan struct{} {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.passed
}

// get returns the deadline, zero for none.
func (d *deadline) get() time.Time {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.t
}
