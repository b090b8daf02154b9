package test

import (
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/mxrelay/mxrelay"
	"github.com/mxrelay/mxrelay/internal/fakesmtp"
	"github.com/mxrelay/mxrelay/internal/testkit"
	"github.com/mxrelay/mxrelay/relaytest"
)

// The red team's shared pieces: the scripted upstreams, and the helpers
// that send emails through them and judge what became of each against
// what the server kept.

// rt2Cmd is one command the red-team server read, for its hook.
type rt2Cmd struct {
	conn int    // connection, from 1
	n    int    // command number in the connection, from 1 (EHLO excluded)
	tx   int    // transaction (MAIL count) in the connection, from 1
	verb string // MAIL, RCPT, RSET, NOOP, QUIT, DATA, CHUNK, END, ...
	rcpt int    // for RCPT: its index in the transaction, from 0
	subj string // for END: the message's Subject
}

// rt2Server is rtServer with QUIT scriptable as well, each command
// numbered, and RCPTs indexed: a fakesmtp.Session whose hook returns the
// writes (as fakesmtp's Play takes them: "CUT" closes, "~Nms" pauses,
// "STALL" stops until the test ends; and "KEEP" marks the message kept,
// "HANG" stops answering until the client hangs up); ok=false does the
// honest thing, an honest END keeping the message.
type rt2Server struct {
	ext      []string
	enhanced bool
	rset     string // the honest RSET reply; default 250 2.0.0 ok
	hook     func(c rt2Cmd) (lines []string, ok bool)

	mu    sync.Mutex
	conns int
	kept  map[string]int
	ends  map[string]int
}

func (s *rt2Server) keptN(subject string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.kept[subject]
}

func (s *rt2Server) endsN(subject string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.ends[subject]
}

// honest is an honest server's reply to verb, in s's wording.
func (s *rt2Server) honest(verb string) string {
	if verb == "RSET" && s.rset != "" {
		return s.rset
	}
	return fakesmtp.Honest(verb, s.enhanced)
}

func (s *rt2Server) serve(c *fakesmtp.Conn) {
	s.mu.Lock()
	s.conns++
	cmd := rt2Cmd{conn: s.conns}
	if s.kept == nil {
		s.kept, s.ends = map[string]int{}, map[string]int{}
	}
	s.mu.Unlock()
	hang := false
	sess := &fakesmtp.Session{Ext: s.ext, Enhanced: s.enhanced,
		Directive: func(w string) (handled, more bool) {
			switch w {
			case "KEEP":
				s.mu.Lock()
				s.kept[cmd.subj]++
				s.mu.Unlock()
				return true, true
			case "HANG":
				hang = true
				return true, false
			}
			return false, false
		},
		Answer: func(fc fakesmtp.Cmd) ([]string, bool) {
			switch fc.Verb {
			case "EHLO", "BDAT": // not scripted; a BDAT is its CHUNK or END
				return nil, false
			case "MAIL":
				cmd.tx, cmd.subj = fc.Tx, ""
			case "RCPT":
				cmd.rcpt = fc.Rcpt
			case "END":
				cmd.subj = testkit.SubjectOf([]byte(fc.Message))
				s.mu.Lock()
				s.ends[cmd.subj]++
				s.mu.Unlock()
			}
			cmd.n++
			cmd.verb = fc.Verb
			if hang {
				return nil, true
			}
			if s.hook != nil {
				if lines, ok := s.hook(cmd); ok {
					return lines, true
				}
			}
			lines := []string{s.honest(fc.Verb)}
			if fc.Verb == "END" {
				lines = append(lines, "KEEP")
			}
			return lines, true
		}}
	sess.Serve(c)
}

// rtServer is the first round's scripted upstream: rt2Server behind a
// hook given the connection, the transaction, the verb and (for an end of
// data) the Subject. Its hook returns the writes, as rt2Server's do;
// ok=false does the honest thing, an honest END keeping the message. QUIT
// is not scripted: it is answered "221 2.0.0 bye".
type rtServer struct {
	ext      []string
	enhanced bool // advertise ENHANCEDSTATUSCODES and use enhanced codes
	hook     func(conn, tx int, verb, subject string) (lines []string, ok bool)

	once sync.Once
	srv  rt2Server
}

// inner is the rt2Server that does the work, made on first use.
func (s *rtServer) inner() *rt2Server {
	s.once.Do(func() {
		s.srv.ext, s.srv.enhanced = s.ext, s.enhanced
		s.srv.hook = func(c rt2Cmd) ([]string, bool) {
			if c.verb == "QUIT" {
				return []string{"221 2.0.0 bye"}, true
			}
			if s.hook == nil {
				return nil, false
			}
			subject := ""
			if c.verb == "END" {
				subject = c.subj
			}
			return s.hook(c.conn, c.tx, c.verb, subject)
		}
	})
	return &s.srv
}

func (s *rtServer) serve(c *fakesmtp.Conn)   { s.inner().serve(c) }
func (s *rtServer) keptN(subject string) int { return s.inner().keptN(subject) }
func (s *rtServer) endsN(subject string) int { return s.inner().endsN(subject) }

// firstConn is a hook for rtServer that scripts the first connection
// only, one command at a time.
func firstConn(hook func(tx int, verb string) ([]string, bool)) func(conn, tx int, verb, subject string) ([]string, bool) {
	var mu sync.Mutex
	return func(conn, tx int, verb, _ string) ([]string, bool) {
		mu.Lock()
		defer mu.Unlock()
		if conn != 1 {
			return nil, false
		}
		return hook(tx, verb)
	}
}

