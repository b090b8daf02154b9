package test

import (
	"context"
	"errors"
	"fmt"
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

// Red team, fifth round: the drain at SessionTimeout and Close, the
// lock-step withdraw that no longer closes, and the hurried session.

// rt5Signal is a channel a hook signals on without blocking.
func rt5Signal() chan struct{} { return make(chan struct{}, 16) }

func rt5Notify(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

func rt5Await(t *testing.T, ch chan struct{}, what string) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(8 * time.Second):
		t.Fatalf("timed out waiting for %s", what)
	}
}

// rt5Client is a Client of s with options o made fast, not closed when
// the test ends (the test closes it).
func rt5Client(t *testing.T, s *relaytest.Server, o *mxrelay.Options) *mxrelay.Client {
	t.Helper()
	c, err := mxrelay.New(s.URL, s.APIKey, testkit.ClientOptions(s, o))
	require.NoError(t, err)
	return c
}

// rt5QuitStalls scripts srv in style st, with script (if not nil) taking a
// command first, except QUIT on connection conn (0: on every one): that
// one is signalled on quit and stalled until the test ends, then cut. It
// starts srv behind a relay and returns the relay and quit.
func rt5QuitStalls(t *testing.T, srv *rt2Server, st rt4Style, conn int, script func(c rt2Cmd) ([]string, bool)) (*relaytest.Server, chan struct{}) {
	t.Helper()
	quit := rt5Signal()
	rt4Hook(srv, st, func(c rt2Cmd) ([]string, bool) {
		if c.verb == "QUIT" && (conn == 0 || c.conn == conn) {
			rt5Notify(quit)
			return []string{"STALL"}, true
		}
		if script != nil {
			return script(c)
		}
		return nil, false
	})
	return rtRelay(t, srv.serve), quit
}

// rt5SlowEnd is a script for rt4Hook: on the first connection, email tx's
// end of data is signalled on end, kept, and answered in style st after
// delay ("~300ms").
func rt5SlowEnd(srv *rt2Server, st rt4Style, end chan struct{}, tx int, delay string) func(c rt2Cmd) ([]string, bool) {
	return func(c rt2Cmd) ([]string, bool) {
		if c.conn == 1 && c.tx == tx && c.verb == "END" {
			rt5Notify(end)
			return []string{"KEEP", delay, st.reply(srv, "END")}, true
		}
		return nil, false
	}
}

// rt5SlowRcpt is a script for rt4Hook: on the first connection, email
// two's RCPT is signalled on rcpt (nil: not) and answered in style st
// after delay ("~300ms"); with hangEnd, its end of data is never answered.
func rt5SlowRcpt(srv *rt2Server, st rt4Style, rcpt chan struct{}, delay string, hangEnd bool) func(c rt2Cmd) ([]string, bool) {
	return func(c rt2Cmd) ([]string, bool) {
		if c.conn != 1 || c.tx != 2 {
			return nil, false
		}
		switch {
		case c.verb == "RCPT":
			if rcpt != nil {
				rt5Notify(rcpt)
			}
			return []string{delay, st.reply(srv, "RCPT")}, true
		case c.verb == "END" && hangEnd:
			return []string{"HANG"}, true
		}
		return nil, false
	}
}

// rt5Close closes c with a context of d and reports how long it took.
func rt5Close(c *mxrelay.Client, d time.Duration) (time.Duration, error) {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	start := time.Now()
	err := c.Close(ctx)
	return time.Since(start), err
}

