package test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mxrelay/mxrelay"
	"github.com/mxrelay/mxrelay/internal/fakesmtp"
	"github.com/mxrelay/mxrelay/internal/smtpsink"
	"github.com/mxrelay/mxrelay/internal/testkit"
	"github.com/mxrelay/mxrelay/relaytest"
)

// Red team, round 7: the warm sessions. A Postfix-worded scripted
// upstream (MAIL 2.1.0, RCPT 2.1.5, NOOP 2.0.0: a NOOP's 250 confirms)
// lets a session linger; the tests end it from the far end while it
// lingers and while an email is in flight, and look for an email that
// waits for Linger.

// rt7Warm is an rt2Server worded as Postfix, behind a relay, whose
// upstream connections the test can reach to write to them while a
// session lingers.
type rt7Warm struct {
	srv   *rt2Server
	relay *relaytest.Server
	mu    sync.Mutex
	conns []*fakesmtp.Conn
}

func newRT7Warm(t *testing.T, hook func(c rt2Cmd) ([]string, bool)) *rt7Warm {
	t.Helper()
	w := &rt7Warm{srv: &rt2Server{ext: []string{"PIPELINING", "CHUNKING"}, enhanced: true, hook: hook}}
	u := testkit.NewUpstream(t, func(c *fakesmtp.Conn) {
		w.mu.Lock()
		w.conns = append(w.conns, c)
		w.mu.Unlock()
		w.srv.serve(c)
	})
	w.relay = testkit.NewRelay(t, &relaytest.Options{UpstreamAddr: u.Addr})
	return w
}

// rt7On is a hook for the first connection: do gives the lines that
// answer verb (it may block the server first); nil answers honestly.
func rt7On(verb string, do func() []string) func(c rt2Cmd) ([]string, bool) {
	return func(c rt2Cmd) ([]string, bool) {
		if c.conn != 1 || c.verb != verb {
			return nil, false
		}
		l := do()
		return l, l != nil
	}
}

// rt7Hang is rt7On's do for a command never answered: it signals sig.
func rt7Hang(sig chan<- struct{}) func() []string {
	return func() []string {
		sig <- struct{}{}
		return []string{"HANG"}
	}
}

// last is the upstream connection opened last.
func (w *rt7Warm) last() *fakesmtp.Conn {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.conns[len(w.conns)-1]
}

// inject writes line to the upstream connection opened last, from the
// test's goroutine (not through upConn, whose count is the server's).
func (w *rt7Warm) inject(line string) {
	w.last().NetConn().Write([]byte(line + "\r\n"))
}

func (w *rt7Warm) sessions() int {
	w.srv.mu.Lock()
	defer w.srv.mu.Unlock()
	return w.srv.conns
}

// rt7Events counts the events of a client and hands on the ends of its
// sessions.
type rt7Events struct {
	mu     sync.Mutex
	n      map[mxrelay.EventType]int
	failed []error
	ended  chan mxrelay.Event // EventSessionCompleted and EventSessionFailed
	lost   int                // ends not handed on: ended was full
}

func newRT7Events() *rt7Events {
	return &rt7Events{n: map[mxrelay.EventType]int{}, ended: make(chan mxrelay.Event, 64)}
}

func (r *rt7Events) on(e mxrelay.Event) {
	r.mu.Lock()
	r.n[e.Type]++
	if e.Type == mxrelay.EventSessionFailed {
		r.failed = append(r.failed, e.Err)
	}
	if e.Type == mxrelay.EventSessionCompleted || e.Type == mxrelay.EventSessionFailed {
		// Never blocks: a test that reads only the first ends must not
		// hold up the client's events (and its Close) when many sessions
		// end, as when a test enqueues in a loop until Close has begun.
		select {
		case r.ended <- e:
		default:
			r.lost++
		}
	}
	r.mu.Unlock()
}

func (r *rt7Events) count(t mxrelay.EventType) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.n[t]
}

