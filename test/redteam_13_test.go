package test

import (
	"context"
	"fmt"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mxrelay/mxrelay"
	"github.com/mxrelay/mxrelay/internal/testkit"
	"github.com/mxrelay/mxrelay/relaytest"
)

// Red team 13: throttle feedback (ac8c22f) against hostile upstreams.

// retryLog records, per email, when each retry was scheduled.
type retryLog struct {
	mu     sync.Mutex
	times  map[string][]time.Time
	detail map[string][]string
}

func (l *retryLog) event(e mxrelay.Event) {
	if e.Type != mxrelay.EventEmailRetrying {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.times == nil {
		l.times = map[string][]time.Time{}
	}
	l.times[e.EmailID] = append(l.times[e.EmailID], e.Time)
	if l.detail == nil {
		l.detail = map[string][]string{}
	}
	l.detail[e.EmailID] = append(l.detail[e.EmailID], fmt.Sprintf("%s attempt %d delay %v: %v", e.Time.Format("15:04:05.000"), e.Attempt, e.Duration, e.Err))
}

// An upstream with a quota per minute (300 a minute, the rest 451 4.7.0)
// and 1,000 emails enqueued at once: the quota's window is full for most
// of each minute, and only the next minute can take the emails it
// refuses. An email refused only for the rate ("slow down", 4.7.0) has
// not been given a fair chance until its tries outlast that window: an
// email that fails with all its tries (free and retries) spent inside one
// window of the upstream spent its retries faster than the server allows
// (issue 13: "requeued without spending its retries faster than the
// server allows").
func TestRT9PerMinuteQuotaFailsNoEmailInsideOneWindow(t *testing.T) {
	testkit.Bubble(t, func(t *testing.T) {
		const n, limit = 1000, 300
		s := testkit.NewRelay(t, &relaytest.Options{
			Throttle: &relaytest.Throttle{Limit: limit, Per: time.Minute},
			Latency:  relaytest.Latency{ToServer: 5 * time.Millisecond, ToClient: 5 * time.Millisecond},
		})
		var rl retryLog
		// The library's own retry defaults (testkit shortens them).
		c := testkit.NewClient(t, s, &mxrelay.Options{MaxQueueSize: n, EventBuffer: 1 << 16, OnEvent: rl.event,
			RetryInterval: time.Second, MaxRetryInterval: time.Minute})
		var hs []*mxrelay.Handle
		for i := range n {
			h, err := c.Enqueue(testkit.Mail(fmt.Sprint("quota ", i)))
			require.NoError(t, err)
			hs = append(hs, h)
		}
		type fail struct {
			id       string
			attempts int
			span     time.Duration // first retry scheduled to the end
			err      error
		}
		var fails []fail
		for _, h := range hs {
			r, err := h.Wait(context.Background())
			if err == nil {
				continue
			}
			rl.mu.Lock()
			ts := rl.times[r.EmailID]
			rl.mu.Unlock()
			f := fail{id: r.EmailID, attempts: r.Attempts, err: err}
			if len(ts) > 0 {
				f.span = r.Queued.Add(r.Duration).Sub(ts[0])
			}
			fails = append(fails, f)
		}
		require.NoError(t, c.Close(context.Background()))
		sort.Slice(fails, func(i, j int) bool { return fails[i].span < fails[j].span })
		inside := 0
		for _, f := range fails {
			if f.span < time.Minute {
				inside++
			}
		}
		t.Logf("%d failed of %d (%d refused 451 by the upstream, %d cuts)", len(fails), n, s.Stats().Throttled, c.Stats().ThrottleCuts)
		for i, f := range fails {
			if i < 5 {
				t.Logf("failed %s after %d attempts, %v after its first refusal: %v", f.id, f.attempts, f.span.Round(time.Millisecond), f.err)
				if i == 0 {
					for _, d := range rl.detail[f.id] {
						t.Log(d)
					}
				}
			}
		}
		assert.Zero(t, inside, "emails failed with every try inside one minute of a per-minute quota")
		assert.Len(t, s.Mailbox(), n-len(fails), "no duplicate, none lost")
	})
}
