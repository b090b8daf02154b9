package test

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mxrelay/mxrelay"
	"github.com/mxrelay/mxrelay/internal/fakesmtp"
	"github.com/mxrelay/mxrelay/internal/testkit"
	"github.com/mxrelay/mxrelay/relaytest"
)

// Red team, fourth round: the confirmation that now often waits for QUIT.

// rt4Style is how an honest server words its replies.
type rt4Style struct {
	name string
	word func(verb string) string // nil: rt2Server's Postfix-worded honest replies
}

var rt4Styles = []rt4Style{
	{"go-smtp", goSMTPStyle},
	{"Postfix", nil},
}

// reply is srv's honest reply to verb, worded in style st.
func (st rt4Style) reply(srv *rt2Server, verb string) string {
	if st.word != nil {
		return st.word(verb)
	}
	return srv.honest(verb)
}

// rt4EachStyle runs f, in parallel and in a Bubble (rtRun), as the
// subtest "<style>/<mode>" for each style of rt4Styles and each of modes.
func rt4EachStyle(t *testing.T, modes []rtMode, f func(t *testing.T, st rt4Style, m rtMode)) {
	for _, st := range rt4Styles {
		for _, m := range modes {
			rtRun(t, st.name+"/"+m.Name, func(t *testing.T) { f(t, st, m) })
		}
	}
}

// rt4Hook makes srv answer in style st, with over (if not nil) taking a
// command first: its lines, ok=true, replace the honest reply.
func rt4Hook(srv *rt2Server, st rt4Style, over func(c rt2Cmd) ([]string, bool)) {
	srv.enhanced = true
	srv.hook = func(c rt2Cmd) ([]string, bool) {
		if over != nil {
			if lines, ok := over(c); ok {
				return lines, true
			}
		}
		if st.word == nil {
			return nil, false
		}
		lines := []string{st.word(c.verb)}
		if c.verb == "END" {
			lines = append(lines, "KEEP")
		}
		return lines, true
	}
}

// rt4SlowEnds makes srv answer in style st, each end of data after delay
// (a "~" line), and keep it.
func rt4SlowEnds(srv *rt2Server, st rt4Style, delay string) {
	rt4Hook(srv, st, func(c rt2Cmd) ([]string, bool) {
		if c.verb == "END" {
			return []string{delay, st.reply(srv, "END"), "KEEP"}, true
		}
		return nil, false
	})
}

// rt4Result is what became of one email, and when since the first was
// enqueued (rt4SendAll).
type rt4Result struct {
	rt3Outcome
	took time.Duration
}

func (r rt4Result) String() string {
	return fmt.Sprintf("email %s: err=%v maybe=%v kept=%d took=%v", r.subj, r.err, r.maybe, r.kept, r.took.Round(10*time.Millisecond))
}

// rt4Tally reports each broken promise of results as an error and counts
// the honestly kept emails that did not end delivered (the honest-server
// problem).
func rt4Tally(t *testing.T, rs []rt4Result) (keptNotDelivered int) {
	t.Helper()
	var broken []string
	for _, r := range rs {
		if b := r.broken(r.String()); b != "" {
			broken = append(broken, b)
		} else if r.kept == 1 && r.err != nil {
			keptNotDelivered++
		}
	}
	for _, b := range broken {
		t.Error(b)
	}
	return keptNotDelivered
}