// next is the next end of a session.
func (r *rt7Events) next(t *testing.T) mxrelay.Event {
	t.Helper()
	select {
	case e := <-r.ended:
		return e
	case <-testkit.Ctx(t).Done():
		r.mu.Lock()
		lost := r.lost
		r.mu.Unlock()
		t.Fatalf("no session ended (%d ends not kept: more than %d unread)", lost, cap(r.ended))
		return mxrelay.Event{}
	}
}

// The far end ends a session that lingers with every email answered: an
// unsolicited 421 (the upstream's idle timeout), a cut (the relay's
// SMTP_CHANNEL_CLOSED), a stray line, a relay restart (close 1012), or a
// 421 written with the NOOP's 250, before the session is back to waiting.
// No email is touched; the session is not a failure; the next Send opens
// another session at once, without a backoff, and is delivered.
func TestRT7FarEndEndsALingeringSession(t *testing.T) {
	for _, tc := range []struct {
		name  string
		noop  []string // the NOOP's reply lines; nil: honest
		event func(w *rt7Warm)
	}{
		{name: "unsolicited 421", event: func(w *rt7Warm) {
			w.inject("421 4.4.2 mx.test Error: timeout exceeded")
			w.last().Close()
		}},
		{name: "upstream cut", event: func(w *rt7Warm) { w.last().Close() }},
		{name: "stray line", event: func(w *rt7Warm) { w.inject("250 2.0.0 Ok") }},
		{name: "relay restart", event: func(w *rt7Warm) { w.relay.CloseClientConnections() }},
		{name: "421 with the NOOP's 250", noop: []string{"250 2.0.0 Ok", "421 4.4.2 closing", "CUT"}},
		{name: "cut after the NOOP's 250", noop: []string{"250 2.0.0 Ok", "CUT"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := newRT7Warm(t, rt7On("NOOP", func() []string { return tc.noop }))
			ev := newRT7Events()
			c := testkit.NewClient(t, w.relay, &mxrelay.Options{Linger: time.Minute, OnEvent: ev.on})
			res, err := c.Send(testkit.Ctx(t), testkit.Mail("first"))
			require.NoError(t, err)
			require.True(t, res.Delivered())
			if tc.event != nil {
				tc.event(w)
			}
			e := ev.next(t)
			assert.Equal(t, mxrelay.EventSessionCompleted, e.Type, "the lingering session failed: %v", e.Err)

			res, err = c.Send(testkit.Ctx(t), testkit.Mail("second"))
			require.NoError(t, err)
			assert.True(t, res.Delivered())
			assert.NotEqual(t, "", res.SessionID)
			assert.Equal(t, 1, w.srv.keptN("first"))
			assert.Equal(t, 1, w.srv.keptN("second"))
			assert.Equal(t, 2, w.sessions())
			st := c.Stats()
			assert.Zero(t, st.SessionsFailed, "failed sessions: %v", ev.failed)
			assert.Equal(t, int64(1), st.SessionsCompleted)
			assert.Zero(t, ev.count(mxrelay.EventReconnecting), "a backoff followed")
		})
	}
}

// The same ends while the NOOP is in flight, the end of data answered 250
// but not yet confirmed: idleEnd must not hide them. The email is an
// unknown outcome, never delivered, and the session a failure.
func TestRT7FarEndEndsWhileTheNoopIsInFlight(t *testing.T) {
	for _, tc := range []struct {
		name  string
		event func(w *rt7Warm)
	}{
		{"unsolicited 421", func(w *rt7Warm) {
			w.inject("421 4.4.2 mx.test Error: timeout exceeded")
			w.last().Close()
		}},
		{"upstream cut", func(w *rt7Warm) { w.last().Close() }},
		{"relay restart", func(w *rt7Warm) { w.relay.CloseClientConnections() }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			noop := make(chan struct{}, 1)
			w := newRT7Warm(t, rt7On("NOOP", rt7Hang(noop)))
			ev := newRT7Events()
			c := testkit.NewClient(t, w.relay, &mxrelay.Options{Linger: time.Minute, OnEvent: ev.on})
			h, err := c.Enqueue(testkit.Mail("in flight"))
			require.NoError(t, err)
			select {
			case <-noop:
			case <-testkit.Ctx(t).Done():
				t.Fatal("no NOOP")
			}
			tc.event(w)
			res, err := h.Wait(testkit.Ctx(t))
			require.Error(t, err, "delivered without a confirmed reply")
			assert.True(t, res.MaybeDelivered, "an end of data answered but not confirmed is an unknown outcome")
			assert.Equal(t, 1, w.srv.keptN("in flight"))
			e := ev.next(t)
			assert.Equal(t, mxrelay.EventSessionFailed, e.Type)
		})
	}
}

