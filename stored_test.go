package mxrelay_test

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mxrelay/mxrelay"
	"github.com/mxrelay/mxrelay/internal/testkit"
)

// keyed is the email of subject s with the IdempotencyKey k and the ID id.
func keyed(s, k, id string) mxrelay.Email {
	e := testkit.Mail(s)
	e.IdempotencyKey, e.ID = k, id
	return e
}

// With SpoolDir an IdempotencyKey is one email: a second Enqueue with it
// gets the first one's Handle, and after a restart, the result the spool
// kept; Client.Result reads it by ID, in the next Client too.
func TestIdempotencyKeyInTheSpool(t *testing.T) {
	relay := testkit.NewRelay(t, nil)
	dir := t.TempDir()
	ctx := testkit.Ctx(t)
	c := testkit.NewClient(t, relay, &mxrelay.Options{SpoolDir: dir, BatchWait: time.Hour, MaxEmailsPerSession: 2})
	h1, err := c.Enqueue(keyed("once", "order-1", "one"))
	require.NoError(t, err)
	h2, err := c.Enqueue(keyed("once", "order-1", "two")) // the key decides, not the ID
	require.NoError(t, err)
	assert.Same(t, h1, h2)
	_, err = c.Result(ctx, "one")
	assert.ErrorIs(t, err, mxrelay.ErrNotFinished)
	_, err = c.Enqueue(keyed("other", "", "other")) // two wait: the session goes
	require.NoError(t, err)
	res, err := h2.Wait(ctx)
	require.NoError(t, err)
	assert.Equal(t, "one", res.EmailID)
	require.NoError(t, c.Close(ctx))
	_, err = c.Result(ctx, "one")
	assert.ErrorIs(t, err, mxrelay.ErrClosed)

	c = testkit.NewClient(t, relay, &mxrelay.Options{SpoolDir: dir})
	h3, err := c.Enqueue(keyed("once", "order-1", "three"))
	require.NoError(t, err)
	assert.Equal(t, "one", h3.ID())
	got, err := h3.Wait(ctx)
	require.NoError(t, err, "the result the spool kept")
	assert.Equal(t, mxrelay.OutcomeDelivered, got.Outcome)
	assert.Equal(t, res.Accepted, got.Accepted)
	assert.Equal(t, res.Reply, got.Reply)
	got, err = c.Result(ctx, "one")
	require.NoError(t, err)
	assert.Equal(t, mxrelay.OutcomeDelivered, got.Outcome)
	assert.Equal(t, res.Queued.UnixMicro(), got.Queued.UnixMicro())
	_, err = c.Result(ctx, "never")
	assert.ErrorIs(t, err, mxrelay.ErrNoSuchEmail)
	require.NoError(t, c.Close(ctx))
	assert.Equal(t, 1, testkit.CountSubject(relay, "once"))
}

// In memory an IdempotencyKey is one email while it waits; its result is
// kept for Client.Result with ResultRetention, and not without it.
func TestIdempotencyKeyInMemory(t *testing.T) {
	relay := testkit.NewRelay(t, nil)
	ctx := testkit.Ctx(t)
	for _, keep := range []time.Duration{0, time.Hour} {
		c := testkit.NewClient(t, relay, &mxrelay.Options{BatchWait: time.Hour, MaxEmailsPerSession: 2, ResultRetention: keep})
		h1, err := c.Enqueue(keyed("memory", "k", "m1"))
		require.NoError(t, err)
		h2, err := c.Enqueue(keyed("memory", "k", "m2"))
		require.NoError(t, err)
		assert.Same(t, h1, h2)
		_, err = c.Enqueue(keyed("memory other", "", "m3"))
		require.NoError(t, err)
		res, err := h1.Wait(ctx)
		require.NoError(t, err)
		got, err := c.Result(ctx, "m1")
		if keep == 0 {
			assert.ErrorIs(t, err, mxrelay.ErrNoSuchEmail, "no result kept in memory")
		} else {
			require.NoError(t, err)
			assert.Equal(t, res.Outcome, got.Outcome)
			assert.Equal(t, res.Accepted, got.Accepted)
		}
		require.NoError(t, c.Close(ctx))
	}
	assert.Equal(t, 2, testkit.CountSubject(relay, "memory"), "once per Client")
}
