package test

import (
	"fmt"
	"math"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"

	"github.com/mxrelay/mxrelay"
	"github.com/mxrelay/mxrelay/internal/fakesmtp"
	"github.com/mxrelay/mxrelay/internal/testkit"
	"github.com/mxrelay/mxrelay/relaytest"
)

// The adaptive window against an upstream whose pace changes within one
// session: its replies to the ends of data come at once, then each after
// a pause, then at once again (and the other way round). The window grows
// and shrinks under transactions in flight: no Send may wait for a slot
// that never frees, and every email is delivered once, at its first
// attempt, in one session. A third upstream, after the window has
// resized, cuts the connection instead of answering an end of data: the
// emails whose end of data went out unanswered are unknown and not sent
// again, the others delivered; none reaches the upstream twice. (The
// sweep and chaos suites send batches under the window's floor of 32,
// which it never resizes.) On the bubble's clock.
func TestRedteam8AdaptiveWindowSlowThenFast(t *testing.T) {
	const n = 400
	for _, tc := range []struct {
		name string
		slow func(tx int) bool
		cut  int // the first connection's transaction whose end of data it cuts at; 0: none
	}{
		{name: "fast, slow, fast", slow: func(tx int) bool { return tx > n/4 && tx <= n/2 }},
		{name: "slow, fast, slow", slow: func(tx int) bool { return tx <= n/4 || tx > 3*n/4 }},
		{name: "fast, slow, cut", slow: func(tx int) bool { return tx > n/4 && tx <= n/2 }, cut: 3 * n / 5},
	} {
		t.Run(tc.name, func(t *testing.T) {
			testkit.Bubble(t, func(t *testing.T) {
				var ends atomic.Int64
				got := &endsRead{}
				up := testkit.NewUpstream(t, (&fakesmtp.Session{Ext: []string{"PIPELINING", "CHUNKING"}, Enhanced: true, Answer: func(cmd fakesmtp.Cmd) ([]string, bool) {
					if cmd.Verb != "END" {
						return nil, false
					}
					if tc.cut > 0 && cmd.Conn.N == 1 && cmd.Tx == tc.cut {
						return []string{"CUT"}, true
					}
					ends.Add(1)
					got.add(cmd.Message)
					if tc.slow(cmd.Tx) && cmd.Conn.N == 1 {
						return []string{"~20ms", cmd.Honest}, true
					}
					return nil, false
				}}).Serve)
				s := testkit.NewRelay(t, &relaytest.Options{UpstreamAddr: up.Addr})
				rec := &testkit.Recorder{}
				c := testkit.NewClient(t, s, &mxrelay.Options{MaxEmailsPerSession: n, MaxQueueSize: n, BatchWait: time.Second, CommandTimeout: time.Minute, OnEvent: rec.On})
				hs := enqueueW(t, c, n)
				unknown := 0
				for i, res := range testkit.Results(t, hs) {
					subject := fmt.Sprint("w", i)
					if tc.cut == 0 {
						assert.Equal(t, mxrelay.OutcomeDelivered, res.Outcome, "%s: %v", subject, res.Err)
						assert.Equal(t, 1, res.Attempts, subject)
						continue
					}
					if got.once(t, subject, res) {
						unknown++
						assert.Equal(t, 1, res.Attempts, subject)
					}
				}
				if tc.cut > 0 {
					assert.Positive(t, unknown, "the cut left the window's unanswered emails unknown")
					return
				}
				assert.EqualValues(t, n, ends.Load())
				assert.Equal(t, 1, rec.Count(mxrelay.EventSessionStarted), "one session")
			})
		})
	}
}

// endsRead counts the ends of data an upstream read, by subject.
type endsRead struct {
	mu  sync.Mutex
	got map[string]int
}

// add counts the end of data of message.
func (e *endsRead) add(message string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.got == nil {
		e.got = map[string]int{}
	}
	e.got[testkit.SubjectOf([]byte(message))]++
}

// once checks that the email of subject, result res, reached the upstream
// once if delivered and at most once if unknown (never sent again), and
// reports whether it is unknown; any other outcome is an error.
func (e *endsRead) once(t *testing.T, subject string, res *mxrelay.Result) (unknown bool) {
	t.Helper()
	e.mu.Lock()
	k := e.got[subject]
	e.mu.Unlock()
	switch res.Outcome {
	case mxrelay.OutcomeDelivered:
		assert.Equal(t, 1, k, "%s delivered: once upstream", subject)
	case mxrelay.OutcomeUnknown:
		assert.LessOrEqual(t, k, 1, "%s unknown: never sent again", subject)
		return true
	default:
		t.Errorf("%s: %v, %v", subject, res.Outcome, res.Err)
	}
	return false
}

