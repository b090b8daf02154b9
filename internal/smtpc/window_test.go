package smtpc

import (
	"math"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/mxrelay/mxrelay/internal/fakesmtp"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// link answers the window's transactions: for a window of lim, the time
// from one reply to the next and from a flush to its reply.
type link func(lim int) (gap, rtt time.Duration)

// window-limited: a link of round trip rtt that answers as fast as the
// window lets it, lim a round trip.
func windowLimited(rtt time.Duration) link {
	return func(lim int) (time.Duration, time.Duration) { return rtt / time.Duration(lim), rtt }
}

// serverLimited: a link of round trip rtt whose server answers perSec a
// second whatever the window.
func serverLimited(perSec int, rtt time.Duration) link {
	return func(int) (time.Duration, time.Duration) { return time.Second / time.Duration(perSec), rtt }
}

// cpuLimited: a link of round trip rtt (a loopback) whose reply rate
// grows with the window up to upTo, perTx a second for each in flight
// (the CPUs, not the link, are the limit: more in flight, more done per
// wake-up), and stays flat beyond.
func cpuLimited(perTx, upTo int, rtt time.Duration) link {
	return func(lim int) (time.Duration, time.Duration) {
		return time.Second / time.Duration(perTx*min(lim, upTo)), rtt
	}
}

// drive answers n transactions over l with the window full, from at, and
// returns the time of the last reply; most is the largest window seen.
func drive(w *window, at time.Time, n int, l link) (last time.Time, most int) {
	for range n {
		lim := w.get()
		most = max(most, lim)
		gap, rtt := l(lim)
		at = at.Add(gap)
		w.sample(at, at.Add(-rtt), lim)
	}
	return at, most
}

// settle drives l until no probe is under way, after n replies at least,
// and returns the window then.
func settle(t *testing.T, w *window, at time.Time, n int, l link) (int, time.Time) {
	t.Helper()
	at, _ = drive(w, at, n, l)
	for range 100_000 {
		if w.trial == 0 {
			return w.get(), at
		}
		at, _ = drive(w, at, 1, l)
	}
	t.Fatal("a probe never ended")
	return 0, at
}

func TestWindowStartsSmallAndGrowsWhileItHoldsTheRateBack(t *testing.T) {
	var w window
	w.init(256, WindowState{}, false)
	assert.Equal(t, minWindow, w.get())
	// 50 ms round trips, replies as fast as the window allows: a full
	// window of 32 gives 640/s, which needs 2 × 640 × 0.05 = 64. Round by
	// round (a window's worth of replies) it grows, no more than doubling,
	// until it is at its most.
	at := time.Unix(0, 0)
	rounds := 0
	for w.get() < 256 {
		before := w.get()
		at, _ = drive(&w, at, before, windowLimited(50*time.Millisecond))
		assert.LessOrEqual(t, w.get(), 2*before)
		rounds++
		require.LessOrEqual(t, rounds, 5, "32 to 256 in a few round trips")
	}
	drive(&w, at, 5000, windowLimited(50*time.Millisecond))
	assert.Equal(t, 256, w.get(), "and it stays there")
}

// A window at its most over a long link comes down to what the link
// needs when the server, not the window, sets the rate.
func TestWindowShrinksToWhatTheLinkNeeds(t *testing.T) {
	for _, tc := range []struct {
		name string
		l    link
		want int
	}{
		// 1,000 a second over a 2 ms link: 2 × 1000 × 0.002 = 4 would
		// do; the window keeps its floor of 32.
		{"1000/s at 2 ms", serverLimited(1000, 2*time.Millisecond), minWindow},
		// 10,000 a second over 10 ms: 200.
		{"10000/s at 10 ms", serverLimited(10_000, 10*time.Millisecond), 200},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var w window
			w.init(256, WindowState{}, false)
			at, _ := drive(&w, time.Unix(0, 0), 1000, windowLimited(50*time.Millisecond))
			require.Equal(t, 256, w.get())
			got, _ := settle(t, &w, at, 20_000, tc.l)
			assert.Equal(t, tc.want, got)
		})
	}
}

