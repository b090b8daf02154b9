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

// An upstream that throttles forever, with each way of saying so: every
// email still ends, failed with the upstream's refusal, after its free
// tries and its retries (maxFreeTries 8 + 1 + Retries 3), none delivered;
// and after the first cut the client sends at MinRate, not faster: the
// refusals are the first session's blast and then about one a second.
func TestRT9ThrottleForeverEveryEmailEnds(t *testing.T) {
	for _, reply := range []string{
		"451 4.7.0 Throttling: too many messages, slow down",
		"421 4.7.0 Too many connections, slow down",
		"454 Throttling failure: Maximum sending rate exceeded.",
		"554 5.7.0 Too many emails per second",
	} {
		t.Run(reply[:3], func(t *testing.T) {
			testkit.Bubble(t, func(t *testing.T) {
				const n = 20
				s := testkit.NewRelay(t, &relaytest.Options{
					Throttle: &relaytest.Throttle{Limit: 0, Per: time.Hour, Reply: reply},
					Latency:  relaytest.Latency{ToServer: 5 * time.Millisecond, ToClient: 5 * time.Millisecond},
				})
				c := testkit.NewClient(t, s, &mxrelay.Options{MaxQueueSize: n, RetryInterval: time.Second, MaxRetryInterval: time.Minute})
				start := time.Now()
				var hs []*mxrelay.Handle
				for i := range n {
					h, err := c.Enqueue(testkit.Mail(fmt.Sprint("forever ", i)))
					require.NoError(t, err)
					hs = append(hs, h)
				}
				for _, h := range hs {
					r, err := h.Wait(context.Background())
					require.Error(t, err)
					assert.Equal(t, mxrelay.OutcomeFailed, r.Outcome)
					var se *mxrelay.SMTPError
					assert.ErrorAs(t, err, &se)
					assert.Equal(t, 12, r.Attempts, "8 free tries, the first, 3 retries")
				}
				elapsed := time.Since(start)
				require.NoError(t, c.Close(context.Background()))
				st := c.Stats()
				assert.EqualValues(t, n, st.EmailsFailed)
				assert.Zero(t, st.EmailsDelivered)
				assert.Empty(t, s.Mailbox())
				refused := s.Stats().Throttled
				t.Logf("%d refusals in %v, %d cuts", refused, elapsed, st.ThrottleCuts)
				if reply[:3] == "421" {
					// A 421 ends the session: the emails pipelined behind
					// the refused one end their attempt with it, unread.
					assert.LessOrEqual(t, refused, n*12)
					assert.Positive(t, refused)
				} else {
					assert.Equal(t, n*12, refused, "every attempt refused")
				}
				assert.LessOrEqual(t, float64(refused), 10+1.1*elapsed.Seconds(), "at MinRate after the first blast")
			})
		})
	}
}
