// Package testkit holds the helpers that the root package's tests and the
// robustness suites in test/ share: options with short intervals, a
// relaytest relay and a Client closed (and checked) when the test ends,
// emails by Subject, an event recorder, a log buffer, a hand-written
// relay, the spool's files, and Bubble, which runs a test under
// testing/synctest with its relay, upstream and client in memory. It is
// for tests only.
package testkit

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mxrelay/mxrelay"
	"github.com/mxrelay/mxrelay/relaytest"
)

// Fast returns o (a new Options if nil) with every interval it leaves zero
// short, so that tests exercise retries and reconnects without sleeping
// through production defaults.
func Fast(o *mxrelay.Options) *mxrelay.Options {
	if o == nil {
		o = &mxrelay.Options{}
	}
	set := func(d *time.Duration, v time.Duration) {
		if *d == 0 {
			*d = v
		}
	}
	set(&o.RetryInterval, 5*time.Millisecond)
	set(&o.MaxRetryInterval, 20*time.Millisecond)
	set(&o.ReconnectInterval, 5*time.Millisecond)
	set(&o.MaxReconnectInterval, 20*time.Millisecond)
	set(&o.AuthTimeout, 2*time.Second)
	set(&o.ChannelTimeout, 2*time.Second)
	set(&o.CommandTimeout, 3*time.Second)
	set(&o.SessionTimeout, 30*time.Second)
	set(&o.IdleTimeout, time.Second)
	return o
}

// NewRelay starts a relaytest.Server configured by o (nil: defaults), in a
// Bubble on its network in memory. It is closed when the test ends.
func NewRelay(t testing.TB, o *relaytest.Options) *relaytest.Server {
	t.Helper()
	n := network(t)
	if n != nil {
		var in relaytest.Options
		if o != nil {
			in = *o
		}
		in.Network, o = n, &in
	}
	s := relaytest.NewServer(o)
	if n != nil {
		inMem.Store(s, n)
		t.Cleanup(func() { inMem.Delete(s) })
	}
	t.Cleanup(s.Close)
	return s
}

// NewClient returns a client of s with options ClientOptions(s, o). Every
// Result it gives out in an event is checked (CheckResult); when the test
// ends the client is closed and checked to have given every email a
// result.
func NewClient(t testing.TB, s *relaytest.Server, o *mxrelay.Options) *mxrelay.Client {
	t.Helper()
	o = ClientOptions(s, o)
	user := o.OnEvent
	o.OnEvent = func(e mxrelay.Event) {
		if e.Result != nil {
			CheckResult(t, e.Result)
		}
		if user != nil {
			user(e)
		}
	}
	c, err := mxrelay.New(s.URL, s.APIKey, o)
	require.NoError(t, err)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		c.Close(ctx)
		st := c.Stats()
		if st.EmailsQueued != st.EmailsDelivered+st.EmailsFailed+st.EmailsReleased {
			t.Errorf("accounting after Close: queued %d != delivered %d + failed %d + released %d", st.EmailsQueued, st.EmailsDelivered, st.EmailsFailed, st.EmailsReleased)
		}
		if st.EmailsUnknown+st.EmailsHandedBack > st.EmailsFailed || st.EmailsUnknown > st.EmailsMaybeDelivered {
			t.Errorf("accounting after Close: unknown %d + handed back %d > failed %d, or unknown > maybe delivered %d", st.EmailsUnknown, st.EmailsHandedBack, st.EmailsFailed, st.EmailsMaybeDelivered)
		}
	})
	return c
}

