package test

import (
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mxrelay/mxrelay"
	"github.com/mxrelay/mxrelay/internal/store"
	"github.com/mxrelay/mxrelay/internal/testkit"
	"github.com/mxrelay/mxrelay/pgstore"
)

// The red team's second round on the Client on a shared store (issue 12):
// what round 1 (redteam_shared_test.go) did not reach.

// TestSharedStoreCancelAfterEndOfDataIsNotCanceled: A's end of data is
// out (Ending recorded, the server's reply held) when C, another process,
// finds the email by its IdempotencyKey and cancels it: the store marks
// it (A holds it). A then dies (its lease runs out) and B takes it over:
// an end of data recorded with no answer, which may have reached the
// server. Cancel's doc: an end of data already out is not withdrawn, its
// reply decides; ErrCanceled is for an email withdrawn before its end of
// data; OutcomeUnknown is the outcome of an end of data with no reply
// "after a cancel" too. The result must be unknown (ErrUnknownOutcome),
// not "failed: cancelled", which tells the caller the email never left,
// and it is not sent again (canceled), RetryUnknown or not. (Whichever
// live Client claims it first, B or C, takes it over.)
func TestSharedStoreCancelAfterEndOfDataIsNotCanceled(t *testing.T) {
	for _, retry := range []bool{false, true} {
		t.Run(fmt.Sprint("RetryUnknown ", retry), func(t *testing.T) {
			q := testkit.NewQueue(t)
			a := newGated(t)
			ca := testkit.NewClient(t, a.relay, &mxrelay.Options{Store: q.Store(t, nil), Lease: time.Hour,
				CommandTimeout: time.Minute})
			e := testkit.Mail("sent")
			e.ID, e.IdempotencyKey = "sent", "order-1"
			_, err := ca.Enqueue(e)
			require.NoError(t, err)
			ctx := testkit.Ctx(t)
			select {
			case <-a.hit: // pipelined: MAIL, RCPT and BDAT LAST in one write, its Ending recorded first
			case <-ctx.Done():
				t.Fatal("A's session did not start")
			}
			require.Equal(t, 1, q.Count(`SELECT ends FROM {s}.email WHERE id = 'sent'`))

			// C finds the email by its key, and cancels it.
			cc := testkit.NewClient(t, testkit.NewRelay(t, nil), &mxrelay.Options{Store: q.Store(t, nil)})
			again := testkit.Mail("sent")
			again.IdempotencyKey = "order-1"
			hc, err := cc.Enqueue(again)
			require.NoError(t, err)
			require.Equal(t, "sent", hc.ID(), "the key's email")
			hc.Cancel()
			require.Equal(t, 1, q.Count(`SELECT count(*) FROM {s}.email WHERE id = 'sent' AND cancel IS NOT NULL AND finished_at IS NULL`),
				"marked: A holds it")

			// A dies; B (or C) takes the email over.
			q.Exec(`UPDATE {s}.email SET lease_expires = now() - interval '1 second' WHERE id = 'sent'`)
			relayB := testkit.NewRelay(t, nil)
			testkit.NewClient(t, relayB, &mxrelay.Options{Store: q.Store(t, nil), RetryUnknown: retry})
			b, err := hc.Wait(ctx)
			require.NotNil(t, b, "no result")
			assert.Equal(t, b.Err, err)
			assert.Empty(t, relayB.Mailbox(), "canceled: not sent again")
			assert.True(t, b.MaybeDelivered)
			assert.Equal(t, mxrelay.OutcomeUnknown, b.Outcome,
				"an end of data out with no reply, canceled after it: the takeover says %v (%v)", b.Outcome, b.Err)
			assert.ErrorIs(t, b.Err, mxrelay.ErrUnknownOutcome)
			assert.NotErrorIs(t, b.Err, mxrelay.ErrCanceled, "withdrawn before its end of data, says the error")
			got, err := cc.Result(ctx, "sent")
			require.NoError(t, err)
			testkit.SameResult(t, b, got)
			a.open()
		})
	}
}

