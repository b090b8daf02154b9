package pgstore

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mxrelay/mxrelay/internal/store"
	"github.com/mxrelay/mxrelay/internal/store/storetest"
)

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
	storetest.Accept(t, enqueuer, "e1", 0, "x")

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
	c := storetest.Claim(t, sender, "w1", 1)[0]
	require.NoError(t, sender.Finish(context.Background(), c.Token, &store.Result{ID: "e1", Delivered: true}))
	select {
	case a := <-done:
		require.NoError(t, a.err)
		assert.True(t, a.r.Delivered)
	case <-time.After(bound):
		t.Fatal("the result's notification did not wake the waiter")
	}
}

// Reap deletes the rows of the results recorded more than
// ResultRetention ago, and counts them; an email without a result is
// never reaped, however old. (That the ID and key are free then is the
// conformance suite's.)
func TestReapRemovesResultsPastRetention(t *testing.T) {
	f := newFixture(t)
	st := f.open(&Options{ResultRetention: time.Hour})
	ctx := context.Background()
	for _, id := range []string{"old", "recent", "queued"} {
		storetest.Accept(t, st, id, 0, "x")
	}
	for _, c := range storetest.Claim(t, st, "w1", 2) {
		require.NoError(t, st.Finish(ctx, c.Token, &store.Result{ID: c.ID, Delivered: true}))
	}
	n, err := st.Reap(ctx)
	require.NoError(t, err)
	assert.Zero(t, n, "within retention")

	f.exec(`UPDATE {s}.email SET finished_at = now() - interval '61 minutes' WHERE id = 'old'`)
	f.exec(`UPDATE {s}.email SET queued_at = now() - interval '1 day' WHERE id = 'queued'`)
	n, err = st.Reap(ctx)
	require.NoError(t, err)
	assert.EqualValues(t, 1, n)
	assert.Zero(t, f.count(`SELECT count(*) FROM {s}.email WHERE id = 'old'`), "reaped")
	assert.Equal(t, 2, f.count(`SELECT count(*) FROM {s}.email`), "the recent result and the queued email kept")
}