// BREAK. Close's bound after a SessionTimeout drain. Close's doc: past ctx the
// session in progress gets "up to a second more". A session whose
// SessionTimeout passed while a 250 waits for confirmation (go-smtp
// wording, the server silent on QUIT) is draining with a grace of
// CommandTimeout; Close's ctx ending afterwards does not shorten it:
// context.AfterFunc on the session's ctx has already run, quitGrace was
// computed then (not past Close's deadline), and nothing else watches
// Close's stop. Close returns only when QUIT's CommandTimeout passes.
func TestRedTeam5CloseAfterSessionTimeoutDrainExceedsBound(t *testing.T) {
	for _, m := range fakesmtp.EngineModes {
		rtRun(t, m.Name, func(t *testing.T) {
			srv := &rt2Server{ext: m.Ext}
			st := rt4Styles[0] // go-smtp: only the 221 confirms in the BDAT modes
			s, quit := rt5QuitStalls(t, srv, st, 1, func(c rt2Cmd) ([]string, bool) {
				if c.conn == 1 && c.verb == "END" {
					return []string{"~300ms", st.reply(srv, "END"), "KEEP"}, true
				}
				return nil, false
			})
			c := rt5Client(t, s, &mxrelay.Options{MaxEmailsPerSession: 5, BatchWait: 10 * time.Millisecond,
				SessionTimeout: 500 * time.Millisecond, CommandTimeout: 6 * time.Second})
			h, err := c.Enqueue(testkit.Mail("one"), mxrelay.WithRetries(0))
			require.NoError(t, err)
			rt5Await(t, quit, "QUIT")
			time.Sleep(700 * time.Millisecond) // SessionTimeout has passed, QUIT unanswered
			took, _ := rt5Close(c, 100*time.Millisecond)
			res, errOne := h.Wait(context.Background())
			t.Logf("%s: Close took %v; one: err=%v maybe=%v kept=%d", m.Name, took.Round(10*time.Millisecond), errOne, res.MaybeDelivered, srv.keptN("one"))
			assert.Less(t, took, 100*time.Millisecond+time.Second+400*time.Millisecond,
				"Close(100ms) waited past its context plus the second its doc allows")
		})
	}
}

// BREAK. Close's drain and an email before its end of data. The README row:
// "Close's context ends during a transaction, before its end of data:
// handed back, ErrClosed (with SpoolDir, ErrSpooled and its file kept)".
// Email one is answered 250 (go-smtp wording: unconfirmed until a 354 or
// the 221); email two's RCPT reply is slow. Close's context ends while
// email two waits for it, before its end of data. The drain lets the
// reply come and then the engine writes email two's end of data
// (endHandedOn does not look at Close); the server never answers it and
// the grace cuts: email two ends unknown (failed, MaybeDelivered, charged
// an attempt, its spool file gone) instead of handed back. The server
// never kept it, so an email Close should have handed back is lost to a
// maybe. In lock-step BDAT email one, whose 250 only QUIT's 221 would have
// confirmed within the grace, ends unknown as well: the drain spent the
// grace on email two's end of data instead of QUIT.
func TestRedTeam5CloseDrainWritesEndOfDataOfEnvelopeEmail(t *testing.T) {
	for _, m := range fakesmtp.EngineModes[1:] { // pipelined BDAT writes the end with the envelope
		rtRun(t, m.Name, func(t *testing.T) {
			srv := &rt2Server{ext: m.Ext}
			st := rt4Styles[0]
			rcpt2 := rt5Signal()
			rt4Hook(srv, st, rt5SlowRcpt(srv, st, rcpt2, "~400ms", true))
			s := rtRelay(t, srv.serve)
			dir := t.TempDir()
			c1 := rt5Client(t, s, &mxrelay.Options{SpoolDir: dir, MaxEmailsPerSession: 5,
				BatchWait: 100 * time.Millisecond, CommandTimeout: 5 * time.Second})
			hs := rtEnqueue(t, c1, []string{"one", "two"}, rtMailTo(), mxrelay.WithRetries(2))
			rt5Await(t, rcpt2, "email two's RCPT")
			took, _ := rt5Close(c1, 50*time.Millisecond)
			res1, err1 := hs[0].Wait(context.Background())
			res2, err2 := hs[1].Wait(context.Background())
			ends2 := srv.endsN("two") // before the next Client sends it
			t.Logf("%s: Close took %v; one: err=%v maybe=%v; two: err=%v maybe=%v attempts=%d ends seen by server=%d kept=%d",
				m.Name, took.Round(10*time.Millisecond), err1, res1.MaybeDelivered, err2, res2.MaybeDelivered, res2.Attempts,
				ends2, srv.keptN("two"))
			c2 := testkit.NewClient(t, s, &mxrelay.Options{SpoolDir: dir})
			t.Logf("recovered by the next Client: %d", len(c2.Recovered()))
			assert.NoError(t, err1, "one was kept and confirmed within the grace")
			assert.Zero(t, ends2, "Close's drain wrote the end of data of an email Close had interrupted before it")
			assert.ErrorIs(t, err2, mxrelay.ErrClosed, "two was before its end of data when Close's context ended: handed back")
			assert.ErrorIs(t, err2, mxrelay.ErrSpooled)
			assert.False(t, res2.MaybeDelivered)
		})
	}
}

