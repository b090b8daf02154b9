package mxrelay_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/mxrelay/mxrelay"
	"github.com/mxrelay/mxrelay/relaytest"
)

// fast returns options with every interval short, so that tests exercise
// retries and reconnects without sleeping through production defaults.
func fast(o *mxrelay.Options) *mxrelay.Options {
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

func newRelay(t *testing.T, o *relaytest.Options) *relaytest.Server {
	t.Helper()
	s := relaytest.NewServer(o)
	t.Cleanup(s.Close)
	return s
}

// newClient returns a client for s; the client is closed (and checked to
// have given every email a result) when the test ends.
func newClient(t *testing.T, s *relaytest.Server, o *mxrelay.Options) *mxrelay.Client {
	t.Helper()
	o = fast(o)
	user := o.OnEvent
	o.OnEvent = func(e mxrelay.Event) {
		// Every Result the client gives out is checked.
		if e.Result != nil {
			checkResult(t, e.Result)
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
		if st.EmailsQueued != st.EmailsDelivered+st.EmailsFailed {
			t.Errorf("accounting after Close: queued %d != delivered %d + failed %d", st.EmailsQueued, st.EmailsDelivered, st.EmailsFailed)
		}
		if st.EmailsUnknown+st.EmailsHandedBack > st.EmailsFailed || st.EmailsUnknown > st.EmailsMaybeDelivered {
			t.Errorf("accounting after Close: unknown %d + handed back %d > failed %d, or unknown > maybe delivered %d", st.EmailsUnknown, st.EmailsHandedBack, st.EmailsFailed, st.EmailsMaybeDelivered)
		}
	})
	return c
}

// checkResult fails t unless res's fields agree with its Outcome, and each
// refused recipient's reply fields with its error.
func checkResult(t *testing.T, res *mxrelay.Result) {
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

func msg(subject string) string {
	return "From: a@example.com\r\nTo: b@example.com\r\nSubject: " + subject + "\r\n\r\nHello, " + subject + ".\r\n"
}

func mail(subject string, to ...string) mxrelay.Email {
	if len(to) == 0 {
		to = []string{"b@example.com"}
	}
	return mxrelay.Email{From: "a@example.com", To: to, Body: strings.NewReader(msg(subject))}
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// subjects lists the Subject of each message in the mailbox, in order.
func subjects(s *relaytest.Server) []string {
	var out []string
	for _, m := range s.Mailbox() {
		out = append(out, subjectOf(m.Data))
	}
	return out
}

// subjectOf returns the Subject of a message, from its header.
func subjectOf(data []byte) string {
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

func countSubject(s *relaytest.Server, subject string) int {
	n := 0
	for _, got := range subjects(s) {
		if got == subject {
			n++
		}
	}
	return n
}

// recorder collects events.
type recorder struct {
	mu     sync.Mutex
	events []mxrelay.Event
}

func (r *recorder) on(e mxrelay.Event) {
	r.mu.Lock()
	r.events = append(r.events, e)
	r.mu.Unlock()
}

func (r *recorder) types() []mxrelay.EventType {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []mxrelay.EventType
	for _, e := range r.events {
		out = append(out, e.Type)
	}
	return out
}

func (r *recorder) count(t mxrelay.EventType) int {
	n := 0
	for _, got := range r.types() {
		if got == t {
			n++
		}
	}
	return n
}

// logBuffer is a debug slog.Logger writing to a buffer, safe for concurrent use.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

func (l *logBuffer) logger() *slog.Logger {
	return slog.New(slog.NewTextHandler(l, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

var _ = fmt.Sprintf