// A NOOP never answered: the email's Send returns after CommandTimeout,
// an unknown outcome; a NOOP answered 421: unknown at once.
func TestRT7NoopStalledOr421(t *testing.T) {
	for _, tc := range []struct {
		name string
		noop []string
	}{
		{"stalled", []string{"HANG"}},
		{"421", []string{"421 4.3.2 shutting down", "CUT"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := newRT7Warm(t, rt7On("NOOP", func() []string { return tc.noop }))
			c := testkit.NewClient(t, w.relay, &mxrelay.Options{Linger: time.Minute, CommandTimeout: 300 * time.Millisecond})
			res, err := c.Send(testkit.Ctx(t), testkit.Mail("noop"))
			require.Error(t, err)
			assert.True(t, res.MaybeDelivered)
			var ue *mxrelay.UnknownOutcomeError
			assert.ErrorAs(t, err, &ue)
			res, err = c.Send(testkit.Ctx(t), testkit.Mail("after"))
			require.NoError(t, err)
			assert.True(t, res.Delivered())
		})
	}
}

// A retry that comes due while the only session lingers goes at once, in
// that session or another: nothing waits for Linger.
func TestRT7RetryDueWhileLingering(t *testing.T) {
	var mu sync.Mutex
	refused := map[string]bool{}
	w := newRT7Warm(t, func(c rt2Cmd) ([]string, bool) {
		mu.Lock()
		defer mu.Unlock()
		if c.verb == "END" && !refused[c.subj] {
			refused[c.subj] = true
			return []string{"451 4.3.0 try again later"}, true
		}
		return nil, false
	})
	for _, sessions := range []int{1, 2} {
		t.Run(fmt.Sprint(sessions, " workers"), func(t *testing.T) {
			c := testkit.NewClient(t, w.relay, &mxrelay.Options{Linger: time.Minute, MaxConcurrentSessions: sessions})
			ctx, cancel := context.WithTimeout(testkit.Ctx(t), 5*time.Second)
			defer cancel()
			subj := fmt.Sprint("retried ", sessions)
			res, err := c.Send(ctx, testkit.Mail(subj))
			require.NoError(t, err, "the retry waited for Linger")
			assert.Equal(t, 2, res.Attempts)
			assert.Equal(t, 1, w.srv.keptN(subj))
		})
	}
}

// SessionTimeout reached while a session lingers: every email it took
// has its result, so the session is not a failure.
func TestRT7SessionTimeoutWhileLingering(t *testing.T) {
	w := newRT7Warm(t, nil)
	ev := newRT7Events()
	c := testkit.NewClient(t, w.relay, &mxrelay.Options{Linger: time.Minute, SessionTimeout: 300 * time.Millisecond, OnEvent: ev.on})
	res, err := c.Send(testkit.Ctx(t), testkit.Mail("then timeout"))
	require.NoError(t, err)
	require.True(t, res.Delivered())
	e := ev.next(t)
	assert.Equal(t, mxrelay.EventSessionCompleted, e.Type, "a lingering session at SessionTimeout failed: %v", e.Err)
	res, err = c.Send(testkit.Ctx(t), testkit.Mail("next"))
	require.NoError(t, err)
	assert.True(t, res.Delivered())
	assert.Zero(t, c.Stats().SessionsFailed)
	assert.Zero(t, ev.count(mxrelay.EventReconnecting))
}

