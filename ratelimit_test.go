package mxrelay_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mxrelay/mxrelay"
	"github.com/mxrelay/mxrelay/relaytest"
)

// One limiter for every session: three sessions at once stay under an
// upstream that throttles past 5 emails a quarter second, with the
// Client limited to 10 a second. With a limiter per session (30 a second
// in all), or none, the upstream answers 451.
func TestRateLimitIsSharedBySessions(t *testing.T) {
	s := newRelay(t, &relaytest.Options{Throttle: &relaytest.Throttle{Limit: 5, Per: 250 * time.Millisecond}})
	c := newClient(t, s, &mxrelay.Options{
		MaxConcurrentSessions: 3,
		RateLimit:             mxrelay.RateLimit{Emails: 10, Per: time.Second},
	})
	var hs []*mxrelay.Handle
	for i := range 24 {
		h, err := c.Enqueue(mail(fmt.Sprint("paced ", i)), mxrelay.WithRetries(0))
		require.NoError(t, err)
		hs = append(hs, h)
	}
	for _, h := range hs {
		_, err := h.Wait(ctxT(t))
		require.NoError(t, err)
	}
	assert.Zero(t, s.Stats().Throttled, "the upstream had to throttle")
	assert.Len(t, s.Mailbox(), 24)
}

// The same upstream without a limit: the test above can fail.
func TestWithoutRateLimitTheUpstreamThrottles(t *testing.T) {
	s := newRelay(t, &relaytest.Options{Throttle: &relaytest.Throttle{Limit: 5, Per: time.Hour}})
	c := newClient(t, s, &mxrelay.Options{MaxConcurrentSessions: 3, Throttle: mxrelay.Throttle{Disable: true}})
	var hs []*mxrelay.Handle
	for i := range 12 {
		h, err := c.Enqueue(mail(fmt.Sprint("unpaced ", i)), mxrelay.WithRetries(0))
		require.NoError(t, err)
		hs = append(hs, h)
	}
	for _, h := range hs {
		h.Wait(ctxT(t))
	}
	assert.Equal(t, 7, s.Stats().Throttled)
}

func TestRateLimitValidation(t *testing.T) {
	for _, r := range []mxrelay.RateLimit{{Emails: -1, Per: time.Second}, {Emails: 1}, {Emails: 1, Per: -time.Second}, {Emails: 1, Per: time.Second, Burst: -1}} {
		_, err := mxrelay.New("ws://127.0.0.1:1/smtp", "k", &mxrelay.Options{RateLimit: r})
		assert.Error(t, err, "%+v", r)
	}
}

// EnqueueWait waits for room instead of failing, gives up with its
// context, and ends with ErrClosed when the Client closes.
func TestEnqueueWait(t *testing.T) {
	s := newRelay(t, nil)
	s.SetDown(true) // nothing leaves the queue by sending
	c, err := mxrelay.New(s.URL, s.APIKey, &mxrelay.Options{MaxQueueSize: 2, ReconnectInterval: time.Hour})
	require.NoError(t, err)
	first, err := c.Enqueue(mail("one"))
	require.NoError(t, err)
	_, err = c.Enqueue(mail("two"))
	require.NoError(t, err)
	_, err = c.Enqueue(mail("three"))
	require.ErrorIs(t, err, mxrelay.ErrQueueFull)

	short, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	_, err = c.EnqueueWait(short, mail("three"))
	require.ErrorIs(t, err, mxrelay.ErrQueueFull)
	require.ErrorIs(t, err, context.DeadlineExceeded)

	got := make(chan error, 1)
	go func() {
		_, err := c.EnqueueWait(ctxT(t), mail("three"))
		got <- err
	}()
	select {
	case err := <-got:
		t.Fatalf("EnqueueWait returned %v with the queue full", err)
	case <-time.After(50 * time.Millisecond):
	}
	first.Cancel() // a place frees up
	require.NoError(t, <-got)
	assert.Equal(t, 2, c.QueueSize())

	go func() {
		_, err := c.EnqueueWait(ctxT(t), mail("four"))
		got <- err
	}()
	ctx, cancelClose := context.WithCancel(context.Background())
	cancelClose()
	c.Close(ctx)
	require.ErrorIs(t, <-got, mxrelay.ErrClosed)
}