// A caller that sends one email at a time does not grow the window: the
// rate it measures is the caller's, not the link's; nor does it probe.
func TestWindowKeptWhenTheCallerHoldsTheRateBack(t *testing.T) {
	var w window
	w.init(256, WindowState{}, false)
	at := time.Unix(0, 0)
	for range 5000 {
		at = at.Add(10 * time.Microsecond)
		w.sample(at, at.Add(-50*time.Millisecond), 1)
		require.Equal(t, minWindow, w.get())
	}
}

// A pause of the caller's (nothing in flight for a while) is not a slow
// link: the window it had is there when sending resumes.
func TestWindowKeptOverTheCallersPauses(t *testing.T) {
	var w window
	w.init(256, WindowState{}, false)
	at, _ := drive(&w, time.Unix(0, 0), 2000, windowLimited(50*time.Millisecond))
	require.Equal(t, 256, w.get())
	for range 5 {
		at = at.Add(5 * time.Second) // the next burst's first end of data leaves
		at, _ = drive(&w, at.Add(-50*time.Millisecond+time.Second/5120), 300, windowLimited(50*time.Millisecond))
		assert.Equal(t, 256, w.get())
	}
}

// A session starts with what the last one on the link learned, within
// bounds.
func TestWindowStartsWhereTheLastSessionEnded(t *testing.T) {
	var w window
	w.init(256, WindowState{}, false)
	drive(&w, time.Unix(0, 0), 1000, windowLimited(50*time.Millisecond))
	require.Equal(t, 256, w.get())
	st := w.WindowState
	var next window
	next.init(256, st, false)
	assert.Equal(t, 256, next.get(), "no ramp up again")
	next.init(100, st, false)
	assert.Equal(t, 100, next.get(), "never over Window")
	next.init(256, WindowState{}, false)
	assert.Equal(t, minWindow, next.get(), "nothing learned")
}

func TestWindowBounds(t *testing.T) {
	var small window
	small.init(8, WindowState{}, false)
	assert.Equal(t, 8, small.get(), "never over Window")
	_, most := drive(&small, time.Unix(0, 0), 5000, windowLimited(time.Second))
	assert.Equal(t, 8, most)
	_, most = drive(&small, time.Unix(100, 0), 5000, cpuLimited(100, 1000, 100*time.Microsecond))
	assert.Equal(t, 8, most, "nor when probing")

	var one window // lock-step
	one.init(1, WindowState{}, false)
	_, most = drive(&one, time.Unix(0, 0), 5000, windowLimited(time.Second))
	assert.Equal(t, 1, most)

	var fixed window
	fixed.init(256, WindowState{}, true)
	assert.Equal(t, 256, fixed.get())
	drive(&fixed, time.Unix(0, 0), 5000, serverLimited(1000, time.Microsecond))
	assert.Equal(t, 256, fixed.get(), "FixedWindow: as configured")

	var big window // never over Window, never under 32, whatever the link
	big.init(256, WindowState{}, false)
	at := time.Unix(0, 0)
	for _, l := range []link{windowLimited(time.Second), serverLimited(1, time.Microsecond), cpuLimited(1000, 1000, time.Microsecond), serverLimited(1_000_000, time.Second)} {
		var most int
		at, most = drive(&big, at, 20_000, l)
		assert.LessOrEqual(t, most, 256)
		assert.GreaterOrEqual(t, big.get(), minWindow)
	}

	var burst window // replies read in one instant: no rate, no change
	burst.init(256, WindowState{}, false)
	at = time.Unix(0, 0)
	for range 5000 {
		burst.sample(at, at.Add(-time.Millisecond), 32)
	}
	assert.Equal(t, minWindow, burst.get())
}