// Many Sends at once on 2 to 4 workers with a long Linger: each finishes
// long before Linger (a claim that leaked would hold an email until a
// session's linger ends), and the lingering sessions serve the later
// bursts: no more SMTP sessions than workers.
func TestRT7BurstsOnLingeringSessions(t *testing.T) {
	for _, workers := range []int{2, 3, 4} {
		t.Run(fmt.Sprint(workers, " workers"), func(t *testing.T) {
			sink, err := smtpsink.New(nil)
			require.NoError(t, err)
			t.Cleanup(func() { sink.Close() })
			s := testkit.NewRelay(t, &relaytest.Options{UpstreamAddr: sink.Addr})
			c := testkit.NewClient(t, s, &mxrelay.Options{Linger: time.Minute, MaxConcurrentSessions: workers, MaxEmailsPerSession: 1000})
			for round := range 4 {
				ctx, cancel := context.WithTimeout(testkit.Ctx(t), 5*time.Second)
				var wg sync.WaitGroup
				errs := make(chan error, 64)
				n := 1 + round*7
				for i := range n {
					wg.Go(func() {
						res, err := c.Send(ctx, testkit.Mail(fmt.Sprint("burst ", round, " ", i)))
						if err == nil && !res.Delivered() {
							err = errors.New("not delivered")
						}
						errs <- err
					})
				}
				wg.Wait()
				cancel()
				close(errs)
				for err := range errs {
					require.NoError(t, err, "round %d", round)
				}
			}
			st := c.Stats()
			assert.Zero(t, st.SessionsFailed)
			assert.LessOrEqual(t, sink.Stats().Sessions, int64(workers), "sessions opened")
			assert.Equal(t, int64(1+8+15+22), sink.Stats().Messages)
		})
	}
}

// Replies around the NOOP written after the last end of data, shifted by
// one stray, lost or duplicated line, or worded so that they prove
// nothing: an email is delivered only when the server kept it, and a
// refusal is never turned into a delivery.
func TestRT7NoopThatMustNotConfirm(t *testing.T) {
	type want int
	const (
		delivered want = iota + 1
		notDelivered
		unknown
	)
	for _, mode := range []rtMode{{Name: "BDAT", Ext: []string{"PIPELINING", "CHUNKING"}}, {Name: "DATA", Ext: []string{"PIPELINING"}}} {
		for _, tc := range []struct {
			name  string
			lines map[string][]string // per verb, the lines instead of the honest reply
			want  want
			late  bool // a line too many comes after the email's result
		}{
			{"stray 250 before the end of data's refusal", map[string][]string{"END": {"250 2.0.0 Ok", "554 5.7.1 rejected"}}, notDelivered, false},
			{"NOOP's 250 before the end of data's refusal", map[string][]string{"END": {"250 2.0.0 Ok"}, "NOOP": {"554 5.7.1 rejected"}}, notDelivered, false},
			{"stray 250 before MAIL's reply", map[string][]string{"MAIL": {"250 2.0.0 Ok", "250 2.1.0 Ok"}, "END": {"554 5.7.1 rejected"}}, notDelivered, false},
			{"end of data's reply lost", map[string][]string{"END": {"KEEP"}}, unknown, false},
			{"end of data's 250 twice", map[string][]string{"END": {"250 2.0.0 Ok", "250 2.0.0 Ok", "KEEP"}}, delivered, true},
			{"NOOP answered with an address status", map[string][]string{"NOOP": {"250 2.1.5 Ok"}}, delivered, false},
			{"NOOP answered without an enhanced code", map[string][]string{"NOOP": {"250 Ok"}}, delivered, false},
			{"NOOP answered 2.1.0 as MAIL", map[string][]string{"NOOP": {"250 2.1.0 Ok"}}, delivered, false},
			{"NOOP answered 452", map[string][]string{"NOOP": {"452 4.3.1 busy"}}, unknown, false},
			{"NOOP answered 354", map[string][]string{"NOOP": {"354 go on"}}, unknown, false},
		} {
			t.Run(mode.Name+"/"+tc.name, func(t *testing.T) {
				srv := &rt2Server{ext: mode.Ext, enhanced: true, hook: func(c rt2Cmd) ([]string, bool) {
					if c.conn != 1 || c.tx != 1 {
						return nil, false
					}
					l, ok := tc.lines[c.verb]
					return l, ok
				}}
				s := rtRelay(t, srv.serve)
				c := testkit.NewClient(t, s, &mxrelay.Options{Linger: time.Minute, CommandTimeout: 500 * time.Millisecond})
				res, err := c.Send(testkit.Ctx(t), testkit.Mail("shifted"), mxrelay.WithRetries(0))
				require.NotNil(t, res)
				o := rt3Of(srv, "shifted", res, err)
				t.Log(o)
				o.check(t)
				switch tc.want {
				case delivered:
					assert.True(t, o.delivered())
				case notDelivered:
					assert.False(t, res.Delivered())
				case unknown:
					assert.True(t, o.maybe)
					assert.Error(t, err)
				}
				// The client goes on: the next email is delivered, or, when
				// the line too many comes as it is written, an unknown
				// outcome (the stray may be taken for its RSET's reply).
				res, err = c.Send(testkit.Ctx(t), testkit.Mail("next"))
				require.NotNil(t, res)
				o = rt3Of(srv, "next", res, err)
				o.check(t)
				if !tc.late {
					assert.True(t, o.delivered(), "%v", o)
				}
			})
		}
	}
}

