package pgstore

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/mxrelay/mxrelay/internal/store"
)

// listeningStore opens a store with opts (nil: defaults) and returns it
// once its listener listens, after the wake-up that a new connection
// makes. Unless opts say otherwise, the poll is an hour: only a
// notification wakes its claimers.
func listeningStore(t *testing.T, f *fixture, opts *Options) *Store {
	t.Helper()
	var o Options
	if opts != nil {
		o = *opts
	}
	h := &hooks{}
	if o.hooks != nil {
		*h = *o.hooks
	}
	listening := make(chan struct{}, 1)
	also := h.listening
	h.listening = func() {
		if also != nil {
			also()
		}
		select {
		case listening <- struct{}{}:
		default:
		}
	}
	o.hooks = h
	st := f.open(&o)
	wait(t, listening, "the store listens")
	return st
}

func TestWakeOnAcceptInAnotherProcess(t *testing.T) {
	f := newFixture(t)
	idle := listeningStore(t, f, nil)
	other := f.open(nil)
	woken := idle.Wake()
	got, _, err := idle.Claim(context.Background(), "w1", 1, time.Hour)
	require.NoError(t, err)
	require.Empty(t, got)

	accept(t, other, "e1", 0, "x")
	wait(t, woken, "the idle claimer woken by the accept")
	require.Len(t, claim(t, idle, "w1", 1), 1)
}

func TestWakeOnRelease(t *testing.T) {
	f := newFixture(t)
	idle := listeningStore(t, f, nil)
	other := f.open(nil)
	accept(t, other, "e1", 0, "x")
	c := claim(t, other, "w2", 1)[0]

	woken := idle.Wake()
	require.NoError(t, other.HandBack(context.Background(), c.Token, nil))
	wait(t, woken, "woken by the hand-back")
	require.Len(t, claim(t, idle, "w1", 1), 1)

	woken = idle.Wake()
	require.NoError(t, idle.Requeue(context.Background(), store.Token{ID: "e1", Owner: "w1", Attempt: 2}, &store.Progress{}, time.Time{}))
	wait(t, woken, "woken by the requeue")
}

// With no notification at all, the slow poll wakes the claimers.
func TestWakeOnPoll(t *testing.T) {
	f := newFixture(t)
	st := listeningStore(t, f, &Options{PollInterval: 50 * time.Millisecond})
	wait(t, st.Wake(), "the poll")
}

func TestClosedStoreRefusesCalls(t *testing.T) {
	f := newFixture(t)
	st := f.open(nil)
	require.NoError(t, st.Close())
	require.NoError(t, st.Close(), "twice is safe")
	_, _, err := st.Claim(context.Background(), "w1", 1, time.Hour)
	require.ErrorIs(t, err, store.ErrClosed)
	_, err = st.Accept(context.Background(), &store.Envelope{ID: "e1"})
	require.ErrorIs(t, err, store.ErrClosed)
}
