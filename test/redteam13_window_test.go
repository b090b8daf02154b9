package test

import (
	"fmt"
	"math"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"

	"github.com/mxrelay/mxrelay"
	"github.com/mxrelay/mxrelay/internal/fakesmtp"
	"github.com/mxrelay/mxrelay/internal/testkit"
	"github.com/mxrelay/mxrelay/relaytest"
)

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
				var mu sync.Mutex
				got := map[string]int{}
				up := testkit.NewUpstream(t, (&fakesmtp.Session{Ext: []string{"PIPELINING", "CHUNKING"}, Enhanced: true, Answer: func(cmd fakesmtp.Cmd) ([]string, bool) {
					if cmd.Verb != "END" {
						return nil, false
					}
					if cut > 0 && cmd.Conn.N == 1 && cmd.Tx == cut {
						return []string{"CUT"}, true
					}
					mu.Lock()
					got[testkit.SubjectOf([]byte(cmd.Message))]++
					mu.Unlock()
					return []string{"~100ms", cmd.Honest}, true
				}}).Serve)
				s := testkit.NewRelay(t, &relaytest.Options{UpstreamAddr: up.Addr})
				c := testkit.NewClient(t, s, &mxrelay.Options{MaxEmailsPerSession: 2 * n, MaxQueueSize: n, BatchWait: time.Second, CommandTimeout: 10 * time.Minute, SessionTimeout: time.Hour})
				var hs []*mxrelay.Handle
				for i := range n {
					h, err := c.Enqueue(testkit.Mail(fmt.Sprint("w", i)))
					if err != nil {
						t.Fatal(err)
					}
					hs = append(hs, h)
				}
				most, unknown := 0, 0
				for i, h := range hs {
					res, _ := h.Wait(testkit.Ctx(t))
					if res == nil {
						t.Fatalf("w%d: no result", i)
					}
					if i >= 300 && (cut == 0 || i < cut-256) { // 30 s in (rttLife thrice over), and before the cut
						most = max(most, c.Stats().Window)
					}
					subject := fmt.Sprint("w", i)
					mu.Lock()
					k := got[subject]
					mu.Unlock()
					switch res.Outcome {
					case mxrelay.OutcomeDelivered:
						assert.Equal(t, 1, k, "%s delivered: once upstream", subject)
					case mxrelay.OutcomeUnknown:
						unknown++
						assert.LessOrEqual(t, k, 1, "%s unknown: never sent again", subject)
					default:
						t.Errorf("%s: %v, %v", subject, res.Outcome, res.Err)
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
