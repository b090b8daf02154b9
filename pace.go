package mxrelay

import (
	"context"
	"errors"
	"fmt"
	"time"

	"golang.org/x/time/rate"
)

// RateLimit is a sending rate: Emails per Per, in bursts of up to Burst
// (zero: 1). The zero RateLimit is no limit.
type RateLimit struct {
	Emails int
	Per    time.Duration
	Burst  int
}

// limiter is the token bucket for r, or nil for no limit.
func (r RateLimit) limiter() *rate.Limiter {
	if r.Emails <= 0 {
		return nil
	}
	return rate.NewLimiter(rate.Limit(float64(r.Emails)/r.Per.Seconds()), max(r.Burst, 1))
}

// pace waits until the rate limit lets one more email go, for a session
// whose context is ctx, after flush (what is written goes out now, not
// in a burst with the next). It reports false when the session should
// end rather than wait: its context would run out first, or ended. The
// token is taken only when it returns true.
func (w *worker) pace(ctx context.Context, flush func() error) bool {
	l := w.c.limiter
	if l == nil {
		return true
	}
	r := l.Reserve()
	d := r.Delay()
	if d == 0 {
		return true
	}
	if dl, ok := ctx.Deadline(); ok && time.Until(dl) < d+w.c.opts.CommandTimeout {
		// Not worth holding the session: the next one waits instead.
		r.Cancel()
		return false
	}
	if flush() != nil {
		r.Cancel()
		return false
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		r.Cancel()
		return false
	}
}

// roomChan is closed when a place in the queue frees up. Take it before
// trying Enqueue, so that a place freed in between is not missed.
func (c *Client) roomChan() <-chan struct{} {
	c.wakeMu.Lock()
	defer c.wakeMu.Unlock()
	return c.roomC
}

// freed wakes the EnqueueWait callers: a place in the queue is free.
func (c *Client) freed() {
	c.wakeMu.Lock()
	close(c.roomC)
	c.roomC = make(chan struct{})
	c.wakeMu.Unlock()
}

// EnqueueWait is Enqueue that, when the queue is full, waits for room
// instead of failing with ErrQueueFull. When ctx ends first it returns an
// error matching ErrQueueFull and ctx's cause; nothing is queued.
func (c *Client) EnqueueWait(ctx context.Context, e Email, opts ...SendOption) (*Handle, error) {
	for {
		room := c.roomChan()
		h, err := c.Enqueue(e, opts...)
		if !errors.Is(err, ErrQueueFull) {
			return h, err
		}
		select {
		case <-room:
		case <-ctx.Done():
			return nil, fmt.Errorf("%w: %w", ErrQueueFull, context.Cause(ctx))
		}
	}
}
