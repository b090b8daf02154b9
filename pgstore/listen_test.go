package pgstore

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/mxrelay/mxrelay/internal/store"
	"github.com/mxrelay/mxrelay/internal/store/storetest"
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
	storetest.Wait(t, listening, "the store listens")
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

	storetest.Accept(t, other, "e1", 0, "x")
	storetest.Wait(t, woken, "the idle claimer woken by the accept")
	require.Len(t, storetest.Claim(t, idle, "w1", 1), 1)
}

func TestWakeOnRelease(t *testing.T) {
	f := newFixture(t)
	idle := listeningStore(t, f, nil)
	other := f.open(nil)
	storetest.Accept(t, other, "e1", 0, "x")
	c := storetest.Claim(t, other, "w2", 1)[0]

	woken := idle.Wake()
	require.NoError(t, other.HandBack(context.Background(), c.Token, nil))
	storetest.Wait(t, woken, "woken by the hand-back")
	require.Len(t, storetest.Claim(t, idle, "w1", 1), 1)

	woken = idle.Wake()
	require.NoError(t, idle.Requeue(context.Background(), store.Token{ID: "e1", Owner: "w1", Attempt: 2}, &store.Progress{}, time.Time{}))
	storetest.Wait(t, woken, "woken by the requeue")
}

// With no notification at all, the slow poll wakes the claimers.
func TestWakeOnPoll(t *testing.T) {
	f := newFixture(t)
	st := listeningStore(t, f, &Options{PollInterval: 50 * time.Millisecond})
	storetest.Wait(t, st.Wake(), "the poll")
}