// Two emails in one window, the first's end of data answered 250 twice,
// the second refused: the duplicate confirms the first (its reply was
// 250), and the shift it makes is found before the second is believed.
func TestRT7DuplicatedReplyInAWindow(t *testing.T) {
	srv := &rt2Server{ext: []string{"PIPELINING", "CHUNKING"}, enhanced: true, hook: func(c rt2Cmd) ([]string, bool) {
		if c.conn == 1 && c.verb == "END" {
			if c.tx == 1 {
				return []string{"250 2.0.0 Ok", "250 2.0.0 Ok", "KEEP"}, true
			}
			return []string{"554 5.7.1 rejected"}, true
		}
		return nil, false
	}}
	for _, o := range rtOutcomes(t, srv, &mxrelay.Options{Linger: time.Minute}, time.Second, rtMailTo()) {
		o.check(t)
		if o.subj == "one" {
			assert.True(t, o.delivered())
		} else {
			assert.False(t, o.delivered())
		}
	}
}

// Close while the NOOP after the last end of data is in flight: a Close
// that waits gets the NOOP's 250, which confirms the email; one that
// gives up leaves it an unknown outcome, never delivered, and returns
// within the grace.
func TestRT7CloseDuringTheNoopsFlight(t *testing.T) {
	t.Run("Close waits", func(t *testing.T) {
		noop, release := make(chan struct{}, 1), make(chan struct{})
		w := newRT7Warm(t, rt7On("NOOP", func() []string {
			noop <- struct{}{}
			<-release
			return nil
		}))
		ev := newRT7Events()
		c := testkit.NewClient(t, w.relay, &mxrelay.Options{Linger: time.Minute, OnEvent: ev.on})
		h, err := c.Enqueue(testkit.Mail("closing"))
		require.NoError(t, err)
		<-noop
		closed := make(chan error, 1)
		go func() { closed <- c.Close(testkit.Ctx(t)) }()
		for {
			if _, err := c.Enqueue(testkit.Mail("late")); errors.Is(err, mxrelay.ErrClosed) {
				break
			}
			require.NoError(t, testkit.Ctx(t).Err())
		}
		close(release)
		res, err := h.Wait(testkit.Ctx(t))
		require.NoError(t, err)
		assert.True(t, res.Delivered())
		require.NoError(t, <-closed)
		assert.Equal(t, mxrelay.EventSessionCompleted, ev.next(t).Type)
		assert.Equal(t, 1, w.srv.keptN("closing"))
	})
	t.Run("Close gives up", func(t *testing.T) {
		noop := make(chan struct{}, 1)
		w := newRT7Warm(t, rt7On("NOOP", rt7Hang(noop)))
		c := testkit.NewClient(t, w.relay, &mxrelay.Options{Linger: time.Minute, CommandTimeout: time.Minute})
		h, err := c.Enqueue(testkit.Mail("given up"))
		require.NoError(t, err)
		<-noop
		ctx, cancel := context.WithTimeout(testkit.Ctx(t), 50*time.Millisecond)
		defer cancel()
		assert.Error(t, c.Close(ctx))
		res, err := h.Wait(testkit.Ctx(t))
		require.Error(t, err)
		assert.True(t, res.MaybeDelivered)
		assert.Equal(t, 1, w.srv.keptN("given up"))
	})
}

