package test

import (
	"context"
	"fmt"
	"sort"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mxrelay/mxrelay"
	"github.com/mxrelay/mxrelay/internal/fakesmtp"
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

// While throttled to MinRate, workers wait for the limiter's tokens and
// sessions open ahead of them. Emails withdrawn (Cancel), emails whose
// own timeout runs out, and then Close with a short deadline, at those
// points: every email ends exactly once (one terminal event), those
// delivered are exactly what the upstream has, each with its own 250;
// the withdrawn ones fail with ErrCanceled, the timed-out ones with
// ErrTimeout, and the rest are handed back or failed, none unknown (no
// end of data went out unanswered: the upstream refuses at MAIL).
func TestRT9CancelTimeoutAndCloseWhileWaitingForTokens(t *testing.T) {
	testkit.Bubble(t, func(t *testing.T) {
		const n = 40
		s := testkit.NewRelay(t, &relaytest.Options{
			Throttle: &relaytest.Throttle{Limit: 5, Per: time.Hour},
			Latency:  relaytest.Latency{ToServer: 5 * time.Millisecond, ToClient: 5 * time.Millisecond},
		})
		var mu sync.Mutex
		ends := map[string]int{}
		c := testkit.NewClient(t, s, &mxrelay.Options{
			MaxQueueSize: n, MaxConcurrentSessions: 4, EventBuffer: 1 << 14,
			RetryInterval: time.Second, MaxRetryInterval: time.Minute,
			OnEvent: func(e mxrelay.Event) {
				if e.Type == mxrelay.EventEmailProcessed || e.Type == mxrelay.EventEmailFailed {
					mu.Lock()
					ends[e.Result.EmailID]++
					mu.Unlock()
				}
			},
		})
		var hs []*mxrelay.Handle
		for i := range n {
			var opts []mxrelay.SendOption
			if i >= 30 {
				opts = append(opts, mxrelay.WithTimeout(4*time.Second))
			}
			h, err := c.Enqueue(testkit.Mail(fmt.Sprint("token ", i)), opts...)
			require.NoError(t, err)
			hs = append(hs, h)
		}
		time.Sleep(3 * time.Second)
		rate, cuts := c.Stats().SendRate, c.Stats().ThrottleCuts
		require.Positive(t, cuts, "throttled by now")
		for _, h := range hs[10:20] {
			h.Cancel()
		}
		time.Sleep(5 * time.Second)
		ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
		c.Close(ctx)
		cancel()
		delivered := 0
		for i, h := range hs {
			r, err := h.Wait(context.Background())
			switch {
			case r.Outcome == mxrelay.OutcomeDelivered:
				delivered++
				assert.NoError(t, err)
				assert.Equal(t, 250, r.Reply.Code, "delivered on its own 250")
			case i >= 10 && i < 20:
				assert.ErrorIs(t, err, mxrelay.ErrCanceled, "email %d: %v", i, r.Outcome)
			case i >= 30:
				assert.ErrorIs(t, err, mxrelay.ErrTimeout, "email %d: %v", i, r.Outcome)
			default:
				assert.Contains(t, []mxrelay.Outcome{mxrelay.OutcomeHandedBack, mxrelay.OutcomeFailed}, r.Outcome, "email %d: %v", i, err)
			}
			assert.NotEqual(t, mxrelay.OutcomeUnknown, r.Outcome, "email %d", i)
		}
		assert.Equal(t, 5, delivered)
		assert.Len(t, s.Mailbox(), delivered)
		mu.Lock()
		defer mu.Unlock()
		assert.Len(t, ends, n, "every email ended")
		for id, k := range ends {
			assert.Equal(t, 1, k, "email %s ended %d times", id, k)
		}
		st := c.Stats()
		assert.EqualValues(t, n, st.EmailsDelivered+st.EmailsFailed)
		t.Logf("rate %v after %d cuts at 3 s; %d refused; stats %+v", rate, cuts, s.Stats().Throttled, st)
	})
}

// A 421 4.7.0 to the third MAIL of the first connection, mid-pipeline,
// closing it. The emails before it had their end of data out: each is
// delivered (its 250 confirmed) or unknown; the rest were refused for the
// rate or never read, go again free, and are delivered on the next
// connections. No email fails, none is delivered twice, and the emails
// delivered or unknown are exactly the ends of data the upstream read.
func TestRT9MidPipeline421(t *testing.T) {
	for _, m := range fakesmtp.EngineModes {
		t.Run(m.Name, func(t *testing.T) {
			var ends atomic.Int64
			up := fakesmtp.Listen(t, func(c *fakesmtp.Conn) {
				(&fakesmtp.Session{Ext: m.Ext, Enhanced: true, Answer: func(cmd fakesmtp.Cmd) ([]string, bool) {
					switch {
					case cmd.Verb == "END":
						ends.Add(1)
					case c.N == 1 && cmd.Verb == "MAIL" && cmd.Tx == 3:
						return []string{"421 4.7.0 Too many messages, slow down", "CUT"}, true
					}
					return nil, false
				}}).Serve(c)
			})
			s := testkit.NewRelay(t, &relaytest.Options{UpstreamAddr: up.Addr})
			// A high MinRate: the pacing after the cut takes no real seconds.
			c := testkit.NewClient(t, s, &mxrelay.Options{Throttle: mxrelay.Throttle{MinRate: 50}})
			const n = 10
			var hs []*mxrelay.Handle
			for i := range n {
				h, err := c.Enqueue(testkit.Mail(fmt.Sprint("mid ", i)))
				require.NoError(t, err)
				hs = append(hs, h)
			}
			delivered, unknown := 0, 0
			for i, h := range hs {
				r, err := h.Wait(context.Background())
				switch r.Outcome {
				case mxrelay.OutcomeDelivered:
					delivered++
					assert.Equal(t, 250, r.Reply.Code)
				case mxrelay.OutcomeUnknown:
					unknown++
					assert.True(t, r.MaybeDelivered)
				default:
					t.Errorf("email %d: %v: %v", i, r.Outcome, err)
				}
			}
			require.NoError(t, c.Close(context.Background()))
			assert.Equal(t, n, delivered+unknown)
			assert.LessOrEqual(t, unknown, 2, "only the two ends of data before the 421")
			assert.EqualValues(t, n, ends.Load(), "each email's end of data read once")
			assert.EqualValues(t, 1, c.Stats().ThrottleCuts)
		})
	}
}
