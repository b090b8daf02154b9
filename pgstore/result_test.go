package pgstore

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mxrelay/mxrelay/internal/store"
)

func TestResultIsKeptAndQueryableByID(t *testing.T) {
	f, st, c := heldEmail(t)
	ctx := context.Background()
	_, err := st.Result(ctx, "e1")
	require.ErrorIs(t, err, store.ErrNotFinished)
	_, err = st.Result(ctx, "nosuch")
	require.ErrorIs(t, err, store.ErrNotFound)

	want := &store.Result{ID: "e1", Delivered: true, Attempts: 2, Accepted: []string{"b@example.com"},
		Rejected: map[string]string{"c@example.com": "550 5.1.1 no such user"},
		Reply:    store.Reply{Code: 250, Enhanced: [3]int{2, 0, 0}, Message: "queued as X"}}
	require.NoError(t, st.Finish(ctx, c.Token, want))
	got, err := st.Result(ctx, "e1")
	require.NoError(t, err)
	assert.False(t, got.Finished.IsZero(), "the store's time of the result")
	got.Finished = time.Time{}
	assert.Equal(t, want, got)
	assert.Equal(t, 1, f.count(`SELECT count(*) FROM {s}.email WHERE meta IS NULL`), "nothing but the result is kept")
}

// The process that enqueued an email waits for its result while another
// process sends it: two pools, as two processes, and no poll to help.
func TestWaitResultAcrossStores(t *testing.T) {
	f := newFixture(t)
	waiting := make(chan string, 1)
	enqueuer := listeningStore(t, f, &Options{hooks: &hooks{waiting: func(id string) {
		select {
		case waiting <- id:
		default:
		}
	}}})
	sender := f.open(nil)
	accept(t, enqueuer, "e1", 0, "x")

	type answer struct {
		r   *store.Result
		err error
	}
	done := make(chan answer, 1)
	go func() {
		r, err := enqueuer.WaitResult(context.Background(), "e1")
		done <- answer{r, err}
	}()
	select {
	case id := <-waiting:
		assert.Equal(t, "e1", id)
	case <-time.After(bound):
		t.Fatal("WaitResult did not wait")
	}
	c := claim(t, sender, "w1", 1)[0]
	require.NoError(t, sender.Finish(context.Background(), c.Token, &store.Result{ID: "e1", Delivered: true}))
	select {
	case a := <-done:
		require.NoError(t, a.err)
		assert.True(t, a.r.Delivered)
	case <-time.After(bound):
		t.Fatal("the result's notification did not wake the waiter")
	}
}

func TestWaitResultEnds(t *testing.T) {
	f := newFixture(t)
	st := f.open(nil)
	_, err := st.WaitResult(context.Background(), "nosuch")
	assert.ErrorIs(t, err, store.ErrNotFound)

	accept(t, st, "e1", 0, "x")
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err = st.WaitResult(ctx, "e1")
	assert.ErrorIs(t, err, context.Canceled)
}

func TestReapRemovesResultsPastRetention(t *testing.T) {
	f := newFixture(t)
	st := f.open(&Options{ResultRetention: time.Hour})
	ctx := context.Background()
	acceptEnv(t, st, &store.Envelope{ID: "old", IdempotencyKey: "k"}, "x")
	accept(t, st, "recent", 0, "x")
	accept(t, st, "queued", 0, "x")
	for _, c := range claim(t, st, "w1", 2) {
		require.NoError(t, st.Finish(ctx, c.Token, &store.Result{ID: c.ID, Delivered: true}))
	}
	n, err := st.Reap(ctx)
	require.NoError(t, err)
	assert.Zero(t, n, "within retention")

	f.exec(`UPDATE {s}.email SET finished_at = now() - interval '61 minutes' WHERE id = 'old'`)
	n, err = st.Reap(ctx)
	require.NoError(t, err)
	assert.EqualValues(t, 1, n)
	_, err = st.Result(ctx, "old")
	assert.ErrorIs(t, err, store.ErrNotFound, "reaped")
	_, err = st.Result(ctx, "recent")
	assert.NoError(t, err, "kept")
	_, err = st.Result(ctx, "queued")
	assert.ErrorIs(t, err, store.ErrNotFinished, "an email without a result is never reaped")

	a := acceptEnv(t, st, &store.Envelope{ID: "new", IdempotencyKey: "k"}, "x")
	assert.False(t, a.Existing, "the key is free once its result is reaped")
}