// TestSharedStoreCancelHeldByAnotherBeforeItsEndOfData: B's session is
// stuck at MAIL (lock-step) on an email it claimed when A, another
// process, finds the email by its IdempotencyKey and cancels it: the
// store marks it. Once B goes on, its Ending is refused (ErrCanceled): B
// writes no end of data, the email fails as cancelled, once, and A's
// Handle gets that result.
func TestSharedStoreCancelHeldByAnotherBeforeItsEndOfData(t *testing.T) {
	q := testkit.NewQueue(t)
	ctx := testkit.Ctx(t)
	accept(t, q.Store(t, nil), &store.Envelope{ID: "c1", IdempotencyKey: "k1", From: "a@example.com", To: []string{"b@example.com"}})
	b := newGated(t)
	var recB testkit.Recorder
	cb := testkit.NewClient(t, b.relay, &mxrelay.Options{Store: q.Store(t, nil), DisablePipelining: true,
		CommandTimeout: time.Minute, OnEvent: recB.On})
	select {
	case <-b.hit:
	case <-ctx.Done():
		t.Fatal("B's session did not start")
	}
	relayA, oa := unreachable(t)
	oa.Store = q.Store(t, nil)
	ca := testkit.NewClient(t, relayA, oa)
	e := testkit.Mail("c1")
	e.IdempotencyKey = "k1"
	h, err := ca.Enqueue(e)
	require.NoError(t, err)
	require.Equal(t, "c1", h.ID())
	h.Cancel()
	require.Equal(t, 1, q.Count(`SELECT count(*) FROM {s}.email WHERE id = 'c1' AND cancel IS NOT NULL AND finished_at IS NULL`),
		"marked: B holds it")
	b.open()
	res, err := h.Wait(ctx)
	require.NotNil(t, res, "no result")
	assert.Equal(t, res.Err, err)
	assert.Equal(t, mxrelay.OutcomeFailed, res.Outcome)
	assert.ErrorIs(t, err, mxrelay.ErrCanceled)
	assert.False(t, res.MaybeDelivered)
	assert.Empty(t, b.relay.Mailbox(), "B wrote the end of data of an email canceled before it")
	assert.Equal(t, 0, q.Count(`SELECT ends FROM {s}.email WHERE id = 'c1'`))
	got, err := cb.Result(ctx, "c1")
	require.NoError(t, err)
	testkit.SameResult(t, res, got)
	assert.Equal(t, int64(1), cb.Stats().EmailsFailed, "one result, B's")
	assert.Empty(t, relayA.Mailbox())
}

// accept puts env into st with testkit.Msg of its ID as the body, as
// another process's Enqueue would.
func accept(t *testing.T, st *pgstore.Store, env *store.Envelope) {
	t.Helper()
	ctx := testkit.Ctx(t)
	d, err := st.Accept(ctx, env)
	require.NoError(t, err)
	_, err = d.Write([]byte(testkit.Msg(env.ID)))
	require.NoError(t, err)
	_, err = d.Commit(ctx, nil) // no meta: the Client reads the body again
	require.NoError(t, err)
}