// Where the round trip is short and the CPUs are the limit, the
// bandwidth-delay product is a few transactions, yet more in flight goes
// faster: probing finds it. The floor climbs while the rate climbs with
// it, up to 128 here, and keeps no larger one, which brings nothing.
func TestWindowGrowsWhileTheRateGrowsWithIt(t *testing.T) {
	var w window
	w.init(256, WindowState{}, false)
	l := cpuLimited(200, 128, 100*time.Microsecond) // 32 in flight: 6,400/s; 128: 25,600/s
	got, at := settle(t, &w, time.Unix(0, 0), 100_000, l)
	assert.Less(t, w.bdp, minWindow, "the bandwidth-delay product sees nothing of it")
	assert.Equal(t, 128, got)
	// And it stays there: further probes, up and down, keep neither.
	_, most := drive(&w, at, 100_000, l)
	got, _ = settle(t, &w, at, 0, l)
	assert.Equal(t, 128, got)
	assert.Equal(t, 256, most, "it kept probing up")
}

// Where a larger window stops bringing a higher rate, probing brings the
// floor back down: a server that got slow needs no more than the floor.
func TestWindowShrinksBackWhereTheRateDoesNotGrowWithIt(t *testing.T) {
	var w window
	w.init(256, WindowState{}, false)
	got, at := settle(t, &w, time.Unix(0, 0), 100_000, cpuLimited(100, 256, 100*time.Microsecond))
	require.Equal(t, 256, got)
	// The same link, the rate now flat at 10,000/s whatever the window.
	got, _ = settle(t, &w, at, 100_000, serverLimited(10_000, 100*time.Microsecond))
	assert.Equal(t, minWindow, got)
}

// The shortest round trip expires: a link that got slower for good (a new
// route) is sized by its new round trip, not by the old one forever.
func TestWindowShortestRoundTripExpires(t *testing.T) {
	var w window
	w.init(256, WindowState{}, false)
	// 2 ms, 5,000/s: 20 would do; the floor of 32 holds.
	got, at := settle(t, &w, time.Unix(0, 0), 5000, serverLimited(5000, 2*time.Millisecond))
	require.Equal(t, minWindow, got)
	// Now 40 ms, the server as fast: 2 × 5000 × 0.04 = 400, at most 256.
	// Within 10 s the old 2 ms still sizes it.
	got, at = settle(t, &w, at, 5000, serverLimited(5000, 40*time.Millisecond))
	assert.Equal(t, minWindow, got, "1 s in: the 2 ms round trip still holds")
	got, _ = settle(t, &w, at, 60_000, serverLimited(5000, 40*time.Millisecond))
	assert.Equal(t, 256, got, "past 10 s: the 40 ms round trip sizes it")
}

// A transaction's round trip starts when its end of data is handed on,
// whether by Flush or by the buffer's own flush when it fills: stamped at
// the next Flush instead, one whose bytes left long before would seem
// answered in less than the link's round trip, and the window, sized by
// the shortest round trip, would shrink for good.
func TestWindowRoundTripStartsWhenTheBytesLeave(t *testing.T) {
	const n = 10
	body := strings.Repeat(strings.Repeat("x", 998)+"\r\n", 8) // 8 KiB: 10 fill the 64 KiB buffer
	answer := make(chan struct{})
	nc, _ := fakesmtp.Pipe(t, func(f *fakesmtp.Conn) {
		f.Hello("PIPELINING", "CHUNKING", "ENHANCEDSTATUSCODES")
		var verbs []string
		for ends := 0; ends < n; {
			l, ok := f.Line()
			if !ok {
				return
			}
			verb := strings.Fields(l)[0]
			if verb == "BDAT" {
				f.Chunk(l)
				ends++
			}
			verbs = append(verbs, verb)
		}
		<-answer // every end of data is in: answer them all
		for _, v := range verbs {
			f.Say(map[string]string{"RSET": "250 2.0.0 ok", "MAIL": "250 2.1.0 ok", "RCPT": "250 2.1.5 ok", "BDAT": "250 2.0.0 queued"}[v])
		}
		if l, _ := f.Line(); l == "QUIT" {
			f.Say("221 2.0.0 bye")
		}
	})
	c := startClient(t, nc, Config{Timeout: 5 * time.Second, Window: 256})
	c.Start()
	txs := make([]*Tx, n)
	var outs []chan *Result
	for i := range txs {
		txs[i] = &Tx{Mail: "MAIL FROM:<a@x>", Rcpts: []string{"RCPT TO:<b@x>"}, Body: strings.NewReader(body)}
		outs = append(outs, runTx(t, c, txs[i]))
	}
	// Fewer than the window: nothing called Flush yet, but the buffer
	// filled and handed the first ones on.
	c.p.mu.Lock()
	first, last := txs[0].flushedAt, txs[n-1].flushedAt
	c.p.mu.Unlock()
	assert.False(t, first.IsZero(), "the first end of data left with the buffer's own flush")
	assert.True(t, last.IsZero(), "the last one is still in the buffer")
	require.NoError(t, c.Flush())
	c.p.mu.Lock()
	assert.False(t, txs[n-1].flushedAt.IsZero(), "Flush handed the last one on")
	assert.True(t, first.Before(txs[n-1].flushedAt), "each stamped when it left")
	c.p.mu.Unlock()
	close(answer)
	require.NoError(t, c.Quit()) // its 221 confirms the last
	for _, out := range outs {
		r := <-out
		require.NoError(t, r.Err)
	}
}

