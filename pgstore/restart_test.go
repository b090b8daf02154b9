package pgstore

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mxrelay/mxrelay/internal/pgtest"
	"github.com/mxrelay/mxrelay/internal/store"
	"github.com/mxrelay/mxrelay/internal/store/storetest"
)

// The database restarts while an email is claimed: while it is down
// every call reports a temporary error; once it is up the store works
// again, the claim still holds, nothing accepted is lost, and the
// listener is back.
func TestDatabaseRestartMidClaim(t *testing.T) {
	c := pgtest.New(t)
	f := newFixtureOn(t, c)
	relisten := make(chan struct{}, 4)
	st := listeningStore(t, f, &Options{hooks: &hooks{listening: func() { relisten <- struct{}{} }}})
	storetest.Wait(t, relisten, "the first connection") // drained
	ctx := context.Background()
	storetest.Accept(t, st, "e1", 0, "x")
	storetest.Accept(t, st, "e2", 0, "x")
	held := storetest.Claim(t, st, "w1", 1)[0]
	delivered := &store.Result{ID: "e1", Delivered: true}

	require.NoError(t, c.Stop())
	err := st.Finish(ctx, held.Token, delivered)
	var ue *store.UnavailableError
	require.ErrorAs(t, err, &ue, "%v", err)
	assert.True(t, ue.Temporary())
	_, _, err = st.Claim(ctx, "w1", 1, time.Hour)
	assert.ErrorIs(t, err, store.ErrUnavailable)
	_, err = st.Accept(ctx, &store.Envelope{ID: "e3"})
	assert.ErrorIs(t, err, store.ErrUnavailable)
	_, err = st.Ending(ctx, []store.Token{held.Token})
	assert.ErrorIs(t, err, store.ErrUnavailable)

	require.NoError(t, c.Start())
	storetest.Wait(t, relisten, "the listener connected again")
	// A connection the pool kept from before the restart may fail once
	// more: a temporary error is tried again, as a caller would.
	again := func(call func() error) error {
		var err error
		for range 3 {
			if err = call(); !errors.Is(err, store.ErrUnavailable) {
				break
			}
		}
		return err
	}
	require.NoError(t, again(func() error { return st.Finish(ctx, held.Token, delivered) }), "the claim held across the restart")
	r, err := st.Result(ctx, "e1")
	require.NoError(t, err)
	assert.True(t, r.Delivered)

	woken := st.Wake()
	require.NoError(t, again(func() error {
		d, err := st.Accept(ctx, &store.Envelope{ID: "e3"})
		if err != nil {
			return err
		}
		_, err = d.Commit(ctx, nil)
		return err
	}))
	storetest.Wait(t, woken, "an accept after the restart wakes the claimers")
	got, _, err := st.Claim(ctx, "w1", 10, time.Hour)
	require.NoError(t, err)
	assert.Equal(t, []string{"e2", "e3"}, storetest.IDs(got), "nothing accepted was lost")
}
