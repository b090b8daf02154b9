package bench

import (
	"context"
	"fmt"
	"time"

	"github.com/mxrelay/mxrelay"
)

// heapEvery is how often the heap is sampled during a large message.
const heapEvery = 2 * time.Millisecond

// Large is one large message sent.
type Large struct {
	Size    int64
	Elapsed time.Duration
	// PeakHeap is the highest heap (bytes in heap objects, live or not yet
	// collected, sampled every 2 ms) above the heap after a collection
	// before the send, for the whole process: the client's, and the relay's
	// and the sink's too when they run in this process (NewEnv).
	PeakHeap uint64
}

// MiBps is the throughput in MiB/s.
func (l Large) MiBps() float64 { return float64(l.Size) / (1 << 20) / l.Elapsed.Seconds() }

// LargeOurs sends one message of size octets, generated as it is read (a
// Body, which the client reads in place, without a copy), through our
// client c; Elapsed is Send's duration. One small email is sent first so
// that the WebSocket is up and authenticated.
func LargeOurs(ctx context.Context, c *mxrelay.Client, e *Env, m Mail, size int64) (Large, error) {
	if _, err := RunOurs(ctx, c, e.Sink, m, 1); err != nil {
		return Large{}, fmt.Errorf("bench: warm-up: %w", err)
	}
	body, err := NewBody(size)
	if err != nil {
		return Large{}, err
	}
	before := e.Sink.Stats()
	w := watchHeap(heapEvery)
	start := time.Now()
	_, err = c.Send(ctx, mxrelay.Email{From: m.From, To: m.To, Body: body})
	elapsed := time.Since(start)
	peak := w.Stop()
	if err != nil {
		return Large{}, err
	}
	if err := expectDelta(e.Sink, before, 1, size); err != nil {
		return Large{}, err
	}
	return Large{Size: size, Elapsed: elapsed, PeakHeap: peak}, nil
}

// LargeDirect sends one message of size octets with go-smtp's Client over
// a connection from dial; Elapsed runs from MAIL to the reply to the end of
// data.
func LargeDirect(ctx context.Context, dial Dialer, e *Env, m Mail, size int64) (Large, error) {
	body, err := NewBody(size)
	if err != nil {
		return Large{}, err
	}
	c, end, err := openSMTP(ctx, dial)
	if err != nil {
		return Large{}, err
	}
	defer end()
	before := e.Sink.Stats()
	w := watchHeap(heapEvery)
	start := time.Now()
	err = sendOne(c, m, body)
	elapsed := time.Since(start)
	peak := w.Stop()
	if err != nil {
		return Large{}, err
	}
	if err := c.Quit(); err != nil {
		return Large{}, fmt.Errorf("bench: QUIT: %w", err)
	}
	if err := expectDelta(e.Sink, before, 1, size); err != nil {
		return Large{}, err
	}
	return Large{Size: size, Elapsed: elapsed, PeakHeap: peak}, nil
}