// loopback: a link of round trip rtt whose CPUs, not the link, set the
// rate: perSec a second at a window of 256, and (lim/256)^0.15 of that at
// others, as measured on loopback (32, 64 and 128 in flight went 0.72,
// 0.83 and 0.91 times as fast as 256).
func loopback(perSec float64, rtt time.Duration) link {
	return func(lim int) (time.Duration, time.Duration) {
		rate := perSec * math.Pow(float64(lim)/256, 0.15)
		return time.Duration(float64(time.Second) / rate), rtt
	}
}

// noisy scales l's time from one reply to the next by a factor that holds
// for a stretch of up to 400 replies and then changes, log-normal of
// deviation sd, as a busy machine's scheduling does (a run of rounds slow,
// then fast); seeded, so that a test sees the same replies every time.
func noisy(l link, seed uint64, sd float64) link {
	r := rand.New(rand.NewPCG(seed, 1))
	f, left := 1.0, 0
	return func(lim int) (time.Duration, time.Duration) {
		if left == 0 {
			f, left = math.Exp(r.NormFloat64()*sd), 1+r.IntN(400)
		}
		left--
		gap, rtt := l(lim)
		return time.Duration(float64(gap) * f), rtt
	}
}

// Startup: where the rate is high and the round trip short, the floor
// goes within a few rounds to what startDelay of the rate holds; where
// the rate is low, it stays where it was.
func TestWindowStartupHoldsWhatTheRateNeeds(t *testing.T) {
	for _, tc := range []struct {
		name        string
		l           link
		want, floor int
	}{
		// 24,000 a second at 32: 5 ms of it is 120, and growing the
		// window only raises the rate.
		{"loopback", loopback(33_000, 500*time.Microsecond), 256, 256},
		// 10,000 a second whatever the window: 5 ms of it is 50.
		{"10000/s at 0.1 ms", serverLimited(10_000, 100*time.Microsecond), 64, 64},
		// 2,000 a second: 10 would do; the floor of 32 holds.
		{"2000/s at 1 ms", serverLimited(2000, time.Millisecond), minWindow, minWindow},
		// 32 in flight a round trip of 50 ms, 640 a second: the
		// bandwidth-delay product grows it, Startup leaves the floor.
		{"window-limited at 50 ms", windowLimited(50 * time.Millisecond), 256, minWindow},
		// 10,000 a second over 10 ms: the bandwidth-delay product (200)
		// holds more than 5 ms of it.
		{"10000/s at 10 ms", serverLimited(10_000, 10*time.Millisecond), 200, minWindow},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var w window
			w.init(256, WindowState{}, false)
			at := time.Unix(0, 0)
			for range 3 * bwRounds { // Startup, and a few rounds
				at, _ = drive(&w, at, w.get(), tc.l)
			}
			require.Zero(t, w.trial, "no probe yet")
			assert.Equal(t, tc.want, w.get(), "the window")
			assert.Equal(t, tc.floor, w.floor, "the floor")
		})
	}
}

