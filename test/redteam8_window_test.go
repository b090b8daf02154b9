package test

import (
	"fmt"
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
// attempt, in one session. On the bubble's clock.
func TestRedteam8AdaptiveWindowSlowThenFast(t *testing.T) {
	const n = 400
	for _, tc := range []struct {
		name string
		slow func(tx int) bool
	}{
		{"fast, slow, fast", func(tx int) bool { return tx > n/4 && tx <= n/2 }},
		{"slow, fast, slow", func(tx int) bool { return tx <= n/4 || tx > 3*n/4 }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			testkit.Bubble(t, func(t *testing.T) {
				var ends atomic.Int64
				up := testkit.NewUpstream(t, (&fakesmtp.Session{Ext: []string{"PIPELINING", "CHUNKING"}, Enhanced: true, Answer: func(cmd fakesmtp.Cmd) ([]string, bool) {
					if cmd.Verb != "END" {
						return nil, false
					}
					ends.Add(1)
					if tc.slow(cmd.Tx) {
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
				for i, res := range testkit.Results(t, hs) {
					assert.Equal(t, mxrelay.OutcomeDelivered, res.Outcome, "w%d: %v", i, res.Err)
					assert.Equal(t, 1, res.Attempts, "w%d", i)
				}
				assert.EqualValues(t, n, ends.Load())
				assert.Equal(t, 1, rec.Count(mxrelay.EventSessionStarted), "one session")
			})
		})
	}
}
