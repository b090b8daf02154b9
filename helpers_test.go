package mxrelay_test

import (
	"bytes"
	"context"
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
	c, err := mxrelay.New(s.URL, s.APIKey, fast(o))
	require.NoError(t, err)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		c.Close(ctx)
		st := c.Stats()
		if st.EmailsQueued != st.EmailsProcessed+st.EmailsFailed {
			t.Errorf("accounting after Close: queued %d != delivered %d + failed %d", st.EmailsQueued, st.EmailsProcessed, st.EmailsFailed)
		}
	})
	return c
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
