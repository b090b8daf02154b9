package test

import (
	"bytes"
	"context"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mxrelay/mxrelay"
	"github.com/mxrelay/mxrelay/internal/testkit"
	"github.com/mxrelay/mxrelay/relaytest"
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

// TestSharedStoreCloseReturnsWhenTheDatabaseHangs: the database stops
// answering (its connections stay open, nothing comes back: a network
// partition, a server frozen) while the Client holds emails it has not
// started (its relay is out of reach). Close, with a context that ends,
// must return by then (Options.Store's doc: Close's context bounds the
// writes it waits for), and the emails stay in the store for the other
// processes, sent once each when the database answers again.
func TestSharedStoreCloseReturnsWhenTheDatabaseHangs(t *testing.T) {
	q := testkit.NewQueue(t)
	st, p := proxiedStore(t, q)
	relayA, oa := unreachable(t)
	oa.Store, oa.MaxEmailsPerSession, oa.Lease = st, 5, time.Second // its leases run out soon if they are not handed back
	ca := testkit.NewClient(t, relayA, oa)
	const n = 3
	hs := enqueue(t, ca, "hang", n)
	// An Enqueue that a claim in progress missed lets its email go and
	// the store's wake-up claims it again: wait for A to hold all three.
	require.Eventually(t, func() bool { return ca.Stats().QueueSize == n }, 10*time.Second, 5*time.Millisecond, "A holds them, unsent")

	p.hang()
	closeCtx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	hangCtx, stop := context.WithTimeout(context.Background(), 10*time.Second) // a bound far beyond Close's
	defer stop()
	defer cancel()
	closed := make(chan error, 1)
	go func() { closed <- ca.Close(closeCtx) }()
	select {
	case err := <-closed:
		t.Log("Close returned: ", err)
	case <-hangCtx.Done():
		p.unhang() // lets Close go on, so that the test ends
		<-closed
		t.Fatal("Close did not return when its context ended: a write to a database that hangs is not bound by it")
	}
	ctx := testkit.Ctx(t)
	for _, h := range hs {
		select {
		case <-h.Done():
		case <-ctx.Done():
			t.Fatal("a Handle has no result after Close")
		}
	}
	p.unhang()
	relayB := testkit.NewRelay(t, nil)
	var recB testkit.Recorder
	testkit.NewClient(t, relayB, &mxrelay.Options{Store: q.Store(t, nil), Lease: time.Second, OnEvent: recB.On})
	require.True(t, recB.Await(ctx, mxrelay.EventEmailProcessed, n), "the emails A held were lost")
	onceEach(t, subjects("hang", n), relayB)
}

// TestSharedStoreFinishOutOfReachEndsOnce: A's email was delivered (250
// to its own end of data, Ending recorded before it), and A cannot reach
// the database when it records the result. A's lease runs out and
// another Client takes the email over: an Ending with no answer, an
// unknown outcome, which that Client records. A, which gave up its write
// at its lease's end, reported the email delivered: one email, two ends,
// A's Handle saying delivered and the store (Client.Result, every other
// process) unknown. The house promise: every email ends exactly once; a
// write refused as fenced once the database is back tells A the email is
// another's (its Handle then follows the store).
func TestSharedStoreFinishOutOfReachEndsOnce(t *testing.T) {
	q := testkit.NewQueue(t)
	st, p := proxiedStore(t, q)
	relayA, replyHeld, release := endOfDataReplyHeld(t)
	ca := testkit.NewClient(t, relayA, &mxrelay.Options{Store: st, Lease: 300 * time.Millisecond, CommandTimeout: time.Minute})
	e := testkit.Mail("once")
	e.ID = "once"
	h, err := ca.Enqueue(e)
	require.NoError(t, err)
	ctx := testkit.Ctx(t)
	select {
	case <-replyHeld:
	case <-ctx.Done():
		t.Fatal("A's end of data never went out")
	}
	require.Equal(t, 1, q.Count(`SELECT ends FROM {s}.email WHERE id = 'once'`), "Ending recorded")
	p.setDown(true) // A alone is cut off
	close(release)  // A has its 250 and records it, in vain

	// A's lease has run out (made so at once); B takes the email over.
	q.Exec(`UPDATE {s}.email SET lease_expires = now() - interval '1 second' WHERE id = 'once'`)
	other := q.Store(t, nil)
	testkit.NewClient(t, testkit.NewRelay(t, nil), &mxrelay.Options{Store: other})
	stored, err := other.WaitResult(ctx, "once")
	require.NoError(t, err)
	require.True(t, stored.MaybeDelivered, "B's takeover: an unknown outcome")
	// While A is cut off it cannot know whether its result was recorded:
	// a result its Handle gets now is A's own, told beside the store's.
	// (A bound of ten leases, for a write A gives up at one lease.)
	select {
	case <-h.Done():
	case <-time.After(10 * 300 * time.Millisecond):
	}
	p.setDown(false)

	res, err := h.Wait(ctx)
	assert.Equal(t, res.Err, err)
	cc := testkit.NewClient(t, testkit.NewRelay(t, nil), &mxrelay.Options{Store: q.Store(t, nil), MaxEmailsPerSession: 1})
	got, err := cc.Result(ctx, "once")
	require.NoError(t, err)
	assert.Equal(t, got.Outcome, res.Outcome, "one email, two results: A's Handle says %v, the store %v", res.Outcome, got.Outcome)
	assert.Equal(t, 1, testkit.CountSubject(relayA, "once"))
}

// TestSharedStoreEnqueueWaitEndsWithItsContext: the database stops
// answering (connections open, nothing comes back). EnqueueWait's
// context bounds the writing of the email to the store: it returns when
// the context ends, with an error matching the context's, and nothing
// is accepted; once the database answers again the email is not there
// and no Client sends it. (Enqueue, with no context, would wait for the
// database.)
func TestSharedStoreEnqueueWaitEndsWithItsContext(t *testing.T) {
	q := testkit.NewQueue(t)
	st, p := proxiedStore(t, q)
	relay := testkit.NewRelay(t, nil)
	c := testkit.NewClient(t, relay, &mxrelay.Options{Store: st})
	p.hang()
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	e := testkit.Mail("bounded")
	e.ID = "bounded"
	done := make(chan error, 1)
	go func() {
		_, err := c.EnqueueWait(ctx, e)
		done <- err
	}()
	bound, stop := context.WithTimeout(context.Background(), 10*time.Second) // far beyond ctx's
	defer stop()
	select {
	case err := <-done:
		require.ErrorIs(t, err, context.DeadlineExceeded, "%v", err)
	case <-bound.Done():
		p.unhang()
		<-done
		t.Fatal("EnqueueWait did not return when its context ended: the store's writes are not bound by it")
	}
	p.unhang()
	assert.Zero(t, q.Count(`SELECT count(*) FROM {s}.email WHERE id = 'bounded'`), "nothing accepted")
	assert.Empty(t, relay.Mailbox())
}

// TestSharedStoreCloseWithAResultUnrecorded: A's email was delivered
// (250 to its own end of data, Ending recorded) and the database hangs
// when A records the result; Close's context ends while it waits. The
// result is not in the store, so another process takes the email over
// (an unknown outcome). A's Handle must not say delivered beside the
// store's unknown: it was told delivered when the write ended with
// Close's context (a ctx error, not ErrUnavailable).
func TestSharedStoreCloseWithAResultUnrecorded(t *testing.T) {
	q := testkit.NewQueue(t)
	st, p := proxiedStore(t, q)
	relayA, replyHeld, release := endOfDataReplyHeld(t)
	ca := testkit.NewClient(t, relayA, &mxrelay.Options{Store: st, Lease: 300 * time.Millisecond, CommandTimeout: time.Minute})
	e := testkit.Mail("unrecorded")
	e.ID = "unrecorded"
	h, err := ca.Enqueue(e)
	require.NoError(t, err)
	ctx := testkit.Ctx(t)
	select {
	case <-replyHeld:
	case <-ctx.Done():
		t.Fatal("A's end of data never went out")
	}
	p.hang()       // the database stops answering
	close(release) // A has its 250 and records it, in vain
	closeCtx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	ca.Close(closeCtx)
	res, _ := h.Wait(ctx)
	t.Logf("A's Handle: %v %v", res.Outcome, res.Err)
	p.unhang()

	q.Exec(`UPDATE {s}.email SET lease_expires = now() - interval '1 second' WHERE id = 'unrecorded' AND finished_at IS NULL`)
	other := q.Store(t, nil)
	cc := testkit.NewClient(t, testkit.NewRelay(t, nil), &mxrelay.Options{Store: other})
	_, err = other.WaitResult(ctx, "unrecorded") // B's takeover, or A's result if it was recorded
	require.NoError(t, err)
	got, err := cc.Result(ctx, "unrecorded")
	require.NoError(t, err)
	t.Logf("store: %v %v", got.Outcome, got.Err)
	if res.Outcome != mxrelay.OutcomeHandedBack {
		assert.Equal(t, got.Outcome, res.Outcome, "one email, two results: A's Handle says %v, the store %v", res.Outcome, got.Outcome)
	} else {
		assert.ErrorIs(t, res.Err, mxrelay.ErrSpooled, "handed back: the store has it")
	}
	assert.Equal(t, 1, testkit.CountSubject(relayA, "unrecorded"))
}

// endOfDataReplyHeld is a relay whose server's first reply after an end
// of data waits (replyHeld is closed then) until release is closed.
func endOfDataReplyHeld(t *testing.T) (relay *relaytest.Server, replyHeld, release chan struct{}) {
	var mu sync.Mutex
	var ended bool
	replyHeld, release = make(chan struct{}), make(chan struct{})
	var once sync.Once
	relay = testkit.NewRelay(t, &relaytest.Options{OnSMTPData: func(d relaytest.SMTPData) {
		mu.Lock()
		defer mu.Unlock()
		if !d.FromServer && (bytes.Contains(d.Data, []byte("BDAT")) || bytes.Contains(d.Data, []byte("\r\n.\r\n"))) {
			ended = true
			return
		}
		if d.FromServer && ended {
			once.Do(func() { close(replyHeld); <-release })
		}
	}})
	t.Cleanup(func() { once.Do(func() {}) })
	return relay, replyHeld, release
}
