package testkit

import (
	"bytes"
	"context"
	"log/slog"
	"sync"

	"github.com/mxrelay/mxrelay"
)

// Recorder collects a client's events (On is an Options.OnEvent). Its
// methods are safe for concurrent use.
type Recorder struct {
	mu     sync.Mutex
	events []mxrelay.Event
}

// On records e.
func (r *Recorder) On(e mxrelay.Event) {
	r.mu.Lock()
	r.events = append(r.events, e)
	r.mu.Unlock()
}

// Events are the events recorded so far, in order.
func (r *Recorder) Events() []mxrelay.Event {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]mxrelay.Event(nil), r.events...)
}

// Types are the types of the events recorded so far, in order.
func (r *Recorder) Types() []mxrelay.EventType {
	var out []mxrelay.EventType
	for _, e := range r.Events() {
		out = append(out, e.Type)
	}
	return out
}

// Count is how many events of type t were recorded.
func (r *Recorder) Count(t mxrelay.EventType) int {
	n := 0
	for _, got := range r.Types() {
		if got == t {
			n++
		}
	}
	return n
}

// LogBuffer is an io.Writer that keeps what is written, safe for
// concurrent use; Logger logs to it. The zero value is ready to use.
type LogBuffer struct {
	mu      sync.Mutex
	buf     bytes.Buffer
	written chan struct{} // closed (and replaced) by each Write
}

// Write appends p; it does not fail.
func (l *LogBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.written != nil {
		close(l.written)
		l.written = nil
	}
	return l.buf.Write(p)
}

// Await waits until what was written so far satisfies ok, and reports
// whether it did before ctx ended.
func (l *LogBuffer) Await(ctx context.Context, ok func(written string) bool) bool {
	for {
		l.mu.Lock()
		if ok(l.buf.String()) {
			l.mu.Unlock()
			return true
		}
		if l.written == nil {
			l.written = make(chan struct{})
		}
		written := l.written
		l.mu.Unlock()
		select {
		case <-written:
		case <-ctx.Done():
			return false
		}
	}
}

// String is everything written so far.
func (l *LogBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

// Logger is a debug-level text logger writing to l.
func (l *LogBuffer) Logger() *slog.Logger {
	return slog.New(slog.NewTextHandler(l, &slog.HandlerOptions{Level: slog.LevelDebug}))
}