// A Send cancelled after its end of data, the queue empty and the NOOP
// behind it: its reply decides (a 250, confirmed: delivered), and the
// client goes on.
func TestRT7CancelSendInFlightWithAnEmptyQueue(t *testing.T) {
	end, release := make(chan struct{}, 1), make(chan struct{})
	w := newRT7Warm(t, rt7On("END", func() []string {
		end <- struct{}{}
		<-release
		return nil
	}))
	c := testkit.NewClient(t, w.relay, &mxrelay.Options{Linger: time.Minute})
	ctx, cancel := context.WithCancel(testkit.Ctx(t))
	type sent struct {
		res *mxrelay.Result
		err error
	}
	out := make(chan sent, 1)
	go func() {
		res, err := c.Send(ctx, testkit.Mail("cancelled"))
		out <- sent{res, err}
	}()
	<-end
	cancel()
	close(release)
	r := <-out
	require.NotNil(t, r.res)
	o := rt3Of(w.srv, "cancelled", r.res, r.err)
	o.check(t)
	assert.True(t, o.delivered(), "%v", o)
	res, err := c.Send(testkit.Ctx(t), testkit.Mail("after"))
	require.NoError(t, err)
	assert.True(t, res.Delivered())
}

// MaxEmailsPerSession reached by a lingering session: it ends with QUIT
// and the next email opens another at once.
func TestRT7MaxEmailsPerSessionWhileLingering(t *testing.T) {
	w := newRT7Warm(t, nil)
	c := testkit.NewClient(t, w.relay, &mxrelay.Options{Linger: time.Minute, MaxEmailsPerSession: 2})
	ctx, cancel := context.WithTimeout(testkit.Ctx(t), 5*time.Second)
	defer cancel()
	var ids []string
	for i := range 5 {
		res, err := c.Send(ctx, testkit.Mail(fmt.Sprint("max ", i)))
		require.NoError(t, err)
		ids = append(ids, res.SessionID)
	}
	assert.Equal(t, ids[0], ids[1])
	assert.NotEqual(t, ids[1], ids[2])
	assert.Equal(t, ids[2], ids[3])
	assert.NotEqual(t, ids[3], ids[4])
	assert.Equal(t, 3, w.sessions())
	require.NoError(t, c.Close(ctx))
	st := c.Stats()
	assert.Equal(t, int64(3), st.SessionsCompleted)
	assert.Zero(t, st.SessionsFailed)
}