// A larger or smaller floor is kept only when the rates show, beyond their
// scatter, that it is worth it: on a busy machine (the rate of rounds of
// 256 replies scattered by a third, in runs of slow and fast rounds) a
// floor half as large, 9% slower, is not taken for as good, though some
// cycles make it look better.
func TestWindowProbesHoldOnInNoise(t *testing.T) {
	for seed := range uint64(3) {
		var w window
		w.init(256, WindowState{}, false)
		l := noisy(loopback(33_000, 500*time.Microsecond), seed, 0.5)
		at := time.Unix(0, 0)
		at, _ = drive(&w, at, 5000, l)
		require.Equal(t, 256, w.floor, "seed %d: Startup", seed)
		probes, at256, least := 0, 0, w.floor
		const n = 1_000_000 // half a minute at 33,000 a second
		for range n {
			if w.get() == 256 {
				at256++
			}
			trial := w.trial
			at, _ = drive(&w, at, 1, l)
			if trial == 0 && w.trial > 0 {
				probes++
			}
			least = min(least, w.floor)
		}
		assert.Equal(t, 256, w.floor, "seed %d", seed)
		assert.GreaterOrEqual(t, least, 128, "seed %d: a floor of 64 is 18%% slower", seed)
		assert.GreaterOrEqual(t, probes, 3, "seed %d: it still probes", seed)
		assert.Greater(t, float64(at256)/n, 0.85, "seed %d: the replies at 256", seed)
	}
}

// A probe that moves nothing costs (half its rounds at the trial): the
// next waits four times as long as it took, so that where the floor is
// what the link needs, few replies come at a trial.
func TestWindowProbesAreRareWhereTheyMoveNothing(t *testing.T) {
	var w window
	w.init(256, WindowState{}, false)
	l := loopback(33_000, 500*time.Microsecond)
	at, _ := drive(&w, time.Unix(0, 0), 5000, l)
	require.Equal(t, 256, w.floor)
	probes, trying := 0, 0
	const n = 1_000_000
	for range n {
		if w.trial > 0 && w.trying() {
			trying++
		}
		trial := w.trial
		at, _ = drive(&w, at, 1, l)
		if trial == 0 && w.trial > 0 {
			probes++
		}
	}
	assert.Equal(t, 256, w.floor)
	assert.GreaterOrEqual(t, probes, 3, "it still probes")
	assert.Less(t, float64(trying)/n, 0.1, "the replies at a trial")
}