// PipelineWindow has no upper bound, and math.MaxInt reads as "no
// bound": the window, stored as an int32, wrapped to 0 or below at 2^31
// and past, and Send waited for good for a free place that could never
// be. Every email must be delivered, whatever the window's most, fixed or
// adaptive. On the bubble's clock: a stall is a deadlock there.
func TestRedteam13HugePipelineWindowDoesNotStall(t *testing.T) {
	for _, most := range []int{math.MaxInt32 + 1, 1 << 32, math.MaxInt} {
		for _, fixed := range []bool{true, false} {
			t.Run(fmt.Sprint(most, fixed), func(t *testing.T) {
				testkit.Bubble(t, func(t *testing.T) {
					s := testkit.NewRelay(t, &relaytest.Options{})
					c := testkit.NewClient(t, s, &mxrelay.Options{PipelineWindow: most, FixedWindow: fixed, MaxEmailsPerSession: 50, BatchWait: time.Second})
					for i, res := range testkit.EnqueueBatch(t, c, 50) {
						assert.Equal(t, mxrelay.OutcomeDelivered, res.Outcome, "p%d: %v", i, res.Err)
					}
				})
			})
		}
	}
}

// An upstream that answers each end of data 100 ms after it read it, one
// after the other: 10 a second, on a link with no delay of its own. 32 in
// flight (the floor) are 3.2 s of replies already; more only wait longer
// at the server, and a cut leaves them all unknown. Through the real
// client and relay, the window (Stats.Window) must stay at what the link
// needs, the floor, or twice it at most, while each email is delivered
// once; a cut at the 600th end of data leaves no more unknown than that.
// (The window's bandwidth-delay product takes its round trip from the
// queue it makes at the server once the shortest round trip expires:
// TestRedteam13WindowShrinksWhenItsOwnQueueSetsTheRoundTrip.) On the
// bubble's clock.
func TestRedteam13WindowAtAServerOf10PerSecond(t *testing.T) {
	const n = 900
	for _, cut := range []int{0, 600} {
		t.Run(fmt.Sprint("cut at ", cut), func(t *testing.T) {
			testkit.Bubble(t, func(t *testing.T) {
				got := &endsRead{}
				up := testkit.NewUpstream(t, (&fakesmtp.Session{Ext: []string{"PIPELINING", "CHUNKING"}, Enhanced: true, Answer: func(cmd fakesmtp.Cmd) ([]string, bool) {
					if cmd.Verb != "END" {
						return nil, false
					}
					if cut > 0 && cmd.Conn.N == 1 && cmd.Tx == cut {
						return []string{"CUT"}, true
					}
					got.add(cmd.Message)
					return []string{"~100ms", cmd.Honest}, true
				}}).Serve)
				s := testkit.NewRelay(t, &relaytest.Options{UpstreamAddr: up.Addr})
				c := testkit.NewClient(t, s, &mxrelay.Options{MaxEmailsPerSession: 2 * n, MaxQueueSize: n, BatchWait: time.Second, CommandTimeout: 10 * time.Minute, SessionTimeout: time.Hour})
				hs := enqueueW(t, c, n)
				most, unknown := 0, 0
				for i, h := range hs {
					res, _ := h.Wait(testkit.Ctx(t))
					if res == nil {
						t.Fatalf("w%d: no result", i)
					}
					if i >= 300 && (cut == 0 || i < cut-256) { // 30 s in (rttLife thrice over), and before the cut
						most = max(most, c.Stats().Window)
					}
					if got.once(t, fmt.Sprint("w", i), res) {
						unknown++
					}
				}
				assert.LessOrEqual(t, most, 64, "the window, 30 s in and on")
				if cut == 0 {
					assert.Zero(t, unknown)
				} else {
					assert.Positive(t, unknown, "the cut left the window's unanswered emails unknown")
					assert.LessOrEqual(t, unknown, 64, "unknown after the cut")
				}
			})
		})
	}
}

// enqueueW queues n emails, the i-th of subject w<i>, and returns their
// handles.
func enqueueW(t *testing.T, c *mxrelay.Client, n int) []*mxrelay.Handle {
	t.Helper()
	var hs []*mxrelay.Handle
	for i := range n {
		h, err := c.Enqueue(testkit.Mail(fmt.Sprint("w", i)))
		if err != nil {
			t.Fatal(err)
		}
		hs = append(hs, h)
	}
	return hs
}