// The same at SessionTimeout: the row says "the emails not taken go in
// the next session", and the drain waits for "the replies in flight".
// Email two, taken but before its end of data, has its end of data written
// during the drain; the server stalls on it; after CommandTimeout email
// two is unknown (not retried, MaybeDelivered), where before the change it
// was cut before its end of data and retried as never sent. BREAK of the
// row "the emails not taken go in the next session" in spirit: its end of
// data was not sent when SessionTimeout passed, yet it never gets a next
// session (the core promise holds: it says MaybeDelivered).
func TestRedTeam5SessionTimeoutDrainWritesEndOfData(t *testing.T) {
	for _, m := range fakesmtp.EngineModes[1:] {
		rtRun(t, m.Name, func(t *testing.T) {
			srv := &rt2Server{ext: m.Ext}
			st := rt4Styles[0]
			rt4Hook(srv, st, rt5SlowRcpt(srv, st, nil, "~600ms", true))
			s := rtRelay(t, srv.serve)
			c := testkit.NewClient(t, s, &mxrelay.Options{MaxEmailsPerSession: 5, BatchWait: 100 * time.Millisecond,
				SessionTimeout: 400 * time.Millisecond, CommandTimeout: 1500 * time.Millisecond})
			hs := rtEnqueue(t, c, []string{"one", "two"}, rtMailTo(), mxrelay.WithRetries(2))
			for i, h := range hs {
				res, err := h.Wait(testkit.Ctx(t))
				subj := []string{"one", "two"}[i]
				o := rt3Of(srv, subj, res, err)
				t.Logf("%s: %v attempts=%d ends=%d", m.Name, o, res.Attempts, srv.endsN(subj))
				o.check(t)
			}
			assert.Equal(t, 1, srv.keptN("two"), "two, taken before its end of data when SessionTimeout passed, did not go in the next session")
		})
	}
}

// HELD. Lock-step withdraw while a 250 waits for confirmation, then a
// server that never answers again. Send's doc: a Send cancelled before its end
// of data returns at once. The session must not outlive CommandTimeout.
func TestRedTeam5LockstepWithdrawThenSilence(t *testing.T) {
	for _, m := range fakesmtp.EngineModes[1:] {
		t.Run(m.Name, func(t *testing.T) {
			t.Parallel()
			srv := &rt2Server{ext: m.Ext}
			st := rt4Styles[0]
			mail2 := rt5Signal()
			rt4Hook(srv, st, func(c rt2Cmd) ([]string, bool) {
				if c.conn == 1 && c.tx == 2 && c.verb == "MAIL" {
					rt5Notify(mail2)
					return []string{"HANG"}, true
				}
				return nil, false
			})
			s := rtRelay(t, srv.serve)
			c := rt5Client(t, s, &mxrelay.Options{MaxEmailsPerSession: 5,
				BatchWait: 100 * time.Millisecond, CommandTimeout: 1500 * time.Millisecond})
			ha, err := c.Enqueue(testkit.Mail("one"), mxrelay.WithRetries(0))
			require.NoError(t, err)
			type out struct {
				res  *mxrelay.Result
				err  error
				took time.Duration
			}
			done := make(chan out, 1)
			ctx, cancel := context.WithCancel(context.Background())
			go func() {
				start := time.Now()
				res, err := c.Send(ctx, testkit.Mail("two"), mxrelay.WithRetries(0))
				done <- out{res, err, time.Since(start)}
			}()
			rt5Await(t, mail2, "email two's MAIL")
			cancelAt := time.Now()
			cancel()
			var o out
			select {
			case o = <-done:
			case <-time.After(5 * time.Second):
				t.Fatal("the cancelled Send did not return")
			}
			sinceCancel := time.Since(cancelAt)
			resA, errA := ha.Wait(testkit.Ctx(t))
			t.Logf("%s: two: err=%v returned %v after cancel; one: err=%v maybe=%v kept=%d", m.Name, o.err,
				sinceCancel.Round(time.Millisecond), errA, resA.MaybeDelivered, srv.keptN("one"))
			assert.ErrorIs(t, o.err, mxrelay.ErrCanceled)
			assert.Less(t, sinceCancel, 300*time.Millisecond, "cancelled before its end of data, Send waited")
			a := rt3Of(srv, "one", resA, errA)
			a.check(t)
			took, _ := rt5Close(c, 3*time.Second)
			assert.Less(t, took, 2*time.Second, "the session outlived CommandTimeout")
		})
	}
}