// HONEST-SERVER PROBLEM (and a promise about cancelled Sends). With
// go-smtp-worded replies (relaytest's own upstream: 2.0.0 to every
// command) nothing but QUIT's 221 (or, with DATA, the next 354) confirms a
// 2xx to an end of data. An email A answered 250 (kept) therefore waits
// for the emails queued behind it in the same session. Send's doc: a
// cancelled Send returns "when the upstream answers it ... one that
// answers slowly the emails ahead of it in the window delays it by as
// much". Here A's Send has a 400 ms context; A is answered at once; the
// email behind it (B) is answered after 3 s (a slow content filter). A's
// Send returns only after B's reply: delayed by an email *behind* it.
// Postfix-worded: B's RSET (2.0.0) confirms A at once.
//
// What was done: no reply between A's and B's can confirm A (replies come
// in order, and go-smtp's RSET reads like MAIL), so nothing can make A
// sure sooner but a wrong guess. The cancel now makes the session take no
// more emails and end with QUIT (C, enqueued after the cancel, goes in
// another session), and Send's doc says a cancelled Send waits for the
// reply that confirms it, after the emails already in flight. Held here:
// A delivered, not maybe, by QUIT's 221 right after B's reply.
func TestRedTeam4CancelledSendWaitsForEmailsBehindIt(t *testing.T) {
	rt4EachStyle(t, fakesmtp.EngineModes, func(t *testing.T, st rt4Style, m rtMode) {
		srv := &rt2Server{ext: m.Ext}
		rt4Hook(srv, st, func(c rt2Cmd) ([]string, bool) {
			if c.conn == 1 && c.tx == 2 && c.verb == "END" {
				return []string{"~3s", st.reply(srv, "END"), "KEEP"}, true
			}
			return nil, false
		})
		s := rtRelay(t, srv.serve)
		c := testkit.NewClient(t, s, &mxrelay.Options{MaxEmailsPerSession: 5, BatchWait: 100 * time.Millisecond,
			CommandTimeout: 6 * time.Second})
		type out struct {
			res  *mxrelay.Result
			err  error
			took time.Duration
		}
		done := make(chan out, 1)
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), 400*time.Millisecond)
			defer cancel()
			start := time.Now()
			res, err := c.Send(ctx, testkit.Mail("one"), mxrelay.WithRetries(0))
			done <- out{res, err, time.Since(start)}
		}()
		synctest.Wait() // A is queued, its session waits out BatchWait
		hb, err := c.Enqueue(testkit.Mail("two"), mxrelay.WithRetries(0))
		require.NoError(t, err)
		time.Sleep(600 * time.Millisecond) // A's context has ended
		hc, err := c.Enqueue(testkit.Mail("three"), mxrelay.WithRetries(0))
		require.NoError(t, err)
		o := <-done
		require.NotNil(t, o.res)
		t.Logf("A: err=%v maybe=%v took=%v; kept %d", o.err, o.res.MaybeDelivered, o.took.Round(10*time.Millisecond), srv.keptN("one"))
		resB, _ := hb.Wait(testkit.Ctx(t))
		resC, _ := hc.Wait(testkit.Ctx(t))
		if st.word == nil { // Postfix-worded: B's RSET confirms A at once
			assert.Less(t, o.took, 1500*time.Millisecond, "confirmed by B's RSET, yet A's Send waited")
		}
		assert.Less(t, o.took, 4500*time.Millisecond, "A waited past the reply that confirms it")
		assert.NoError(t, o.err, "A was kept by an honest server")
		assert.False(t, o.res.MaybeDelivered)
		if o.took > 400*time.Millisecond {
			// A's context ended while A waited for confirmation (in
			// the BDAT modes; with DATA, B's 354 confirmed A first).
			assert.NotEqual(t, resB.SessionID, resC.SessionID, "the session took an email after A's Send was cancelled")
		}
	})
}

// HONEST-SERVER PROBLEM. SessionTimeout ends a long session of an honest
// but slow server (120 ms per end of data). With go-smtp-worded replies
// every email answered 250 since the session began is still unconfirmed
// (only the 221 would confirm it): all of them end unknown, failed with
// MaybeDelivered, though the server kept each once. Postfix-worded: each
// next RSET confirms, and at most the email in flight is unknown.
func TestRedTeam4SessionTimeoutMakesHonestDeliveriesUnknown(t *testing.T) {
	rt4EachStyle(t, fakesmtp.EngineModes, func(t *testing.T, st rt4Style, m rtMode) {
		srv := &rt2Server{ext: m.Ext}
		rt4SlowEnds(srv, st, "~120ms")
		c := testkit.NewClient(t, rtRelay(t, srv.serve), &mxrelay.Options{MaxEmailsPerSession: 100, BatchWait: 100 * time.Millisecond,
			SessionTimeout: 1500 * time.Millisecond, CommandTimeout: 3 * time.Second})
		bad := rt4Tally(t, rt4SendAll(t, c, srv, 24, 0))
		t.Logf("%s/%s: %d emails kept by the server but not reported delivered", st.name, m.Name, bad)
		assert.LessOrEqual(t, bad, 1, "a SessionTimeout turned honest deliveries unknown")
	})
}