// CheckResult fails t unless res's fields agree with its Outcome, and each
// refused recipient's reply fields with its error.
func CheckResult(t testing.TB, res *mxrelay.Result) {
	t.Helper()
	var ee *mxrelay.EmailError
	isEmailErr := errors.As(res.Err, &ee)
	closed := errors.Is(res.Err, mxrelay.ErrClosed) || errors.Is(res.Err, mxrelay.ErrSpooled)
	unknown := errors.Is(res.Err, mxrelay.ErrUnknownOutcome)
	var bad string
	switch res.Outcome {
	case mxrelay.OutcomeDelivered:
		if res.Err != nil || !res.Delivered() || len(res.Accepted) == 0 || res.Reply.Code/100 != 2 {
			bad = "delivered with an error, no recipient or no 2xx"
		}
	case mxrelay.OutcomeFailed:
		if !isEmailErr || res.Delivered() || len(res.Accepted) > 0 || unknown || closed {
			bad = "failed, yet delivered, unknown or handed back"
		}
	case mxrelay.OutcomeUnknown:
		if !isEmailErr || res.Delivered() || len(res.Accepted) > 0 || !unknown || !res.MaybeDelivered || closed {
			bad = "unknown without ErrUnknownOutcome or MaybeDelivered"
		}
	case mxrelay.OutcomeHandedBack:
		if !isEmailErr || res.Delivered() || len(res.Accepted) > 0 || !closed {
			bad = "handed back without ErrClosed or ErrSpooled"
		}
	default:
		bad = "no outcome"
	}
	if res.Outcome != mxrelay.OutcomeDelivered && res.Reply != (mxrelay.Reply{}) {
		bad = "a reply for an email not delivered"
	}
	if bad != "" {
		t.Errorf("email %s: %s: outcome %v, err %v, maybe %v, accepted %v, reply %+v", res.EmailID, bad, res.Outcome, res.Err, res.MaybeDelivered, res.Accepted, res.Reply)
	}
	for _, r := range res.Rejected {
		var se *mxrelay.SMTPError
		var want mxrelay.RecipientError
		if errors.As(r.Err, &se) {
			want = mxrelay.RecipientError{Code: se.Code, EnhancedCode: se.EnhancedCode, Message: se.Message}
		}
		if r.Err == nil || r.Code != want.Code || r.EnhancedCode != want.EnhancedCode || r.Message != want.Message {
			t.Errorf("email %s: recipient %s: reply fields %d %v %q, error %v", res.EmailID, r.Address, r.Code, r.EnhancedCode, r.Message, r.Err)
		}
	}
}

// SameResult checks that got, a Result read back from the store, says
// what want, the Result of the Client that sent the email, said.
func SameResult(t *testing.T, want, got *mxrelay.Result) {
	t.Helper()
	assert.Equal(t, want.EmailID, got.EmailID)
	assert.Equal(t, want.Outcome, got.Outcome)
	assert.Equal(t, want.Priority, got.Priority)
	assert.Equal(t, want.Accepted, got.Accepted)
	assert.Equal(t, want.Reply, got.Reply)
	assert.Equal(t, want.Attempts, got.Attempts)
	assert.Equal(t, want.MaybeDelivered, got.MaybeDelivered)
	assert.Equal(t, want.SessionID, got.SessionID)
	require.Len(t, got.Rejected, len(want.Rejected))
	for i, w := range want.Rejected {
		g := got.Rejected[i]
		assert.Equal(t, w.Address, g.Address)
		assert.Equal(t, w.Code, g.Code)
		assert.Equal(t, w.EnhancedCode, g.EnhancedCode)
		assert.Equal(t, w.Message, g.Message)
		assert.Equal(t, w.Error(), g.Error())
	}
	sameErr(t, want.Err, got.Err)
}

// sameErr checks that got, read back, reads and matches as want:
// its text, the sentinels, its *SMTPError and Temporary.
func sameErr(t *testing.T, want, got error) {
	t.Helper()
	if want == nil {
		assert.NoError(t, got)
		return
	}
	require.Error(t, got)
	assert.Equal(t, want.Error(), got.Error())
	for _, target := range []error{mxrelay.ErrClosed, mxrelay.ErrSpooled, mxrelay.ErrCanceled, mxrelay.ErrInvalidEmail,
		mxrelay.ErrUnknownOutcome, mxrelay.ErrTimeout, mxrelay.ErrAuthFailed} {
		assert.Equal(t, errors.Is(want, target), errors.Is(got, target), "errors.Is %v", target)
	}
	var ws, gs *mxrelay.SMTPError
	if assert.Equal(t, errors.As(want, &ws), errors.As(got, &gs), "errors.As *SMTPError") && ws != nil {
		assert.Equal(t, *ws, *gs)
	}
	var we, ge *mxrelay.EmailError
	if assert.Equal(t, errors.As(want, &we), errors.As(got, &ge)) && we != nil {
		assert.Equal(t, we.Temporary(), ge.Temporary())
	}
}

