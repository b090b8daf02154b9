package relayconn

import (
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/assert"
)

// hasPassed reports whether d's channel is closed, after everything due has
// run.
func hasPassed(d *deadline) bool {
	synctest.Wait()
	select {
	case <-d.wait():
		return true
	default:
		return false
	}
}

// TestDeadlineMovedLater: a deadline moved later passes at its last
// value, not at an earlier one, however often it moved.
func TestDeadlineMovedLater(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		d := newDeadline()
		start := time.Now()
		for i := 1; i <= 5; i++ {
			d.set(start.Add(time.Duration(i) * time.Second))
			time.Sleep(300 * time.Millisecond)
		}
		// Now start+1.5s; the deadline is start+5s.
		time.Sleep(3*time.Second + 400*time.Millisecond)
		assert.False(t, hasPassed(d), "at start+4.9s")
		time.Sleep(100 * time.Millisecond)
		assert.True(t, hasPassed(d), "at start+5s")
		assert.Equal(t, start.Add(5*time.Second), d.get())
	})
}

// TestDeadlineMovedEarlier: a deadline moved earlier passes at the
// earlier time.
func TestDeadlineMovedEarlier(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		d := newDeadline()
		start := time.Now()
		d.set(start.Add(10 * time.Second))
		d.set(start.Add(2 * time.Second))
		time.Sleep(time.Second + 900*time.Millisecond)
		assert.False(t, hasPassed(d))
		time.Sleep(100 * time.Millisecond)
		assert.True(t, hasPassed(d))
		time.Sleep(10 * time.Second)
		assert.True(t, hasPassed(d), "stays passed")
	})
}

// TestDeadlineLiftedAndRearmed: the zero time lifts the deadline (it never
// passes), a past time passes it at once, and a deadline that passed is
// re-armed by a later one.
func TestDeadlineLiftedAndRearmed(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		d := newDeadline()
		d.set(time.Now().Add(time.Second))
		d.set(time.Time{})
		time.Sleep(time.Hour)
		assert.False(t, hasPassed(d), "lifted")
		assert.True(t, d.get().IsZero())

		d.set(time.Now().Add(-time.Second))
		assert.True(t, hasPassed(d), "a time past passes at once")

		d.set(time.Now().Add(time.Second))
		assert.False(t, hasPassed(d), "re-armed")
		time.Sleep(time.Second)
		assert.True(t, hasPassed(d))

		// Lifted while its timer is due: the timer finds nothing to do.
		d.set(time.Now().Add(time.Second))
		time.Sleep(time.Second - time.Nanosecond)
		d.set(time.Time{})
		time.Sleep(time.Hour)
		assert.False(t, hasPassed(d))
		// Moved later again after the timer was stopped.
		d.set(time.Now().Add(time.Second))
		d.set(time.Now().Add(2 * time.Second))
		time.Sleep(2*time.Second - time.Nanosecond)
		assert.False(t, hasPassed(d))
		time.Sleep(time.Nanosecond)
		assert.True(t, hasPassed(d))
	})
}

// BenchmarkDeadlineMovedLater is what the SMTP engine does after each
// reply: the read deadline moved a little later.
func BenchmarkDeadlineMovedLater(b *testing.B) {
	d := newDeadline()
	b.ReportAllocs()
	for b.Loop() {
		d.set(time.Now().Add(time.Minute))
	}
}