// rt4SendAll enqueues n emails ("e0".."e<n-1>") with retries, waits for
// each, and reports them.
func rt4SendAll(t *testing.T, c *mxrelay.Client, srv *rt2Server, n, retries int, opts ...mxrelay.SendOption) []rt4Result {
	t.Helper()
	subjs := rtNumbered("e", n)
	start := time.Now()
	hs := rtEnqueue(t, c, subjs, rtMailTo(), append([]mxrelay.SendOption{mxrelay.WithRetries(retries)}, opts...)...)
	var rs []rt4Result
	rtWait(t, srv, subjs, hs, func(o rt3Outcome, _ *mxrelay.Result) {
		r := rt4Result{o, time.Since(start)}
		if r.err != nil || r.maybe || r.kept != 1 {
			t.Log(r)
		}
		rs = append(rs, r)
	})
	return rs
}

// HONEST-SERVER PROBLEM, fixed. Close(ctx) whose context ends while a
// session runs: with go-smtp-worded replies every email answered 250 in
// that session was unconfirmed and ended failed, MaybeDelivered, though
// the server kept it (Postfix-worded, the RSETs confirmed them). Now the
// session takes no more, gives the replies in flight up to a second past
// Close's deadline, and QUITs: its 221 confirms them. (A window that needs
// longer than that to drain is still cut, and its 250s stay unknown: the
// 221 can only come after every reply before it.)
func TestRedTeam4CloseCtxMakesHonestDeliveriesUnknown(t *testing.T) {
	rt4EachStyle(t, fakesmtp.EngineModes, func(t *testing.T, st rt4Style, m rtMode) {
		srv := &rt2Server{ext: m.Ext}
		rt4SlowEnds(srv, st, "~20ms")
		s := rtRelay(t, srv.serve)
		c, err := mxrelay.New(s.URL, s.APIKey, testkit.ClientOptions(s, &mxrelay.Options{MaxEmailsPerSession: 100, BatchWait: 50 * time.Millisecond}))
		require.NoError(t, err)
		subjs := rtNumbered("e", 30)
		hs := rtEnqueue(t, c, subjs, rtMailTo(), mxrelay.WithRetries(2))
		time.Sleep(300 * time.Millisecond) // on the bubble's clock: Close comes mid-run
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Millisecond)
		defer cancel()
		start := time.Now()
		_ = c.Close(ctx)
		assert.Less(t, time.Since(start), 2*time.Second)
		var rs []rt4Result
		rtWait(t, srv, subjs, hs, func(o rt3Outcome, _ *mxrelay.Result) { rs = append(rs, rt4Result{rt3Outcome: o}) })
		bad := rt4Tally(t, rs)
		t.Logf("%s/%s: %d emails kept but not reported delivered", st.name, m.Name, bad)
		assert.LessOrEqual(t, bad, 1, "Close(ctx) turned honest deliveries unknown")
	})
}