// Sends that land as a short Linger runs out, on one worker and on
// several: each is delivered once, no session fails.
func TestRT7SendsAsLingerRunsOut(t *testing.T) {
	for _, workers := range []int{1, 3} {
		t.Run(fmt.Sprint(workers, " workers"), func(t *testing.T) {
			sink, err := smtpsink.New(nil)
			require.NoError(t, err)
			t.Cleanup(func() { sink.Close() })
			s := testkit.NewRelay(t, &relaytest.Options{UpstreamAddr: sink.Addr})
			c := testkit.NewClient(t, s, &mxrelay.Options{Linger: time.Millisecond, MaxConcurrentSessions: workers})
			var wg sync.WaitGroup
			for g := range workers {
				wg.Go(func() {
					for i := range 15 {
						res, err := c.Send(testkit.Ctx(t), testkit.Mail(fmt.Sprint("edge ", g, " ", i)))
						if assert.NoError(t, err) {
							assert.True(t, res.Delivered())
						}
					}
				})
			}
			wg.Wait()
			require.NoError(t, c.Close(testkit.Ctx(t)))
			assert.Zero(t, c.Stats().SessionsFailed)
			assert.Equal(t, int64(15*workers), sink.Stats().Messages)
		})
	}
}

// A session that stopped taking emails (its Linger ran out) and waits
// for a slow QUIT no longer holds the worker's claim: with a second
// worker idle, the next email goes at once in a new session instead of
// waiting for that QUIT.
func TestRT7EndingSessionLeavesTheNextEmailToAnother(t *testing.T) {
	quit, release := make(chan struct{}, 1), make(chan struct{})
	w := newRT7Warm(t, rt7On("QUIT", func() []string {
		quit <- struct{}{}
		<-release
		return nil
	}))
	defer close(release)
	c := testkit.NewClient(t, w.relay, &mxrelay.Options{Linger: 10 * time.Millisecond, MaxConcurrentSessions: 2, CommandTimeout: time.Minute})
	_, err := c.Send(testkit.Ctx(t), testkit.Mail("first"))
	require.NoError(t, err)
	select {
	case <-quit:
	case <-testkit.Ctx(t).Done():
		t.Fatal("no QUIT")
	}
	ctx, cancel := context.WithTimeout(testkit.Ctx(t), 3*time.Second)
	defer cancel()
	res, err := c.Send(ctx, testkit.Mail("second"))
	require.NoError(t, err, "the next email waited for the ending session's QUIT")
	assert.True(t, res.Delivered())
}

// The relay's WebSocket cut abruptly (no close frame) as soon as the
// NOOP's 250 has passed: the email it confirmed is delivered, the session
// is no failure, and the next Send reconnects without a backoff.
func TestRT7WebSocketCutAfterTheNoopsReply(t *testing.T) {
	w := newRT7Warm(t, nil)
	// Every byte rt2Server writes, up to the NOOP's reply.
	var upTo int64
	for _, l := range []string{"220 mx.test ESMTP", "250-mx.test", "250-PIPELINING", "250-CHUNKING",
		"250-ENHANCEDSTATUSCODES", "250 8BITMIME", w.srv.honest("MAIL"), w.srv.honest("RCPT"), w.srv.honest("END"), w.srv.honest("NOOP")} {
		upTo += int64(len(l) + 2)
	}
	w.relay.Inject(relaytest.Fault{Kind: relaytest.DropAfterBytes, Bytes: upTo, FromServer: true})
	ev := newRT7Events()
	c := testkit.NewClient(t, w.relay, &mxrelay.Options{Linger: time.Minute, OnEvent: ev.on})
	res, err := c.Send(testkit.Ctx(t), testkit.Mail("first"))
	require.NoError(t, err)
	require.True(t, res.Delivered())
	e := ev.next(t)
	assert.Equal(t, mxrelay.EventSessionCompleted, e.Type, "%v", e.Err)
	assert.Empty(t, w.relay.Faults(), "the cut came")
	res, err = c.Send(testkit.Ctx(t), testkit.Mail("second"))
	require.NoError(t, err)
	assert.True(t, res.Delivered())
	assert.Zero(t, c.Stats().SessionsFailed)
	assert.Zero(t, ev.count(mxrelay.EventReconnecting))
	assert.Equal(t, 1, w.srv.keptN("first"))
	assert.Equal(t, 1, w.srv.keptN("second"))
}

