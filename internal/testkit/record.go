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
	mu      sync.Mutex
	events  []mxrelay.Event
	changed chan struct{} // closed (and replaced) by each On
}

// On records e.
func (r *Recorder) On(e mxrelay.Event) {
	r.mu.Lock()
	r.events = append(r.events, e)
	if r.changed != nil {
		close(r.changed)
		r.changed = nil
	}
	r.mu.Unlock()
}

// Await waits until there are n events of type t, and reports whether
// there were before ctx ended.
func (r *Recorder) Await(ctx context.Context, t mxrelay.EventType, n int) bool {
	return r.AwaitFunc(ctx, func(events []mxrelay.Event) bool {
		k := 0
		for _, e := range events {
			if e.Type == t {
				k++
			}
		}
		return k >= n
	})
}

// AwaitFunc waits until the events recorded so far satisfy ok, and
// reports whether they did before ctx ended.
func (r *Recorder) AwaitFunc(ctx context.Context, ok func(events []mxrelay.Event) bool) bool {
	for {
		r.mu.Lock()
		if ok(r.events) {
			r.mu.Unlock()
			return true
		}
		if r.changed == nil {
			r.changed = make(chan struct{})
		}
		changed := r.changed
		r.mu.Unlock()
		select {
		case <-changed:
		case <-ctx.Done():
			return false
		}
	}
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
