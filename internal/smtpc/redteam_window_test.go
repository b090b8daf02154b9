package smtpc

import (
	"math"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// queued: a server that answers perSec a second whatever the window, over
// a link of round trip base, with the window's transactions queued at it:
// each waits behind the others in flight, so that the time from a flush
// to its reply is the link's round trip or lim/perSec, whichever is
// longer (serverLimited keeps the round trip at base whatever the
// window, which no server does).
func queued(perSec int, base time.Duration) link {
	return func(lim int) (time.Duration, time.Duration) {
		return time.Second / time.Duration(perSec), max(base, time.Duration(lim)*time.Second/time.Duration(perSec))
	}
}

// until drives l until the clock passes end, and returns the largest
// window seen in its last tenth.
func until(w *window, at, end time.Time, l link) (time.Time, int) {
	tail, most := end.Add(-end.Sub(at)/10), 0
	for at.Before(end) {
		lim := w.get()
		if !at.Before(tail) {
			most = max(most, lim)
		}
		gap, rtt := l(lim)
		at = at.Add(gap)
		w.sample(at, at.Add(-rtt), lim)
	}
	return at, most
}

// A server slower than the window: what is in flight beyond the link's
// need waits in the server's queue, and each reply's round trip is the
// queue's. Once the shortest round trip expires (rttLife), the one that
// replaces it is measured through that queue, so the bandwidth-delay
// product is twice the window itself: the window can only grow. It must
// come down to what the link needs (2 × rate × base, the floor at least).
func TestRedteam13WindowShrinksWhenItsOwnQueueSetsTheRoundTrip(t *testing.T) {
	for _, tc := range []struct {
		name   string
		perSec int
		base   time.Duration
		want   int // what the link needs
	}{
		{"1000/s at 50 ms: 100 would do", 1000, 50 * time.Millisecond, 100},
		{"10/s at 50 ms: the floor would do", 10, 50 * time.Millisecond, minWindow},
		{"5000/s at 2 ms: the floor would do", 5000, 2 * time.Millisecond, minWindow},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var w window
			w.init(256, WindowState{}, false)
			at := time.Unix(0, 0)
			// Ten minutes with the server that slow from the start.
			_, most := until(&w, at, at.Add(10*time.Minute), queued(tc.perSec, tc.base))
			assert.LessOrEqual(t, most, 2*tc.want, "the window in the last minute")
		})
	}
}

// A link that the window learnt at 256 (50 ms, as fast as the window
// lets it) whose server then slows to 10 a second: 256 in flight there
// make each reply wait 25.6 s, and a cut leaves all of them unknown. The
// window must come down within a few minutes.
func TestRedteam13WindowFollowsAServerThatSlowsTo10PerSecond(t *testing.T) {
	var w window
	w.init(256, WindowState{}, false)
	at, _ := drive(&w, time.Unix(0, 0), 2000, windowLimited(50*time.Millisecond))
	require.Equal(t, 256, w.get())
	_, most := until(&w, at, at.Add(10*time.Minute), queued(10, 50*time.Millisecond))
	assert.LessOrEqual(t, most, 2*minWindow, "the window in the last minute of ten at 10/s")
}

// A PipelineWindow past what an int32 holds (math.MaxInt for "no
// bound"): the window is stored as an int32, and must still be within
// 1..Window, not negative or 0, which stalls Send for good.
func TestRedteam13WindowHugeMostStaysPositive(t *testing.T) {
	for _, most := range []int{math.MaxInt32, math.MaxInt32 + 1, 1 << 32, math.MaxInt} {
		for _, fixed := range []bool{false, true} {
			var w window
			w.init(most, WindowState{}, fixed)
			assert.GreaterOrEqual(t, w.get(), 1, "most %d, fixed %v", most, fixed)
			drive(&w, time.Unix(0, 0), 5000, windowLimited(50*time.Millisecond))
			assert.Positive(t, w.get(), "most %d, fixed %v", most, fixed)
		}
	}
}

