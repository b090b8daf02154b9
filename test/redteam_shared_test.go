package test

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mxrelay/mxrelay"
	"github.com/mxrelay/mxrelay/internal/testkit"
)

// The red team's attacks on the Client on a shared store (issue 12):
// PostgreSQL's connections broken the ways a network breaks them (a
// COMMIT whose reply is lost, a database down, a database that hangs)
// through pgProxy, and what the Client then reports.

// TestSharedStoreEnqueueCommitCutIsHonest: the connection breaks after
// PostgreSQL committed Enqueue's email and before its reply reached the
// store (the store's contract: ErrUnavailable, "the commit may have
// reached the store"). The email is in the store and is sent. Enqueue
// must then either succeed (it was accepted) or fail with an error that
// says the email may have been accepted; an error that says nothing of
// the kind makes a caller without an IdempotencyKey send it again, a
// second copy without MaybeDelivered.
func TestSharedStoreEnqueueCommitCutIsHonest(t *testing.T) {
	q := testkit.NewQueue(t)
	st, p := proxiedStore(t, q)
	relay := testkit.NewRelay(t, nil)
	var rec testkit.Recorder
	c := testkit.NewClient(t, relay, &mxrelay.Options{Store: st, OnEvent: rec.On})
	ctx := testkit.Ctx(t)

	cut := p.cutNextCommit()
	e := testkit.Mail("cut")
	e.ID = "cut"
	h, err := c.Enqueue(e)
	select {
	case <-cut:
	default:
		t.Fatal("the proxy saw no COMMIT")
	}
	kept := q.Count(`SELECT count(*) FROM {s}.email WHERE id = 'cut'`)
	require.Equal(t, 1, kept, "PostgreSQL committed the email")
	if err == nil {
		res, werr := h.Wait(ctx)
		require.NoError(t, werr)
		assert.Equal(t, mxrelay.OutcomeDelivered, res.Outcome)
		assert.Equal(t, 1, testkit.CountSubject(relay, "cut"))
		return
	}
	// Enqueue failed. Is the email sent all the same? Any Client claims
	// it as any email (this one too: the store's notification wakes it).
	other := q.Store(t, nil)
	testkit.NewClient(t, relay, &mxrelay.Options{Store: other})
	r, werr := other.WaitResult(ctx, "cut")
	require.NoError(t, werr, "the email Enqueue refused has no result either")
	assert.Equal(t, 1, testkit.CountSubject(relay, "cut"))
	assert.Failf(t, "Enqueue failed for an email it accepted",
		"Enqueue returned %q, yet the email was accepted and then delivered=%v: a caller that retries sends a second copy without MaybeDelivered",
		err, r.Delivered)
}
