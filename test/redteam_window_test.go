package test

import (
	"fmt"
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
				var mu sync.Mutex
				got := map[string]int{} // ends of data read, by subject
				up := testkit.NewUpstream(t, (&fakesmtp.Session{Ext: []string{"PIPELINING", "CHUNKING"}, Enhanced: true, Answer: func(cmd fakesmtp.Cmd) ([]string, bool) {
					if cmd.Verb != "END" {
						return nil, false
					}
					if tc.cut > 0 && cmd.Conn.N == 1 && cmd.Tx == tc.cut {
						return []string{"CUT"}, true
					}
					ends.Add(1)
					mu.Lock()
					got[testkit.SubjectOf([]byte(cmd.Message))]++
					mu.Unlock()
					if tc.slow(cmd.Tx) && cmd.Conn.N == 1 {
						return []string{"~20ms", cmd.Honest}, true
					}
					return nil, false
				}}).Serve)
				s := testkit.NewRelay(t, &relaytest.Options{UpstreamAddr: up.Addr})
				rec := &testkit.Recorder{}
				c := testkit.NewClient(t, s, &mxrelay.Options{MaxEmailsPerSession: n, MaxQueueSize: n, BatchWait: time.Second, CommandTimeout: time.Minute, OnEvent: rec.On})
				var hs []*mxrelay.Handle
				for i := range n {
					h, err := c.Enqueue(testkit.Mail(fmt.Sprint("w", i)))
					if err != nil {
						t.Fatal(err)
					}
					hs = append(hs, h)
				}
				unknown := 0
				for i, res := range testkit.Results(t, hs) {
					subject := fmt.Sprint("w", i)
					mu.Lock()
					k := got[subject]
					mu.Unlock()
					if tc.cut == 0 {
						assert.Equal(t, mxrelay.OutcomeDelivered, res.Outcome, "%s: %v", subject, res.Err)
						assert.Equal(t, 1, res.Attempts, subject)
						continue
					}
					switch res.Outcome {
					case mxrelay.OutcomeDelivered:
						assert.Equal(t, 1, k, "%s delivered: once upstream", subject)
					case mxrelay.OutcomeUnknown:
						unknown++
						assert.LessOrEqual(t, k, 1, "%s unknown: never sent again", subject)
						assert.Equal(t, 1, res.Attempts, subject)
					default:
						t.Errorf("%s: %v, %v", subject, res.Outcome, res.Err)
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
