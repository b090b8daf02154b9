package smtpc

import (
	"strings"
	"testing"
	"time"

	"github.com/mxrelay/mxrelay/internal/fakesmtp"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// feed answers n transactions, one every gap, each rtt after its flush,
// with the window full (inFlight = the limit) when full is set.
func feed(w *window, at time.Time, n int, gap, rtt time.Duration, full bool) time.Time {
	for range n {
		at = at.Add(gap)
		in := 1
		if full {
			in = w.get()
		}
		w.sample(at, at.Add(-rtt), in)
	}
	return at
}

func TestWindowStartsSmallAndGrowsWhileItHoldsTheRateBack(t *testing.T) {
	var w window
	w.init(256, 0, false)
	assert.Equal(t, minWindow, w.get())
	// 50 ms round trips, replies as fast as the window allows: a full
	// window of 32 gives 640/s, which needs 2 × 640 × 0.05 = 64.
	at := time.Unix(0, 0)
	for _, want := range []int{64, 128, 256, 256} {
		lim := w.get()
		at = feed(&w, at, 64, 50*time.Millisecond/time.Duration(lim), 50*time.Millisecond, true)
		assert.Equal(t, want, w.get())
	}
}

func TestWindowShrinksToWhatTheLinkNeeds(t *testing.T) {
	var w window
	w.init(256, 0, false)
	w.lim.Store(256)
	// A server that answers 1,000 a second over a 2 ms link: 2 × 1000 ×
	// 0.002 = 4 would do; the window keeps its floor of 32.
	feed(&w, time.Unix(0, 0), 64, time.Millisecond, 2*time.Millisecond, true)
	assert.Equal(t, minWindow, w.get())
	// 10,000 a second over 10 ms: 200.
	var w2 window
	w2.init(256, 0, false)
	w2.lim.Store(256)
	feed(&w2, time.Unix(100, 0), 64, 100*time.Microsecond, 10*time.Millisecond, true)
	assert.Equal(t, 200, w2.get())
}

// A caller that sends one email at a time does not grow the window: the
// rate it measures is the caller's, not the link's.
func TestWindowKeptWhenTheCallerHoldsTheRateBack(t *testing.T) {
	var w window
	w.init(256, 0, false)
	feed(&w, time.Unix(0, 0), 64, 10*time.Microsecond, 50*time.Millisecond, false)
	assert.Equal(t, minWindow, w.get())
}

// A session starts where the last one on the link ended, within bounds.
func TestWindowStartsWhereTheLastSessionEnded(t *testing.T) {
	var w window
	w.init(256, 200, false)
	assert.Equal(t, 200, w.get())
	w.init(256, 1000, false)
	assert.Equal(t, 256, w.get())
	w.init(256, 3, false)
	assert.Equal(t, minWindow, w.get())
}

func TestWindowBounds(t *testing.T) {
	var small window
	small.init(8, 0, false)
	assert.Equal(t, 8, small.get(), "never over Window")
	feed(&small, time.Unix(0, 0), 64, time.Microsecond, time.Second, true)
	assert.Equal(t, 8, small.get())

	var fixed window
	fixed.init(256, 0, true)
	assert.Equal(t, 256, fixed.get())
	feed(&fixed, time.Unix(0, 0), 64, time.Millisecond, time.Microsecond, true)
	assert.Equal(t, 256, fixed.get(), "FixedWindow: as configured")

	var burst window // replies read in one instant: no rate, no change
	burst.init(256, 0, false)
	at := time.Unix(0, 0)
	for range 64 {
		burst.sample(at, at.Add(-time.Millisecond), 32)
	}
	assert.Equal(t, minWindow, burst.get())
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