// sim runs the window against a server event by event: the writer keeps
// the window full (a transaction leaves as soon as one is answered and
// the window has room), a transaction flushed at f is answered at
// f + rtt() at the earliest, service after the reply before at the
// earliest (the server's pace), and in order. It runs until end and
// returns the clock and the largest window seen in the last tenth.
type sim struct {
	w       *window
	at      time.Time
	service time.Duration
	rtt     func() time.Duration
	flights []time.Time // the flush times of the transactions in flight, oldest first
	last    time.Time   // the last reply
}

func (s *sim) run(end time.Time) (most int) {
	tail := end.Add(-end.Sub(s.at) / 10)
	for s.at.Before(end) {
		for len(s.flights) < s.w.get() {
			s.flights = append(s.flights, s.at)
		}
		if !s.at.Before(tail) {
			most = max(most, s.w.get())
		}
		f := s.flights[0]
		reply := f.Add(s.rtt())
		if r := s.last.Add(s.service); r.After(reply) {
			reply = r
		}
		if reply.Before(s.at) {
			reply = s.at
		}
		s.at, s.last = reply, reply
		s.w.sample(reply, f, len(s.flights))
		s.flights = s.flights[1:]
	}
	return most
}

// The same as TestRedteam13WindowShrinksWhenItsOwnQueueSetsTheRoundTrip,
// event by event: a server that answers 1,000 a second over a 50 ms
// link needs 100 in flight; the window must not stay at 256.
func TestRedteam13WindowShrinksWhenItsOwnQueueSetsTheRoundTripEventByEvent(t *testing.T) {
	var w window
	w.init(256, WindowState{}, false)
	s := &sim{w: &w, at: time.Unix(0, 0), service: time.Millisecond, rtt: func() time.Duration { return 50 * time.Millisecond }}
	most := s.run(s.at.Add(10 * time.Minute))
	assert.LessOrEqual(t, most, 200, "the window in the last minute; rttMin %v", w.rttMin)
}

// A relay that delays its replies unevenly (1 to 51 ms, in order) over
// a link that the window alone holds back: more in flight is always
// faster there, so the window must reach its most, though the shortest
// round trip (1 ms) makes the bandwidth-delay product small.
func TestRedteam13WindowGrowsOverUnevenDelays(t *testing.T) {
	r := rand.New(rand.NewPCG(13, 1))
	var w window
	w.init(256, WindowState{}, false)
	s := &sim{w: &w, at: time.Unix(0, 0), rtt: func() time.Duration {
		return time.Millisecond + time.Duration(r.Int64N(int64(50*time.Millisecond)))
	}}
	most := s.run(s.at.Add(2 * time.Minute))
	assert.GreaterOrEqual(t, most, 128, "the window in the last 12 s; floor %d bdp %d", w.floor, w.bdp)
}

// A state learnt where the CPUs set the rate (a loopback: Startup's floor
// of 256), carried to the next session (after a cut, or a 421) on a link
// whose server now answers 10 a second: 256 in flight there are 25.6 s of
// replies, all unknown after a cut; 32 would do. Within ten minutes the
// window must have come down.
func TestRedteam13WindowCarriedFloorFollowsASlowServer(t *testing.T) {
	var w window
	w.init(256, WindowState{}, false)
	at, _ := drive(&w, time.Unix(0, 0), 5000, loopback(33_000, 500*time.Microsecond))
	require.Equal(t, 256, w.floor, "Startup")
	var next window
	next.init(256, w.WindowState, false)
	s := &sim{w: &next, at: at.Add(time.Minute), service: 100 * time.Millisecond, rtt: func() time.Duration { return time.Millisecond }}
	most := s.run(s.at.Add(10 * time.Minute))
	assert.LessOrEqual(t, most, 2*minWindow, "the window in the last minute; floor %d bdp %d rttMin %v", next.floor, next.bdp, next.rttMin)
}