// A server that does not offer PIPELINING and enforces the wait for each
// reply (as Exim's smtp_enforce_sync): before answering a command it
// looks for more input, and finding some it refuses with a
// synchronization error and closes. A client that lingers must not write
// its NOOP behind an end of data still unanswered: the email, which the
// server would keep, is delivered.
func TestRT7NoNoopPipelinedWithoutPipelining(t *testing.T) {
	var mu sync.Mutex
	kept, early := 0, 0
	u := testkit.NewUpstream(t, func(c *fakesmtp.Conn) {
		// answer writes reply unless the client wrote on before it came.
		answer := func(reply string) bool {
			c.NetConn().SetReadDeadline(time.Now().Add(50 * time.Millisecond))
			_, wrote := c.Peek()
			c.NetConn().SetReadDeadline(time.Time{})
			if wrote {
				mu.Lock()
				early++
				mu.Unlock()
				c.Say("554 5.5.0 SMTP synchronization error")
				return false
			}
			return c.Say(reply)
		}
		c.Say("220 mx.test ESMTP")
		for {
			l, ok := c.Line()
			if !ok {
				return
			}
			reply := "250 2.0.0 Ok"
			switch verb := strings.ToUpper(strings.Fields(l + " x")[0]); verb {
			case "EHLO":
				reply = "250-mx.test\r\n250-ENHANCEDSTATUSCODES\r\n250 8BITMIME"
			case "MAIL":
				reply = "250 2.1.0 Ok"
			case "RCPT":
				reply = "250 2.1.5 Ok"
			case "QUIT":
				c.Say("221 2.0.0 Bye")
				return
			case "DATA":
				if !answer("354 End data with <CR><LF>.<CR><LF>") {
					return
				}
				for {
					if l, ok = c.Line(); !ok || l == "." {
						break
					}
				}
				if !ok || !answer("250 2.0.0 Ok: queued") {
					return
				}
				mu.Lock()
				kept++
				mu.Unlock()
				continue
			}
			if !answer(reply) {
				return
			}
		}
	})
	s := testkit.NewRelay(t, &relaytest.Options{UpstreamAddr: u.Addr})
	c := testkit.NewClient(t, s, &mxrelay.Options{Linger: time.Minute})
	for i := range 2 {
		res, err := c.Send(testkit.Ctx(t), testkit.Mail(fmt.Sprint("lock-step ", i)))
		require.NoError(t, err)
		assert.True(t, res.Delivered())
	}
	mu.Lock()
	defer mu.Unlock()
	assert.Zero(t, early, "the client wrote before a reply, to a server that did not offer PIPELINING")
	assert.Equal(t, 2, kept)
}

// The relay closes the WebSocket with 1001 when the NOOP after the end of
// data reaches it: the end of data went upstream, its reply is not
// confirmed, so the email is an unknown outcome and the session a failure
// (idleEnd must not hide it); the next Send is delivered.
func TestRT7RelayCloses1001AtTheNoop(t *testing.T) {
	w := newRT7Warm(t, nil)
	w.relay.Inject(relaytest.Fault{Kind: relaytest.CloseWebSocket, Command: "NOOP"})
	ev := newRT7Events()
	c := testkit.NewClient(t, w.relay, &mxrelay.Options{Linger: time.Minute, OnEvent: ev.on})
	res, err := c.Send(testkit.Ctx(t), testkit.Mail("cut at the NOOP"))
	require.Error(t, err)
	assert.True(t, res.MaybeDelivered, "%v", err)
	assert.Equal(t, mxrelay.EventSessionFailed, ev.next(t).Type)
	assert.Empty(t, w.relay.Faults(), "the close came")
	res, err = c.Send(testkit.Ctx(t), testkit.Mail("next"))
	require.NoError(t, err)
	assert.True(t, res.Delivered())
	assert.Equal(t, 1, w.srv.keptN("next"))
}