// TestSharedStoreDeleteForceAfterEndOfData: an operator deletes, with
// -force, an email whose end of data A has written (Ending recorded) and
// whose 250 is on its way (mxrelay-queue delete -force is Admin.Delete
// with force). A's Finish is refused (the row is finished, without A's
// token): A must not report it delivered, and its Handle, following the
// store, says what the store says: deleted, maybe delivered.
func TestSharedStoreDeleteForceAfterEndOfData(t *testing.T) {
	q := testkit.NewQueue(t)
	a := newGated(t)
	var recA testkit.Recorder
	ca := testkit.NewClient(t, a.relay, &mxrelay.Options{Store: q.Store(t, nil), Lease: time.Hour,
		CommandTimeout: time.Minute, OnEvent: recA.On})
	e := testkit.Mail("del")
	e.ID = "del"
	h, err := ca.Enqueue(e)
	require.NoError(t, err)
	ctx := testkit.Ctx(t)
	select {
	case <-a.hit: // pipelined: the end of data is recorded and written
	case <-ctx.Done():
		t.Fatal("A's session did not start")
	}
	require.Equal(t, 1, q.Count(`SELECT ends FROM {s}.email WHERE id = 'del'`))
	admin := q.Store(t, nil)
	_, changed, err := admin.Delete(ctx, "del", true)
	require.NoError(t, err)
	require.True(t, changed)
	a.open() // the server says 250 to A's end of data

	res, err := h.Wait(ctx)
	require.NotNil(t, res)
	assert.Equal(t, res.Err, err)
	require.True(t, recA.Await(ctx, mxrelay.EventSessionCompleted, 1))
	assert.Equal(t, 1, testkit.CountSubject(a.relay, "del"), "A's end of data was out")
	assert.True(t, res.MaybeDelivered, "deleted with its end of data out: maybe delivered")
	assert.NotEqual(t, mxrelay.OutcomeDelivered, res.Outcome, "the store's result is the deletion")
	for _, ev := range recA.Events() {
		assert.Nil(t, ev.Result, "A gave a result of its own: %v", ev.Type)
	}
	got, err := ca.Result(ctx, "del")
	require.NoError(t, err)
	testkit.SameResult(t, res, got)
}

// TestSharedStoreCancelOfAnEmailItsOwnClientHolds: A finds by its
// IdempotencyKey an email another process accepted; A, the only Client,
// claims it, and its session is stuck at MAIL (lock-step, the relay
// reads nothing more). A's Handle then cancels it. Cancel's doc: an email
// not yet at its end of data fails at once with ErrCanceled, whatever
// the session is doing; only an email another process holds waits for
// that process's next Ending. Here the holder is A itself, yet the
// Handle (whose record A's claim did not link to it: nothing waited on
// it then) goes to the store as for another's, which only marks the row:
// the Handle has no result until A's session reaches its Ending, which a
// stuck session never does (up to CommandTimeout), and a queued one only
// when a session takes it.
func TestSharedStoreCancelOfAnEmailItsOwnClientHolds(t *testing.T) {
	q := testkit.NewQueue(t)
	ctx := testkit.Ctx(t)
	accept(t, q.Store(t, nil), &store.Envelope{ID: "o1", IdempotencyKey: "k1", From: "a@example.com", To: []string{"b@example.com"}})
	a := newGated(t)
	ca := testkit.NewClient(t, a.relay, &mxrelay.Options{Store: q.Store(t, nil), DisablePipelining: true, CommandTimeout: time.Minute})
	e := testkit.Mail("o1")
	e.IdempotencyKey = "k1"
	h, err := ca.Enqueue(e)
	require.NoError(t, err)
	require.Equal(t, "o1", h.ID())
	select {
	case <-a.hit: // A claimed it, and its session is at MAIL (lock-step), stuck
	case <-ctx.Done():
		t.Fatal("A's session did not start")
	}

	h.Cancel()
	select {
	case <-h.Done():
	default:
		assert.Failf(t, "Cancel did not withdraw an email its own Client holds",
			"row canceled=%d, A holds %d: the email stays in A's session, its Handle has no result",
			q.Count(`SELECT count(*) FROM {s}.email WHERE id = 'o1' AND cancel IS NOT NULL AND finished_at IS NULL`),
			ca.Stats().QueueSize+ca.Stats().InFlight)
		return
	}
	res, err := h.Wait(ctx)
	assert.Equal(t, res.Err, err)
	assert.ErrorIs(t, err, mxrelay.ErrCanceled)
	assert.Equal(t, mxrelay.OutcomeFailed, res.Outcome)
	assert.Zero(t, ca.Stats().QueueSize+ca.Stats().InFlight)
	a.open()
	assert.Empty(t, a.relay.Mailbox(), "no end of data after the cancel")
	got, err := ca.Result(ctx, "o1")
	require.NoError(t, err)
	testkit.SameResult(t, res, got)
}