// HELD (the grace is per session, in parallel). MaxConcurrentSessions 3, each session's 250 waiting for QUIT's 221,
// which never comes: Close(100ms) must not sum the graces.
func TestRedTeam5CloseGraceConcurrentSessions(t *testing.T) {
	for _, m := range []rtMode{fakesmtp.EngineModes[0], fakesmtp.EngineModes[2]} {
		t.Run(m.Name, func(t *testing.T) {
			t.Parallel()
			srv := &rt2Server{ext: m.Ext}
			st := rt4Styles[0]
			s, quit := rt5QuitStalls(t, srv, st, 0, nil)
			c := rt5Client(t, s, &mxrelay.Options{MaxConcurrentSessions: 3, MaxEmailsPerSession: 1,
				BatchWait: 5 * time.Millisecond, CommandTimeout: 8 * time.Second})
			subjs := rtNumbered("c", 3)
			hs := rtEnqueue(t, c, subjs, rtMailTo(), mxrelay.WithRetries(0))
			for range 3 {
				rt5Await(t, quit, "QUIT")
			}
			took, _ := rt5Close(c, 100*time.Millisecond)
			t.Logf("%s: Close took %v", m.Name, took.Round(10*time.Millisecond))
			for i, h := range hs {
				res, err := h.Wait(context.Background())
				o := rt3Of(srv, subjs[i], res, err)
				t.Log(o)
				o.check(t)
			}
			assert.Less(t, took, 100*time.Millisecond+time.Second+400*time.Millisecond, "Close summed or exceeded the grace")
		})
	}
}

// BREAK. Events after a drained SessionTimeout. events.go: sessionCompleted is
// "it ended with QUIT", sessionFailed "it could not start or broke". A
// session past SessionTimeout that drained and got QUIT's 221, every
// email delivered, is reported sessionFailed (and counted in
// Stats.SessionsFailed), its cause the deadline.
func TestRedTeam5DrainedSessionTimeoutReportedFailed(t *testing.T) {
	testkit.Bubble(t, testRedTeam5DrainedSessionTimeoutReportedFailed)
}

func testRedTeam5DrainedSessionTimeoutReportedFailed(t *testing.T) {
	srv := &rt2Server{ext: fakesmtp.EngineModes[0].Ext}
	st := rt4Styles[0]
	rt4Hook(srv, st, func(c rt2Cmd) ([]string, bool) {
		if c.conn == 1 && c.tx == 2 && c.verb == "END" {
			return []string{"~500ms", st.reply(srv, "END"), "KEEP"}, true
		}
		return nil, false
	})
	s := rtRelay(t, srv.serve)
	var mu sync.Mutex
	var evs []mxrelay.Event
	c := testkit.NewClient(t, s, &mxrelay.Options{MaxEmailsPerSession: 5, BatchWait: 10 * time.Millisecond,
		SessionTimeout: 300 * time.Millisecond, CommandTimeout: 3 * time.Second,
		OnEvent: func(e mxrelay.Event) {
			if e.Type == mxrelay.EventSessionCompleted || e.Type == mxrelay.EventSessionFailed {
				mu.Lock()
				evs = append(evs, e)
				mu.Unlock()
			}
		}})
	for _, h := range rtEnqueue(t, c, []string{"one", "two"}, rtMailTo(), mxrelay.WithRetries(0)) {
		res, err := h.Wait(testkit.Ctx(t))
		require.NoError(t, err)
		require.False(t, res.MaybeDelivered)
	}
	synctest.Wait() // the session's last event is out
	mu.Lock()
	defer mu.Unlock()
	require.NotEmpty(t, evs)
	for _, e := range evs {
		t.Logf("event %v session=%s err=%v results=%d", e.Type, e.SessionID, e.Err, len(e.Results))
	}
	st2 := c.Stats()
	t.Logf("stats: processed %d failed %d", st2.SessionsCompleted, st2.SessionsFailed)
	assert.Equal(t, mxrelay.EventSessionCompleted, evs[0].Type, "a session that ended with QUIT's 221, all delivered, reported failed")
	assert.False(t, errors.Is(evs[0].Err, context.DeadlineExceeded), fmt.Sprint(evs[0].Err))
}

