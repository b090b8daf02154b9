package storetest

import (
	"context"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mxrelay/mxrelay/internal/store"
)

// full is a result with every field set.
func full(id string) *store.Result {
	return &store.Result{ID: id, Delivered: true, MaybeDelivered: true, Attempts: 2, Accepted: []string{"b@example.com"},
		Rejected: map[string]string{"c@example.com": "550 5.1.1 no such user"},
		Reply:    store.Reply{Code: 250, Enhanced: [3]int{2, 0, 0}, Message: "queued as X"},
		Error:    "", Kind: "delivered", Queued: time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)}
}

// answer is what a WaitResult returned.
type answer struct {
	r   *store.Result
	err error
}

// waitFor runs WaitResult(id) on st in a goroutine of its own.
func waitFor(ctx context.Context, st store.Store, id string) <-chan answer {
	done := make(chan answer, 1)
	go func() {
		r, err := st.WaitResult(ctx, id)
		done <- answer{r, err}
	}()
	return done
}

// receive is the answer from done, which must come within bound.
func receive(s *suite, done <-chan answer, what string) answer {
	s.t.Helper()
	select {
	case a := <-done:
		return a
	case <-time.After(bound):
		s.t.Fatalf("%s: WaitResult did not return within %v", what, bound)
		return answer{}
	}
}

var resultTests = []test{
	{"ResultIsKeptAndQueryableByID", func(s *suite) {
		t := s.t
		st, c := s.held()
		reader := s.other(st)
		_, err := reader.Result(ctx, "e1")
		require.ErrorIs(t, err, store.ErrNotFinished)
		_, err = reader.Result(ctx, "nosuch")
		require.ErrorIs(t, err, store.ErrNotFound)

		want := full("e1")
		require.NoError(t, st.Finish(ctx, c.Token, want))
		got, err := reader.Result(ctx, "e1")
		require.NoError(t, err)
		assert.False(t, got.Finished.IsZero(), "the store's time of the result")
		assert.True(t, want.Queued.Equal(got.Queued))
		got.Finished, got.Queued = time.Time{}, want.Queued
		assert.Equal(t, want, got)

		got.Accepted[0] = "changed"
		again, err := reader.Result(ctx, "e1")
		require.NoError(t, err)
		assert.Equal(t, []string{"b@example.com"}, again.Accepted, "a result returned is the caller's to change")
	}},

	// The process that accepted an email waits for its result while
	// another (where stores can share a backing) sends it.
	{"WaitResultReturnsTheResultWhenItIsRecorded", func(s *suite) {
		t := s.t
		waiter := s.open()
		Accept(t, waiter, "e1", 0, "x")
		done := waitFor(ctx, waiter, "e1")
		sender := s.other(waiter)
		c := claimOne(t, sender, "w1", "e1")
		select {
		case a := <-done:
			t.Fatalf("WaitResult returned before the result: %+v, %v", a.r, a.err)
		default:
		}
		require.NoError(t, sender.Finish(ctx, c.Token, delivered("e1")))
		a := receive(s, done, "after Finish")
		require.NoError(t, a.err)
		assert.True(t, a.r.Delivered)

		a = receive(s, waitFor(ctx, waiter, "e1"), "once recorded")
		require.NoError(t, a.err, "a result already recorded")
		assert.True(t, a.r.Delivered)
	}},

	{"WaitResultEnds", func(s *suite) {
		t, st := s.t, s.open()
		_, err := st.WaitResult(ctx, "nosuch")
		assert.ErrorIs(t, err, store.ErrNotFound)

		Accept(t, st, "e1", 0, "x")
		canceled, cancel := context.WithCancel(ctx)
		done := waitFor(canceled, st, "e1")
		cancel()
		a := receive(s, done, "after its context ended")
		assert.ErrorIs(t, a.err, context.Canceled)

		done = waitFor(ctx, st, "e1")
		require.NoError(t, st.Close())
		a = receive(s, done, "after Close")
		assert.ErrorIs(t, a.err, store.ErrClosed)
	}},

	{"ResultsArePrunedAfterTheRetentionTime", func(s *suite) {
		t, st := s.t, s.open()
		AcceptEnv(t, st, &store.Envelope{ID: "old", IdempotencyKey: "k"}, "x")
		Accept(t, st, "recent", 0, "x")
		Accept(t, st, "queued", 0, "x")
		for _, c := range Claim(t, st, "w1", 2) {
			require.NoError(t, st.Finish(ctx, c.Token, delivered(c.ID)))
		}
		s.b.Outlive(t, "old")
		_, err := st.Result(ctx, "old")
		assert.ErrorIs(t, err, store.ErrNotFound, "past retention")
		_, err = st.Result(ctx, "recent")
		assert.NoError(t, err, "kept")
		_, err = st.Result(ctx, "queued")
		assert.ErrorIs(t, err, store.ErrNotFinished, "an email without a result is never pruned")

		a := AcceptEnv(t, st, &store.Envelope{ID: "new", IdempotencyKey: "k"}, "x")
		assert.False(t, a.Existing, "the key is free once its result is gone")
		assert.Equal(t, "new", a.ID)
		AcceptEnv(t, st, &store.Envelope{ID: "old"}, "x") // so is the ID
	}},

	{"ClosedStoreRefusesCalls", func(s *suite) {
		t, st := s.t, s.open()
		Accept(t, st, "e1", 0, "x")
		require.NoError(t, st.Close())
		require.NoError(t, st.Close(), "twice is safe")
		_, _, err := st.Claim(ctx, "w1", 1, time.Hour)
		assert.ErrorIs(t, err, store.ErrClosed)
		_, err = st.Accept(ctx, envelope("e2", 0))
		assert.ErrorIs(t, err, store.ErrClosed)
		_, err = st.Result(ctx, "e1")
		assert.ErrorIs(t, err, store.ErrClosed)
		_, err = st.Body(ctx, "e1")
		assert.ErrorIs(t, err, store.ErrClosed)
		_, err = st.Cancel(ctx, "e1", &store.Result{ID: "e1"})
		assert.ErrorIs(t, err, store.ErrClosed)
		err = st.Finish(ctx, store.Token{ID: "e1", Owner: "w1", Attempt: 1}, delivered("e1"))
		assert.ErrorIs(t, err, store.ErrClosed)
	}},

	{"CommitAfterCloseAcceptsNothing", func(s *suite) {
		t, st := s.t, s.open()
		d, err := st.Accept(ctx, envelope("e1", 0))
		require.NoError(t, err)
		_, err = d.Write([]byte("body"))
		require.NoError(t, err)
		require.NoError(t, st.Close())
		_, err = d.Commit(ctx, nil)
		require.Error(t, err, "the store is closed")
		d.Abort()
		if s.caps.Durable {
			assert.Empty(t, Claim(t, s.open(), "w1", 1), "refused, and not kept either")
		}
	}},
}
