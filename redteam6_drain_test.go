package mxrelay_test

import (
	"context"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mxrelay/mxrelay"
	"github.com/mxrelay/mxrelay/internal/fakesmtp"
	"github.com/mxrelay/mxrelay/internal/testkit"
)

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