// HONEST-SERVER PROBLEM. Lock-step: cancelling email B while its
// envelope is out closes the channel (session.withdraw). Email A before
// it, answered 250 and kept, was not yet confirmed with go-smtp-worded
// replies (B's RSET proves nothing; only a 354 or the 221 would): A ends
// unknown because of another email's cancel.
func TestRedTeam4LockstepCancelMakesPreviousUnknown(t *testing.T) {
	rt4EachStyle(t, fakesmtp.EngineModes[2:], func(t *testing.T, st rt4Style, m rtMode) {
		srv := &rt2Server{ext: m.Ext}
		rcptB := make(chan struct{}, 1)
		rt4Hook(srv, st, func(c rt2Cmd) ([]string, bool) {
			if c.conn == 1 && c.tx == 2 && c.verb == "RCPT" {
				rcptB <- struct{}{}
				return []string{"~1s", st.reply(srv, "RCPT")}, true
			}
			return nil, false
		})
		s := rtRelay(t, srv.serve)
		c := testkit.NewClient(t, s, &mxrelay.Options{MaxEmailsPerSession: 5, BatchWait: 100 * time.Millisecond})
		ha, err := c.Enqueue(testkit.Mail("one"), mxrelay.WithRetries(0))
		require.NoError(t, err)
		hb, err := c.Enqueue(testkit.Mail("two"), mxrelay.WithRetries(0))
		require.NoError(t, err)
		select {
		case <-rcptB:
		case <-time.After(5 * time.Second):
			t.Fatal("no RCPT of email two")
		}
		hb.Cancel()
		resA, errA := ha.Wait(testkit.Ctx(t))
		_, errB := hb.Wait(testkit.Ctx(t))
		t.Logf("A: err=%v maybe=%v kept=%d; B: err=%v", errA, resA.MaybeDelivered, srv.keptN("one"), errB)
		assert.ErrorIs(t, errB, mxrelay.ErrCanceled)
		require.Equal(t, 1, srv.keptN("one"))
		assert.NoError(t, errA, "A, kept by an honest server, ends unknown because B was cancelled")
	})
}

// Honest run: 40 sequential Sends through relaytest (go-smtp) in each
// mode: all delivered, none maybe, none slow.
func TestRedTeam4SequentialHonestRelaytest(t *testing.T) {
	modes := []struct {
		name string
		hide []string
	}{
		{"pipelined BDAT", nil},
		{"pipelined DATA", []string{"CHUNKING"}},
		{"lock-step BDAT", []string{"PIPELINING"}},
		{"lock-step DATA", []string{"PIPELINING", "CHUNKING"}},
	}
	for _, m := range modes {
		t.Run(m.name, func(t *testing.T) {
			t.Parallel()
			s := testkit.NewRelay(t, &relaytest.Options{HideExtensions: m.hide})
			c := testkit.NewClient(t, s, nil)
			var worst time.Duration
			for i := range 40 {
				start := time.Now()
				res, err := c.Send(testkit.Ctx(t), testkit.Mail(fmt.Sprint("s", i)))
				d := time.Since(start)
				worst = max(worst, d)
				require.NoError(t, err)
				require.False(t, res.MaybeDelivered)
			}
			assert.Len(t, s.Mailbox(), 40)
			t.Logf("%s: slowest Send %v; sessions %d", m.name, worst, c.Stats().SessionsCompleted)
			assert.Less(t, worst, time.Second)
		})
	}
}

// Concurrent honest run: 200 emails from 20 goroutines, two concurrent
// sessions, relaytest (go-smtp): all delivered once, none maybe.
func TestRedTeam4ConcurrentSessionsHonest(t *testing.T) {
	for _, hide := range [][]string{nil, {"CHUNKING"}, {"PIPELINING"}, {"PIPELINING", "CHUNKING"}} {
		t.Run(strings.Join(hide, "+"), func(t *testing.T) {
			t.Parallel()
			s := testkit.NewRelay(t, &relaytest.Options{HideExtensions: hide})
			c := testkit.NewClient(t, s, &mxrelay.Options{MaxConcurrentSessions: 3, MaxEmailsPerSession: 7})
			var wg sync.WaitGroup
			var mu sync.Mutex
			var bad []string
			for g := range 20 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for i := range 10 {
						subj := fmt.Sprint("g", g, "-", i)
						res, err := c.Send(testkit.Ctx(t), testkit.Mail(subj))
						if err != nil || res.MaybeDelivered {
							mu.Lock()
							bad = append(bad, fmt.Sprintf("%s: err=%v maybe=%v", subj, err, res != nil && res.MaybeDelivered))
							mu.Unlock()
						}
					}
				}()
			}
			wg.Wait()
			assert.Empty(t, bad)
			seen := map[string]int{}
			for _, sj := range testkit.Subjects(s) {
				seen[sj]++
			}
			assert.Len(t, seen, 200)
			for sj, n := range seen {
				assert.Equal(t, 1, n, sj)
			}
		})
	}
}