// BREAK. The withdraw's new check looks only at emails answered and waiting for
// confirmation (Unconfirmed), not at emails whose end of data is out and
// whose reply is on its way. Pipelined DATA (withdraw is set: not
// Windowed) sends email two's envelope before email one's end of data is
// answered; cancelling two then closes the channel, and one, answered
// 250 and kept by an honest server a moment later, ends unknown because
// another email was cancelled (the problem 457b68e meant to end).
func TestRedTeam5WithdrawCutsReplyInFlight(t *testing.T) {
	for _, st := range rt4Styles {
		rtRun(t, st.name, func(t *testing.T) {
			m := fakesmtp.EngineModes[1] // pipelined DATA
			srv := &rt2Server{ext: m.Ext}
			end1 := rt5Signal()
			rt4Hook(srv, st, rt5SlowEnd(srv, st, end1, 1, "~400ms"))
			s := rtRelay(t, srv.serve)
			c := testkit.NewClient(t, s, &mxrelay.Options{MaxEmailsPerSession: 5, BatchWait: 100 * time.Millisecond,
				CommandTimeout: 3 * time.Second})
			hs := rtEnqueue(t, c, []string{"one", "two"}, rtMailTo(), mxrelay.WithRetries(0))
			rt5Await(t, end1, "email one's end of data")
			time.Sleep(150 * time.Millisecond) // two's envelope is out, one's reply not yet
			hs[1].Cancel()
			res1, err1 := hs[0].Wait(testkit.Ctx(t))
			_, err2 := hs[1].Wait(testkit.Ctx(t))
			t.Logf("one: err=%v maybe=%v kept=%d; two: err=%v", err1, res1.MaybeDelivered, srv.keptN("one"), err2)
			assert.ErrorIs(t, err2, mxrelay.ErrCanceled)
			require.Equal(t, 1, srv.keptN("one"))
			assert.NoError(t, err1, "one, kept and answered 250 by an honest server, ends unknown because two was cancelled")
		})
	}
}

// Close with SpoolDir during a drain: both emails answered within the
// grace and confirmed by QUIT's 221 are delivered once; the next Client
// on the spool recovers neither and sends nothing again. Held in the BDAT
// modes. BREAK in the DATA modes, against README's row "Close's context
// ends during a transaction ... After its end of data the reply decides:
// the session takes no more emails and gives the replies in flight up to
// a second more": there email two's 354 confirmed email one, so when
// Close's ctx ends nothing is Unconfirmed and the channel is cut at once
// (0b26a54's condition; Close's doc in client.go says so, the README row
// was not updated): email two, whose 250 comes 300 ms later, ends
// unknown and MaybeDelivered although the server kept it once.
func TestRedTeam5CloseDrainSpoolDeliveredOnce(t *testing.T) {
	for _, m := range fakesmtp.EngineModes {
		rtRun(t, m.Name, func(t *testing.T) {
			srv := &rt2Server{ext: m.Ext}
			st := rt4Styles[0]
			end2 := rt5Signal()
			rt4Hook(srv, st, rt5SlowEnd(srv, st, end2, 2, "~300ms"))
			s := rtRelay(t, srv.serve)
			dir := t.TempDir()
			c1 := rt5Client(t, s, &mxrelay.Options{SpoolDir: dir, MaxEmailsPerSession: 5,
				BatchWait: 100 * time.Millisecond, CommandTimeout: 3 * time.Second})
			subjs := []string{"one", "two"}
			hs := rtEnqueue(t, c1, subjs, rtMailTo(), mxrelay.WithRetries(2))
			rt5Await(t, end2, "email two's end of data")
			took, _ := rt5Close(c1, 10*time.Millisecond)
			t.Logf("Close took %v", took.Round(10*time.Millisecond))
			assert.Less(t, took, 10*time.Millisecond+time.Second+400*time.Millisecond)
			for i, h := range hs {
				res, err := h.Wait(context.Background())
				o := rt3Of(srv, subjs[i], res, err)
				t.Log(o)
				assert.True(t, o.delivered(), "answered and confirmed within the grace: %v", o)
			}
			c2 := testkit.NewClient(t, s, &mxrelay.Options{SpoolDir: dir})
			assert.Empty(t, c2.Recovered(), "the next Client recovered an email c1 delivered")
			require.NoError(t, c2.Close(testkit.Ctx(t)))
			for _, subj := range subjs {
				assert.Equal(t, 1, srv.keptN(subj), subj)
			}
		})
	}
}

