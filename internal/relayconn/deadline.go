package relayconn

import (
	"sync"
	"time"
)

// deadline is a settable point in time that closes a channel when it
// passes, for the net.Conn deadline methods of Channel.
type deadline struct {
	mu     sync.Mutex
	t      time.Time
	timer  *time.Timer
	passed chan struct{}
}

func newDeadline() *deadline { return &deadline{passed: make(chan struct{})} }

// set moves the deadline; the zero time means none. A deadline that has
// passed is re-armed by moving it into the future.
func (d *deadline) set(t time.Time) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.timer != nil && !d.timer.Stop() {
		<-d.passed // the timer fired or is firing: wait for it to close passed
	}
	d.timer = nil
	d.t = t
	select {
	case <-d.passed:
		d.passed = make(chan struct{})
	default:
	}
	if t.IsZero() {
		return
	}
	dur := time.Until(t)
	if dur <= 0 {
		close(d.passed)
		return
	}
	ch := d.passed
	d.timer = time.AfterFunc(dur, func() { close(ch) })
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