func TestWindowJudge(t *testing.T) {
	// cyclesOf is the cycles of a probe whose trial's rate was each of
	// ratios times the kept floor's, 1000 replies at each a cycle.
	cyclesOf := func(ratios ...float64) tally {
		var c tally
		for _, x := range ratios {
			c.add(span{n: 1000, busy: time.Second}, span{n: 1000, busy: time.Duration(float64(time.Second) / x)})
		}
		return c
	}
	// each is probeCycles cycles of ratio x.
	each := func(x float64) tally {
		xs := make([]float64, probeCycles)
		for i := range xs {
			xs[i] = x
		}
		return cyclesOf(xs...)
	}
	// empty is n cycles without a rate at the floor kept.
	empty := func(n int) tally {
		var c tally
		for range n {
			c.add(span{n: 1000}, span{n: 1000, busy: time.Second})
		}
		return c
	}
	for _, tc := range []struct {
		name       string
		c          tally
		up         bool
		keep, done bool
	}{
		{"up, 20% faster each cycle", each(1.2), true, true, true},
		{"up, as fast", each(1), true, false, true},
		{"up, 4% faster: below the bar", each(1.04), true, false, true},
		{"down, as fast", each(1), false, true, true},
		{"down, 2% slower: within the loss", each(0.98), false, true, true},
		{"down, 9% slower", each(0.91), false, false, true},
		{"fewer cycles than probeCycles decide nothing", cyclesOf(slices.Repeat([]float64{1.2}, probeCycles-1)...), true, false, false},
		{"scattered: not yet", cyclesOf(1.3, 0.8, 1.2, 0.9), true, false, false},
		{"scattered, 15% faster in the mean: after the most cycles the floor stays", cyclesOf(1.6, 0.8, 1.4, 0.9, 1.5, 1.0), true, false, true},
		{"scattered less: 20% faster", cyclesOf(1.25, 1.15, 1.22, 1.18), true, true, true},
		{"scattered less: 20% slower", cyclesOf(0.75, 0.85, 0.78, 0.82), false, false, true},
		{"too few replies at each", func() tally {
			var c tally
			for range probeCycles {
				c.add(span{n: 100, busy: time.Second}, span{n: 100, busy: time.Second})
			}
			return c
		}(), false, false, false},
		{"no rate at a floor: counts nothing but its end", empty(probeMaxCycles - 1), true, false, false},
		{"no rate at a floor, the most cycles: the floor stays", empty(probeMaxCycles), false, false, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := tc.c
			keep, done := c.judge(tc.up)
			assert.Equal(t, tc.keep, keep, "keep")
			assert.Equal(t, tc.done, done, "done")
		})
	}
}

// ProbeRTT costs little where the window is worth its size: on a
// loopback whose CPUs set the rate (Startup's floor of 256), each reply
// waits behind what is in flight, so no round trip is ever as short as
// the one seen at 32, and the shortest expires every rttLife. Each time,
// the window dips to minWindow for about a round trip and comes back,
// and the floor stays.
func TestWindowProbeRTTIsAShortDipEveryRTTLife(t *testing.T) {
	var w window
	w.init(256, WindowState{}, false)
	base := loopback(33_000, 0)
	l := func(lim int) (time.Duration, time.Duration) {
		gap, _ := base(lim)
		return gap, 500*time.Microsecond + time.Duration(lim)*gap // the queue of lim at the server
	}
	at, _ := drive(&w, time.Unix(0, 0), 5000, l)
	require.Equal(t, 256, w.floor, "Startup")
	start, probes, dipped, n := at, 0, 0, 0
	for at.Sub(start) < time.Minute {
		was := w.draining
		at, _ = drive(&w, at, 1, l)
		n++
		if !was && w.draining {
			probes++
		}
		if w.draining {
			dipped++
		}
	}
	assert.InDelta(t, time.Minute/rttLife, probes, 1, "a ProbeRTT every rttLife")
	assert.Less(t, float64(dipped)/float64(n), 0.01, "the replies in ProbeRTT")
	assert.Equal(t, 256, w.floor)
	assert.Less(t, w.rttMin, 2*time.Millisecond, "the round trip taken at minWindow, not through 256")
}

// Once the server is slow (100 a second, the window's transactions
// queued at it), a floor of 256 (2.56 s of its replies) goes back to
// Startup's within seconds, not after rounds of 256 replies each: rounds
// end after roundTime.
func TestWindowFloorFollowsASlowServerInTime(t *testing.T) {
	var w window
	w.init(256, WindowState{}, false)
	at, _ := drive(&w, time.Unix(0, 0), 5000, loopback(33_000, 500*time.Microsecond))
	require.Equal(t, 256, w.floor, "Startup")
	start := at
	for w.floor > minWindow {
		at, _ = drive(&w, at, 1, queued(100, time.Millisecond))
		require.Less(t, at.Sub(start), time.Minute, "the floor still %d", w.floor)
	}
	assert.Less(t, at.Sub(start), 3*bwRounds*roundTime, "the floor back at %d", w.floor)
	assert.Equal(t, minWindow, w.get())
}