// Ctx is a context that ends after 20 seconds, or when the test ends.
func Ctx(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// Msg is a message from a@ to b@example.com with the Subject subject.
func Msg(subject string) string {
	return "From: a@example.com\r\nTo: b@example.com\r\nSubject: " + subject + "\r\n\r\nHello, " + subject + ".\r\n"
}

// Mail is Msg(subject) from a@example.com to the recipients to (none:
// b@example.com).
func Mail(subject string, to ...string) mxrelay.Email {
	if len(to) == 0 {
		to = []string{"b@example.com"}
	}
	return mxrelay.Email{From: "a@example.com", To: to, Body: strings.NewReader(Msg(subject))}
}

// Subjects lists the Subject of each message in s's mailbox, in order.
func Subjects(s *relaytest.Server) []string {
	var out []string
	for _, m := range s.Mailbox() {
		out = append(out, SubjectOf(m.Data))
	}
	return out
}

// SubjectOf returns the Subject of a message, from its header.
func SubjectOf(data []byte) string {
	if i := bytes.Index(data, []byte("\r\n\r\n")); i >= 0 {
		data = data[:i+2]
	}
	for _, line := range strings.Split(string(data), "\r\n") {
		if v, ok := strings.CutPrefix(line, "Subject: "); ok {
			return v
		}
	}
	return ""
}

// CountSubject is how many messages in s's mailbox have the Subject
// subject.
func CountSubject(s *relaytest.Server, subject string) int {
	n := 0
	for _, got := range Subjects(s) {
		if got == subject {
			n++
		}
	}
	return n
}

// MostCopies is, for each Subject in s's mailbox, the most copies of it
// that any one of its recipients got: 2 or more is an email sent twice.
func MostCopies(s *relaytest.Server) map[string]int {
	most := map[string]int{}
	copies := map[[2]string]int{}
	for _, m := range s.Mailbox() {
		for _, to := range m.To {
			k := [2]string{SubjectOf(m.Data), to}
			copies[k]++
			most[k[0]] = max(most[k[0]], copies[k])
		}
	}
	return most
}

// EnqueueBatch queues n emails, the i-th to r<i>@example.com with subject
// p<i>, and waits for all their results.
func EnqueueBatch(t testing.TB, c *mxrelay.Client, n int) []*mxrelay.Result {
	t.Helper()
	var hs []*mxrelay.Handle
	for i := range n {
		h, err := c.Enqueue(Mail(fmt.Sprint("p", i), fmt.Sprintf("r%d@example.com", i)))
		require.NoError(t, err)
		hs = append(hs, h)
	}
	return Results(t, hs)
}

// Results waits for the result of every handle, in order.
func Results(t testing.TB, hs []*mxrelay.Handle) []*mxrelay.Result {
	t.Helper()
	var out []*mxrelay.Result
	for _, h := range hs {
		res, _ := h.Wait(Ctx(t))
		require.NotNil(t, res)
		out = append(out, res)
	}
	return out
}

// NewTransport returns a Transport for s with options ClientOptions(s, o),
// closed when the test ends.
func NewTransport(t testing.TB, s *relaytest.Server, o *mxrelay.Options) *mxrelay.Transport {
	t.Helper()
	u, err := url.Parse(s.URL)
	require.NoError(t, err)
	port, err := strconv.Atoi(u.Port())
	require.NoError(t, err)
	tr, err := mxrelay.NewTransport(s.APIKey, mxrelay.TransportOptions{Host: u.Hostname(), Port: port, Insecure: true, Options: *ClientOptions(s, o)})
	require.NoError(t, err)
	t.Cleanup(func() { tr.Close(Ctx(t)) })
	return tr
}

// Mode is one of the four ways the engine sends, chosen by what the
// upstream offers (relaytest hides extensions) and by DisablePipelining.
type Mode struct {
	Name     string
	Hide     []string // relaytest.Options.HideExtensions
	Lockstep bool     // mxrelay.Options.DisablePipelining
	Chunking bool     // BDAT is used
}

// Modes are the four Modes.
var Modes = []Mode{
	{"pipelined BDAT", nil, false, true},
	{"pipelined DATA", []string{"CHUNKING"}, false, false},
	{"lock-step BDAT", nil, true, true},
	{"lock-step DATA", []string{"CHUNKING", "PIPELINING"}, false, false},
}