// HELD. A Send cancelled after its end of data hurries its session; Close comes
// while it drains, and the emails queued behind go nowhere (Close). Each
// email ends exactly once, the cancelled one by its reply, the others
// handed back, and Close keeps its bound.
func TestRedTeam5HurryThenClose(t *testing.T) {
	for _, m := range fakesmtp.EngineModes {
		rtRun(t, m.Name, func(t *testing.T) {
			srv := &rt2Server{ext: m.Ext}
			st := rt4Styles[0]
			end1 := rt5Signal()
			rt4Hook(srv, st, rt5SlowEnd(srv, st, end1, 1, "~300ms"))
			s := rtRelay(t, srv.serve)
			dir := t.TempDir()
			c1 := rt5Client(t, s, &mxrelay.Options{SpoolDir: dir, MaxEmailsPerSession: 5,
				BatchWait: 10 * time.Millisecond, CommandTimeout: 3 * time.Second})
			ctx, cancel := context.WithCancel(context.Background())
			type out struct {
				res *mxrelay.Result
				err error
			}
			done := make(chan out, 1)
			go func() {
				res, err := c1.Send(ctx, testkit.Mail("one"), mxrelay.WithRetries(2))
				done <- out{res, err}
			}()
			rt5Await(t, end1, "email one's end of data")
			cancel()
			synctest.Wait() // the cancel has reached the session (hurry)
			later := rtEnqueue(t, c1, rtNumbered("l", 3), rtMailTo(), mxrelay.WithRetries(2))
			took, _ := rt5Close(c1, 10*time.Millisecond)
			o := <-done
			t.Logf("Close took %v; one: err=%v maybe=%v kept=%d", took.Round(10*time.Millisecond), o.err, o.res.MaybeDelivered, srv.keptN("one"))
			assert.Less(t, took, 10*time.Millisecond+time.Second+400*time.Millisecond)
			a := rt3Of(srv, "one", o.res, o.err)
			a.check(t)
			for i, h := range later {
				res, err := h.Wait(context.Background())
				subj := fmt.Sprint("l", i)
				lo := rt3Of(srv, subj, res, err)
				t.Log(lo)
				lo.check(t)
			}
		})
	}
}

// Red team, sixth round: the drain of f96e9d0 (draining refuses new ends
// of data, Settling decides drain vs cut, Close shortens the grace).

// rt6Events records the session events of a client.
type rt6Events struct {
	mu  sync.Mutex
	evs []mxrelay.Event
}

func (r *rt6Events) on(e mxrelay.Event) {
	if e.Type == mxrelay.EventSessionCompleted || e.Type == mxrelay.EventSessionFailed {
		r.mu.Lock()
		r.evs = append(r.evs, e)
		r.mu.Unlock()
	}
}

func (r *rt6Events) first() (mxrelay.Event, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.evs) == 0 {
		return mxrelay.Event{}, false
	}
	return r.evs[0], true
}

// BREAK. The SessionTimeout drain's bound is one CommandTimeout for the
// whole drain, not one per reply. README row "SessionTimeout passes":
// "it waits for their replies (each within CommandTimeout ...) and
// QUITs"; Options.SessionTimeout: "their replies get CommandTimeout to
// come". Pipelined BDAT, three ends of data out when SessionTimeout
// passes, an honest server (Postfix wording) answering each 600 ms after
// the one before (each well within CommandTimeout 1 s): the grace timer,
// started once at the drain, cuts the channel at 1 s, before the third
// reply; the third email, kept by the server, ends unknown (MaybeDelivered)
// although every reply came within CommandTimeout of the one before it,
// as the session's own read deadline allows outside a drain.
func TestRedTeam6DrainGraceIsTotalNotPerReply(t *testing.T) {
	testkit.Bubble(t, testRedTeam6DrainGraceIsTotalNotPerReply)
}

func testRedTeam6DrainGraceIsTotalNotPerReply(t *testing.T) {
	m := fakesmtp.EngineModes[0]
	srv := &rt2Server{ext: m.Ext}
	st := rt4Styles[1] // Postfix: RSET and QUIT confirm
	rt4Hook(srv, st, func(c rt2Cmd) ([]string, bool) {
		if c.conn == 1 && c.verb == "END" {
			return []string{"KEEP", "~600ms", st.reply(srv, "END")}, true
		}
		return nil, false
	})
	s := rtRelay(t, srv.serve)
	c := testkit.NewClient(t, s, &mxrelay.Options{MaxEmailsPerSession: 5, BatchWait: 50 * time.Millisecond,
		SessionTimeout: 250 * time.Millisecond, CommandTimeout: time.Second})
	subjs := rtNumbered("g", 3)
	hs := rtEnqueue(t, c, subjs, rtMailTo(), mxrelay.WithRetries(0))
	var bad []string
	rtWait(t, srv, subjs, hs, func(o rt3Outcome, res *mxrelay.Result) {
		t.Logf("%v attempts=%d", o, res.Attempts)
		o.check(t)
		if !o.delivered() {
			bad = append(bad, o.String())
		}
	})
	assert.Empty(t, bad, "replies each within CommandTimeout of the last, yet the drain cut them")
}