// rtMode is one of fakesmtp.EngineModes.
type rtMode = struct {
	Name string
	Ext  []string
}

// rtRelay starts an upstream served by serve and a relay in front of it
// (in memory in a Bubble).
func rtRelay(t *testing.T, serve func(c *fakesmtp.Conn)) *relaytest.Server {
	t.Helper()
	u := testkit.NewUpstream(t, serve)
	return testkit.NewRelay(t, &relaytest.Options{UpstreamAddr: u.Addr})
}

// rtRun runs f as the parallel subtest name, in a Bubble: the red team's
// slow servers ("~300ms"), timeouts and Close deadlines run on its
// clock, and the durations the tests check are exact.
func rtRun(t *testing.T, name string, f func(t *testing.T)) {
	t.Run(name, func(t *testing.T) {
		t.Parallel()
		testkit.Bubble(t, f)
	})
}

// rtMailTo makes, for a Subject, mail to the recipients to (none: b@).
func rtMailTo(to ...string) func(subject string) mxrelay.Email {
	return func(subject string) mxrelay.Email { return testkit.Mail(subject, to...) }
}

// rtNumbered is the subjects prefix0 .. prefix<n-1>.
func rtNumbered(prefix string, n int) []string {
	var subjs []string
	for i := range n {
		subjs = append(subjs, fmt.Sprint(prefix, i))
	}
	return subjs
}

// rtEnqueue enqueues, with opts, the email mk makes for each subject.
func rtEnqueue(t *testing.T, c *mxrelay.Client, subjects []string, mk func(subject string) mxrelay.Email, opts ...mxrelay.SendOption) []*mxrelay.Handle {
	t.Helper()
	var hs []*mxrelay.Handle
	for _, subj := range subjects {
		h, err := c.Enqueue(mk(subj), opts...)
		require.NoError(t, err)
		hs = append(hs, h)
	}
	return hs
}

// rtWait waits for each of hs in turn, the email of subjects[i], and
// gives each what became of it, with what srv kept of it, as it ends.
func rtWait(t *testing.T, srv *rt2Server, subjects []string, hs []*mxrelay.Handle, each func(o rt3Outcome, res *mxrelay.Result)) {
	t.Helper()
	for i, h := range hs {
		res, err := h.Wait(testkit.Ctx(t))
		require.NotNil(t, res)
		each(rt3Outcome{subj: subjects[i], err: err, maybe: res.MaybeDelivered, kept: srv.keptN(subjects[i])}, res)
	}
}

var rt2Subjects = []string{"one", "two", "three"}

// rtSession sends the emails of rt2Subjects, each made by mk, with
// WithRetries(retries), in one session through srv, and gives each what
// became of it as it ends. Options o (nil: none) get the session's size,
// BatchWait 150 ms and, unless o sets one, CommandTimeout timeout.
func rtSession(t *testing.T, srv *rt2Server, o *mxrelay.Options, timeout time.Duration, mk func(subject string) mxrelay.Email, retries int, each func(o rt3Outcome, res *mxrelay.Result)) {
	t.Helper()
	s := rtRelay(t, srv.serve)
	if o == nil {
		o = &mxrelay.Options{}
	}
	o.MaxEmailsPerSession = len(rt2Subjects)
	o.BatchWait = 150 * time.Millisecond
	if o.CommandTimeout == 0 {
		o.CommandTimeout = timeout
	}
	c := testkit.NewClient(t, s, o)
	rtWait(t, srv, rt2Subjects, rtEnqueue(t, c, rt2Subjects, mk, mxrelay.WithRetries(retries)), each)
}

// rtOutcomes is rtSession with no retry: what became of each email, each
// logged.
func rtOutcomes(t *testing.T, srv *rt2Server, o *mxrelay.Options, timeout time.Duration, mk func(subject string) mxrelay.Email) []rt3Outcome {
	t.Helper()
	var out []rt3Outcome
	rtSession(t, srv, o, timeout, mk, 0, func(o rt3Outcome, _ *mxrelay.Result) {
		t.Log(o)
		out = append(out, o)
	})
	return out
}

// rt3Outcome is what became of one email.
type rt3Outcome struct {
	subj  string
	err   error
	maybe bool
	kept  int
}

func (o rt3Outcome) String() string {
	return fmt.Sprintf("email %s: err=%v maybe=%v; server kept %d", o.subj, o.err, o.maybe, o.kept)
}

// rt3Of is what became of the email subj, its result res and err, with
// what srv kept of it.
func rt3Of(srv *rt2Server, subj string, res *mxrelay.Result, err error) rt3Outcome {
	return rt3Outcome{subj: subj, err: err, maybe: res.MaybeDelivered, kept: srv.keptN(subj)}
}

// check fails t where o's result contradicts what the server kept.
func (o rt3Outcome) check(t *testing.T) {
	t.Helper()
	if b := o.broken(o.String()); b != "" {
		t.Error(b)
	}
}

// delivered reports a clean delivery: no error, not maybe.
func (o rt3Outcome) delivered() bool { return o.err == nil && !o.maybe }

// failedClean reports a clean failure: an error, not maybe.
func (o rt3Outcome) failedClean() bool { return o.err != nil && !o.maybe }

// broken says how o's result contradicts what the server kept (the
// README's Guarantees), described as line; "" if it does not.
func (o rt3Outcome) broken(line string) string {
	switch {
	case o.delivered() && o.kept != 1:
		return "delivered (not maybe) but kept " + fmt.Sprint(o.kept) + ": " + line
	case o.failedClean() && o.kept != 0:
		return "failed (not maybe) but kept " + fmt.Sprint(o.kept) + ": " + line
	}
	return ""
}