// HONEST-SERVER PROBLEM, its cost with RetryUnknown: the emails a
// SessionTimeout left unconfirmed (go-smtp-worded, pipelined BDAT) are
// sent again and the honest server holds two copies of each. Each is
// flagged MaybeDelivered (the promise holds); the duplicates are counted.
func TestRedTeam4SessionTimeoutRetryUnknownDuplicates(t *testing.T) {
	testkit.Bubble(t, testRedTeam4SessionTimeoutRetryUnknownDuplicates)
}

func testRedTeam4SessionTimeoutRetryUnknownDuplicates(t *testing.T) {
	srv := &rt2Server{ext: fakesmtp.EngineModes[0].Ext}
	rt4SlowEnds(srv, rt4Styles[0], "~120ms")
	c := testkit.NewClient(t, rtRelay(t, srv.serve), &mxrelay.Options{MaxEmailsPerSession: 100, BatchWait: 100 * time.Millisecond,
		SessionTimeout: 1500 * time.Millisecond, CommandTimeout: 3 * time.Second, RetryUnknown: true})
	rs := rt4SendAll(t, c, srv, 16, 2)
	dups := 0
	for _, r := range rs {
		if r.kept > 1 {
			dups++
			assert.True(t, r.maybe, "kept twice, not flagged: %v", r)
		}
	}
	t.Logf("%d of %d emails kept twice by an honest server", dups, len(rs))
	assert.Zero(t, dups, "an honest server got duplicates")
}

// QUIT answered otherwise than 221 after the last email (250, an address
// status, 421, a 5xx, no reply, a hang), the last email's end of data
// answered 250 (kept) or 554 (not kept), in each mode. Held.
func TestRedTeam2QuitAnsweredOddly(t *testing.T) {
	for _, m := range fakesmtp.EngineModes {
		for _, last := range []string{"250 2.0.0 queued", "554 5.7.1 refused"} {
			for _, quit := range [][]string{{"250 2.0.0 ok"}, {"250 2.1.5 ok"}, {"421 4.3.2 bye"}, {"500 5.5.1 what"}, {"CUT"}, {"HANG"}, {"250 2.0.0 ok", "221 2.0.0 bye"}} {
				t.Run(fmt.Sprint(m.Name, "/", last[:3], "/", quit), func(t *testing.T) {
					t.Parallel()
					srv := &rt2Server{ext: m.Ext, enhanced: true}
					srv.hook = func(c rt2Cmd) ([]string, bool) {
						switch {
						case c.conn == 1 && c.verb == "QUIT":
							return quit, true
						case c.conn == 1 && c.verb == "END" && c.tx == 3:
							if last[0] == '2' {
								return []string{last, "KEEP"}, true
							}
							return []string{last}, true
						}
						return nil, false
					}
					for _, b := range rt2Run(t, srv, nil) {
						t.Error(b)
					}
				})
			}
		}
	}
}

// A 421, or a cut, right after QUIT is written, before the 221: the
// results before it must not be wrong; with SpoolDir and RetryUnknown,
// an email sent again says MaybeDelivered.
func TestRedTeam4QuitAnswered421OrCut(t *testing.T) {
	for _, q := range []string{"421", "CUT"} {
		for _, st := range rt4Styles {
			for _, m := range fakesmtp.EngineModes {
				for _, ru := range []bool{false, true} {
					t.Run(fmt.Sprint(q, "/", st.name, "/", m.Name, "/RetryUnknown=", ru), func(t *testing.T) {
						t.Parallel()
						srv := &rt2Server{ext: m.Ext}
						rt4Hook(srv, st, func(c rt2Cmd) ([]string, bool) {
							if c.conn == 1 && c.verb == "QUIT" {
								if q == "421" {
									return []string{"421 4.3.2 shutting down", "CUT"}, true
								}
								return []string{"CUT"}, true
							}
							return nil, false
						})
						for _, b := range rt2Run(t, srv, &mxrelay.Options{SpoolDir: t.TempDir(), RetryUnknown: ru}) {
							t.Error(b)
						}
					})
				}
			}
		}
	}
}