// BREAK. An email the SessionTimeout drain refuses before its end of data
// (its envelope out, its end of data not yet written) is charged an
// attempt and, on its last allowed one, fails for good with
// "transaction withdrawn before its end of data". README row
// "SessionTimeout passes": "the session takes no more emails and writes
// no more ends of data ...; the emails not finished go in the next
// session"; Options.SessionTimeout: "The emails not finished go in the
// next session". The session's own deadline is not an attempt of the
// email; WithRetries(0) only limits how often the server is tried.
// In the DATA modes the refusal also closes the connection (the only way
// to stop a DATA): the session that drained never QUITs and is reported
// failed.
func TestRedTeam6SessionTimeoutWithdrawnChargedAttempt(t *testing.T) {
	for _, m := range fakesmtp.EngineModes[1:] {
		rtRun(t, m.Name, func(t *testing.T) {
			srv := &rt2Server{ext: m.Ext}
			st := rt4Styles[0] // go-smtp: one waits for confirmation, so the session drains
			rt4Hook(srv, st, rt5SlowRcpt(srv, st, nil, "~600ms", false))
			s := rtRelay(t, srv.serve)
			ev := &rt6Events{}
			c := testkit.NewClient(t, s, &mxrelay.Options{MaxEmailsPerSession: 5, BatchWait: 100 * time.Millisecond,
				SessionTimeout: 400 * time.Millisecond, CommandTimeout: 1500 * time.Millisecond, OnEvent: ev.on})
			subjs := []string{"one", "two"}
			hs := rtEnqueue(t, c, subjs, rtMailTo(), mxrelay.WithRetries(0))
			var two rt3Outcome
			var twoRes *mxrelay.Result
			rtWait(t, srv, subjs, hs, func(o rt3Outcome, res *mxrelay.Result) {
				t.Logf("%s: %v attempts=%d ends=%d", m.Name, o, res.Attempts, srv.endsN(o.subj))
				o.check(t)
				if o.subj == "two" {
					two, twoRes = o, res
				}
			})
			if e, ok := ev.first(); ok {
				t.Logf("%s: first session: %v err=%v", m.Name, e.Type, e.Err)
			}
			assert.NoError(t, two.err, "two, refused its end of data by the SessionTimeout drain, did not go in the next session")
			assert.Equal(t, 1, two.kept)
			assert.LessOrEqual(t, twoRes.Attempts, 1, "the drain's refusal was counted as an attempt")
		})
	}
}

// FOUND, KEPT AS DOCUMENTED. The DATA modes: the drain refuses the end of
// data by closing the connection (the only way to stop a DATA), so the
// session ends with no QUIT and is reported sessionFailed, where f96e9d0
// says a drained session is completed. Writing that end of data instead
// would let a stalled server make the email unknown rather than retried
// (TestRedTeam5SessionTimeoutDrainWritesEndOfData), which matters more
// than the event's name; the 354 has confirmed every email before it, so
// the cut loses no verdict. Held: the event says failed, and both emails
// are delivered once, neither maybe.
func TestRedTeam6DataDrainRefusalSessionEvent(t *testing.T) {
	for _, m := range []rtMode{fakesmtp.EngineModes[1], fakesmtp.EngineModes[3]} {
		rtRun(t, m.Name, func(t *testing.T) {
			srv := &rt2Server{ext: m.Ext}
			st := rt4Styles[0]
			quits := 0
			var mu sync.Mutex
			slow := rt5SlowRcpt(srv, st, nil, "~600ms", false)
			rt4Hook(srv, st, func(c rt2Cmd) ([]string, bool) {
				if c.verb == "QUIT" && c.conn == 1 {
					mu.Lock()
					quits++
					mu.Unlock()
				}
				return slow(c)
			})
			s := rtRelay(t, srv.serve)
			ev := &rt6Events{}
			c := testkit.NewClient(t, s, &mxrelay.Options{MaxEmailsPerSession: 5, BatchWait: 100 * time.Millisecond,
				SessionTimeout: 400 * time.Millisecond, CommandTimeout: 1500 * time.Millisecond, OnEvent: ev.on})
			hs := rtEnqueue(t, c, []string{"one", "two"}, rtMailTo(), mxrelay.WithRetries(3))
			for _, h := range hs {
				res, err := h.Wait(testkit.Ctx(t))
				require.NoError(t, err)
				assert.False(t, res.MaybeDelivered)
			}
			assert.Equal(t, 1, srv.keptN("one"))
			assert.Equal(t, 1, srv.keptN("two"))
			e, ok := ev.first()
			require.True(t, ok)
			mu.Lock()
			q := quits
			mu.Unlock()
			t.Logf("%s: first session %v err=%v; QUITs on conn 1: %d", m.Name, e.Type, e.Err, q)
			assert.Equal(t, mxrelay.EventSessionFailed, e.Type, "the DATA stopped by closing")
		})
	}
}

// HELD. Close called twice at once, the session stalled on QUIT after a
// 250 waiting for confirmation: each Close returns within its own context
// plus a second.
func TestRedTeam6CloseTwiceConcurrently(t *testing.T) {
	for _, m := range []rtMode{fakesmtp.EngineModes[0], fakesmtp.EngineModes[3]} {
		rtRun(t, m.Name, func(t *testing.T) {
			srv := &rt2Server{ext: m.Ext}
			st := rt4Styles[0]
			s, quit := rt5QuitStalls(t, srv, st, 0, nil)
			c := rt5Client(t, s, &mxrelay.Options{MaxEmailsPerSession: 1,
				BatchWait: 5 * time.Millisecond, CommandTimeout: 6 * time.Second})
			h, err := c.Enqueue(testkit.Mail("one"), mxrelay.WithRetries(0))
			require.NoError(t, err)
			rt5Await(t, quit, "QUIT")
			long := make(chan time.Duration, 1)
			go func() {
				d, _ := rt5Close(c, 3*time.Second)
				long <- d
			}()
			synctest.Wait() // the first Close is under way
			short, _ := rt5Close(c, 100*time.Millisecond)
			l := <-long
			res, errOne := h.Wait(context.Background())
			t.Logf("%s: Close(3s) %v, Close(100ms) %v; one: err=%v maybe=%v kept=%d", m.Name, l.Round(10*time.Millisecond),
				short.Round(10*time.Millisecond), errOne, res.MaybeDelivered, srv.keptN("one"))
			assert.Less(t, short, 100*time.Millisecond+time.Second+400*time.Millisecond)
			assert.Less(t, l, 3*time.Second+time.Second+400*time.Millisecond)
			o := rt3Of(srv, "one", res, errOne)
			o.check(t)
		})
	}
}

// HELD. Close with SpoolDir and WithRetries(0): an email whose envelope is out
// when Close's context ends is refused its end of data by the drain; it
// must be handed back (ErrClosed, ErrSpooled, file kept, no attempt),
// the email before it delivered, and a next Client sends it once.
func TestRedTeam6CloseDrainRefusedSpoolLastTry(t *testing.T) {
	for _, m := range fakesmtp.EngineModes[1:] {
		rtRun(t, m.Name, func(t *testing.T) {
			srv := &rt2Server{ext: m.Ext}
			st := rt4Styles[0]
			rcpt2 := rt5Signal()
			rt4Hook(srv, st, rt5SlowRcpt(srv, st, rcpt2, "~300ms", false))
			s := rtRelay(t, srv.serve)
			dir := t.TempDir()
			c1 := rt5Client(t, s, &mxrelay.Options{SpoolDir: dir, MaxEmailsPerSession: 5,
				BatchWait: 100 * time.Millisecond, CommandTimeout: 3 * time.Second})
			hs := rtEnqueue(t, c1, []string{"one", "two"}, rtMailTo(), mxrelay.WithRetries(0))
			rt5Await(t, rcpt2, "two's RCPT")
			took, _ := rt5Close(c1, 50*time.Millisecond)
			res1, err1 := hs[0].Wait(context.Background())
			res2, err2 := hs[1].Wait(context.Background())
			t.Logf("%s: Close %v; one: err=%v maybe=%v kept=%d; two: err=%v maybe=%v attempts=%d ends=%d",
				m.Name, took.Round(10*time.Millisecond), err1, res1.MaybeDelivered, srv.keptN("one"), err2, res2.MaybeDelivered,
				res2.Attempts, srv.endsN("two"))
			assert.Less(t, took, 50*time.Millisecond+time.Second+400*time.Millisecond)
			assert.NoError(t, err1)
			assert.ErrorIs(t, err2, mxrelay.ErrClosed)
			assert.ErrorIs(t, err2, mxrelay.ErrSpooled)
			assert.Zero(t, res2.Attempts)
			c2 := testkit.NewClient(t, s, &mxrelay.Options{SpoolDir: dir})
			rec := c2.Recovered()
			t.Logf("recovered %d", len(rec))
			require.Len(t, rec, 1)
			_, err := rec[0].Wait(testkit.Ctx(t))
			assert.NoError(t, err)
			assert.Equal(t, 1, srv.keptN("one"))
			assert.Equal(t, 1, srv.keptN("two"))
		})
	}
}
