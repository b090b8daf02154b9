package test

import (
	"bytes"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mxrelay/mxrelay"
	"github.com/mxrelay/mxrelay/internal/store"
	"github.com/mxrelay/mxrelay/internal/testkit"
	"github.com/mxrelay/mxrelay/relaytest"
)

// Several Clients on one queue in PostgreSQL (Options.Store), as the
// processes of a service share one: the work is shared, priority holds
// across them, an idempotency key is one email whoever enqueues it, a
// Handle gets the result of an email another Client sent, Close hands
// back what it holds, and a Client whose lease was taken over writes
// nothing more of the email.

// gated is a relay whose channels stop reading what the client sends at
// its first MAIL, until open: a session stuck before any reply comes.
type gated struct {
	relay          *relaytest.Server
	hit            chan struct{} // closed when a MAIL first waits
	gate           chan struct{}
	hitOnce, opens sync.Once
}

func newGated(t *testing.T) *gated {
	g := &gated{hit: make(chan struct{}), gate: make(chan struct{})}
	g.relay = testkit.NewRelay(t, &relaytest.Options{OnSMTPData: func(d relaytest.SMTPData) {
		if !d.FromServer && bytes.Contains(d.Data, []byte("MAIL FROM")) {
			g.hitOnce.Do(func() { close(g.hit) })
			<-g.gate
		}
	}})
	t.Cleanup(g.open) // before the relay's Close, registered first
	return g
}

func (g *gated) open() { g.opens.Do(func() { close(g.gate) }) }

// unreachable is a relay that fails every channel, for a Client that
// claims and cannot send: its worker waits an hour between set-ups.
func unreachable(t *testing.T) (*relaytest.Server, *mxrelay.Options) {
	s := testkit.NewRelay(t, nil)
	s.Inject(relaytest.Fault{Kind: relaytest.FailChannel, Times: -1})
	return s, &mxrelay.Options{ReconnectInterval: time.Hour, MaxReconnectAttempts: 1000}
}

// enqueue queues an email of subject (and ID) s<i> for i in [0, n) on c.
func enqueue(t *testing.T, c *mxrelay.Client, s string, n int, opts ...mxrelay.SendOption) []*mxrelay.Handle {
	t.Helper()
	var hs []*mxrelay.Handle
	for i := range n {
		e := testkit.Mail(fmt.Sprint(s, i))
		e.ID = fmt.Sprint(s, i)
		h, err := c.Enqueue(e, opts...)
		require.NoError(t, err)
		hs = append(hs, h)
	}
	return hs
}

// onceEach checks that the mailboxes hold each of want exactly once, and
// nothing else.
func onceEach(t *testing.T, want []string, relays ...*relaytest.Server) {
	t.Helper()
	var got []string
	for _, r := range relays {
		got = append(got, testkit.Subjects(r)...)
	}
	slices.Sort(got)
	want = slices.Sorted(slices.Values(want))
	assert.Equal(t, want, got, "each email once")
}

func subjects(s string, n int) []string {
	var out []string
	for i := range n {
		out = append(out, fmt.Sprint(s, i))
	}
	return out
}

// TestSharedStoreClientsShareTheWork: a Client claims only what its
// sessions can start soon. A, whose session is stuck, holds at most its
// session's emails and a queue's worth (MaxEmailsPerSession each); B
// sends every other email A accepted, and each email ends once.
func TestSharedStoreClientsShareTheWork(t *testing.T) {
	q := testkit.NewQueue(t)
	a := newGated(t)
	relayB := testkit.NewRelay(t, nil)
	var recB testkit.Recorder
	ca := testkit.NewClient(t, a.relay, &mxrelay.Options{Store: q.Store(t, nil), MaxEmailsPerSession: 5})
	testkit.NewClient(t, relayB, &mxrelay.Options{Store: q.Store(t, nil), MaxEmailsPerSession: 5, OnEvent: recB.On})
	const n, heldByA = 50, 10
	hs := enqueue(t, ca, "share", n)
	ctx := testkit.Ctx(t)
	require.True(t, recB.Await(ctx, mxrelay.EventEmailProcessed, n-heldByA),
		"B sent %d while A was stuck", recB.Count(mxrelay.EventEmailProcessed))
	assert.Empty(t, a.relay.Mailbox())
	st := ca.Stats()
	assert.LessOrEqual(t, st.QueueSize+st.InFlight, heldByA, "A holds only what its sessions can start soon")
	a.open()
	for _, h := range hs {
		res, err := h.Wait(ctx)
		require.NoError(t, err)
		assert.Equal(t, mxrelay.OutcomeDelivered, res.Outcome, h.ID())
		assert.Equal(t, h.ID(), res.EmailID)
	}
	onceEach(t, subjects("share", n), a.relay, relayB)
	assert.NotEmpty(t, a.relay.Mailbox(), "A sent what it held")
	assert.Equal(t, n, q.Count(`SELECT count(*) FROM {s}.email WHERE finished_at IS NOT NULL AND (result->>'delivered')::boolean`))
}

// TestSharedStorePriorityAcrossClients: a CRITICAL email goes before the
// NORMAL mail queued earlier, whichever process accepted them. B accepts
// 30 NORMAL emails, then a CRITICAL one, and cannot send: it holds only a
// few (no room for the CRITICAL one). A, started after, sends the
// CRITICAL email first, then the NORMAL ones, and B's few once B's Close
// hands them back. A Client that claimed every ready email (as it does
// from a store of its own) would sit on all 31.
func TestSharedStorePriorityAcrossClients(t *testing.T) {
	q := testkit.NewQueue(t)
	relayB, ob := unreachable(t)
	ob.Store, ob.MaxEmailsPerSession = q.Store(t, nil), 5
	cb := testkit.NewClient(t, relayB, ob)
	enqueue(t, cb, "normal", 30)
	crit := testkit.Mail("critical")
	crit.ID = "critical"
	_, err := cb.Enqueue(crit, mxrelay.WithPriority(mxrelay.PriorityCritical))
	require.NoError(t, err)
	st := cb.Stats()
	held := st.QueueSize + st.InFlight
	require.Positive(t, held)
	require.Less(t, held, 30)
	require.Zero(t, st.QueuedByPriority[mxrelay.PriorityCritical], "B holds no CRITICAL email")

	relayA := testkit.NewRelay(t, nil)
	var recA testkit.Recorder
	testkit.NewClient(t, relayA, &mxrelay.Options{Store: q.Store(t, nil), MaxEmailsPerSession: 5, OnEvent: recA.On})
	ctx := testkit.Ctx(t)
	require.True(t, recA.Await(ctx, mxrelay.EventEmailProcessed, 31-held))
	got := testkit.Subjects(relayA)
	require.NotEmpty(t, got)
	assert.Equal(t, "critical", got[0], "the CRITICAL email first, before the NORMAL mail queued earlier: %v", got)

	require.NoError(t, cb.Close(ctx))
	assert.Equal(t, int64(held), cb.Stats().EmailsHandedBack, "B's Close handed back what it held")
	require.True(t, recA.Await(ctx, mxrelay.EventEmailProcessed, 31))
	onceEach(t, append(subjects("normal", 30), "critical"), relayA)
	assert.Empty(t, relayB.Mailbox())
}

// TestSharedStoreIdempotencyKeyAcrossClients: two Clients that enqueue
// emails with the same keys, at the same time, get Handles of one email
// per key; one more Enqueue with a key after its result gets that result.
func TestSharedStoreIdempotencyKeyAcrossClients(t *testing.T) {
	q := testkit.NewQueue(t)
	relay := testkit.NewRelay(t, nil)
	cs := []*mxrelay.Client{
		testkit.NewClient(t, relay, &mxrelay.Options{Store: q.Store(t, nil)}),
		testkit.NewClient(t, relay, &mxrelay.Options{Store: q.Store(t, nil)}),
	}
	const keys = 10
	hs := make([][keys]*mxrelay.Handle, len(cs))
	var wg sync.WaitGroup
	for i, c := range cs {
		wg.Go(func() {
			for k := range keys {
				e := testkit.Mail(fmt.Sprint("order", k))
				e.ID = fmt.Sprintf("c%d-order%d", i, k) // the key decides, not the ID
				e.IdempotencyKey = fmt.Sprint("order-", k)
				h, err := c.Enqueue(e)
				if !assert.NoError(t, err) {
					return
				}
				hs[i][k] = h
			}
		})
	}
	wg.Wait()
	ctx := testkit.Ctx(t)
	for k := range keys {
		require.NotNil(t, hs[0][k])
		require.NotNil(t, hs[1][k])
		assert.Equal(t, hs[0][k].ID(), hs[1][k].ID(), "one email for key %d", k)
		for i := range cs {
			res, err := hs[i][k].Wait(ctx)
			require.NoError(t, err)
			assert.Equal(t, mxrelay.OutcomeDelivered, res.Outcome)
			assert.Equal(t, hs[0][k].ID(), res.EmailID)
		}
	}
	onceEach(t, subjects("order", keys), relay)
	assert.Equal(t, keys, q.Count(`SELECT count(*) FROM {s}.email`))

	e := testkit.Mail("order0")
	e.IdempotencyKey = "order-0"
	h, err := cs[1].Enqueue(e)
	require.NoError(t, err)
	assert.Equal(t, hs[0][0].ID(), h.ID())
	res, err := h.Wait(ctx)
	require.NoError(t, err, "the result of the email accepted before")
	assert.Equal(t, mxrelay.OutcomeDelivered, res.Outcome)
	assert.Equal(t, 1, testkit.CountSubject(relay, "order0"))
}

// TestSharedStoreResultsReadBack: A accepts emails that B sends (A holds
// one, and cannot send): A's Handles, and Client.Result of a third Client,
// give the Results B's Client gave, read back from the store: delivered,
// delivered to some recipients and refused for others, refused, and one
// A withdrew while no one held it. Result tells an email with no result
// yet from one the store does not keep.
func TestSharedStoreResultsReadBack(t *testing.T) {
	q := testkit.NewQueue(t)
	relayA, oa := unreachable(t)
	oa.Store, oa.MaxEmailsPerSession = q.Store(t, nil), 1 // holds one
	ca := testkit.NewClient(t, relayA, oa)
	send := func(id string, to ...string) *mxrelay.Handle {
		e := testkit.Mail(id, to...)
		e.ID = id
		h, err := ca.Enqueue(e, mxrelay.WithPriority(mxrelay.PriorityHigh))
		require.NoError(t, err)
		return h
	}
	hs := map[string]*mxrelay.Handle{
		"held":     send("held"),
		"ok":       send("ok"),
		"partial":  send("partial", "b@example.com", "bad@example.com"),
		"refused":  send("refused", "worse@example.com"),
		"tocancel": send("tocancel"),
	}
	ctx := testkit.Ctx(t)
	hs["tocancel"].Cancel() // no one holds it: withdrawn in the store at once
	res, err := hs["tocancel"].Wait(ctx)
	require.ErrorIs(t, err, mxrelay.ErrCanceled)
	assert.Equal(t, mxrelay.OutcomeFailed, res.Outcome)

	relayB := testkit.NewRelay(t, nil)
	for _, to := range []string{"bad@example.com", "worse@example.com"} {
		relayB.Inject(relaytest.Fault{Kind: relaytest.ReplaceReply, Command: "RCPT", Recipient: to, Reply: "550 5.1.1 no such user"})
	}
	var recB testkit.Recorder
	testkit.NewClient(t, relayB, &mxrelay.Options{Store: q.Store(t, nil), OnEvent: recB.On})
	require.True(t, recB.Await(ctx, mxrelay.EventEmailProcessed, 2))
	require.True(t, recB.Await(ctx, mxrelay.EventEmailFailed, 1))
	sent := map[string]*mxrelay.Result{}
	for _, e := range recB.Events() {
		if e.Result != nil {
			sent[e.EmailID] = e.Result
		}
	}
	require.Len(t, sent, 3)
	assert.Len(t, sent["partial"].Rejected, 1)
	assert.Equal(t, mxrelay.OutcomeFailed, sent["refused"].Outcome)

	cc := testkit.NewClient(t, testkit.NewRelay(t, nil), &mxrelay.Options{Store: q.Store(t, nil), MaxEmailsPerSession: 1})
	for id, want := range sent {
		got, err := hs[id].Wait(ctx)
		assert.Equal(t, got.Err, err)
		testkit.SameResult(t, want, got)
		got, err = cc.Result(ctx, id)
		require.NoError(t, err, id)
		testkit.SameResult(t, want, got)
	}
	got, err := cc.Result(ctx, "tocancel")
	require.NoError(t, err)
	testkit.SameResult(t, res, got)
	_, err = cc.Result(ctx, "held")
	assert.ErrorIs(t, err, mxrelay.ErrNotFinished, "A holds it")
	_, err = cc.Result(ctx, "nothing")
	assert.ErrorIs(t, err, mxrelay.ErrNoSuchEmail)
}

// TestSharedStoreCloseHandsBack: Close hands back the emails the Client
// holds and has not started, at once, and leaves the store open; the
// Client's Handles of the others, which the store keeps for any process,
// are handed back too. Another Client then sends each email once.
func TestSharedStoreCloseHandsBack(t *testing.T) {
	q := testkit.NewQueue(t)
	relayA, oa := unreachable(t)
	oa.Store, oa.MaxEmailsPerSession = q.Store(t, nil), 5
	ca := testkit.NewClient(t, relayA, oa)
	const n = 20
	hs := enqueue(t, ca, "back", n)
	ctx := testkit.Ctx(t)
	for _, h := range hs {
		h.Done() // waited for: handed back at Close
	}
	held := ca.Stats().QueueSize
	require.Positive(t, held)
	require.NoError(t, ca.Close(ctx), "nothing was in flight")
	st := ca.Stats()
	assert.Equal(t, int64(held), st.EmailsHandedBack)
	assert.Zero(t, st.EmailsDelivered+st.EmailsFailed-st.EmailsHandedBack)
	assert.Equal(t, st.EmailsQueued-st.EmailsHandedBack, st.EmailsReleased, "the others let go of")
	for _, h := range hs {
		res, err := h.Wait(ctx)
		require.ErrorIs(t, err, mxrelay.ErrClosed)
		require.ErrorIs(t, err, mxrelay.ErrSpooled)
		assert.Equal(t, mxrelay.OutcomeHandedBack, res.Outcome)
	}
	assert.Zero(t, q.Count(`SELECT count(*) FROM {s}.email WHERE owner IS NOT NULL OR finished_at IS NOT NULL`),
		"every email released, none finished")

	relayB := testkit.NewRelay(t, nil)
	var recB testkit.Recorder
	testkit.NewClient(t, relayB, &mxrelay.Options{Store: q.Store(t, nil), OnEvent: recB.On})
	require.True(t, recB.Await(ctx, mxrelay.EventEmailProcessed, n))
	onceEach(t, subjects("back", n), relayB)
	assert.Empty(t, relayA.Mailbox())
}

// stuck is a Client A on q whose session is stuck at the MAIL of its one
// email, "taken", lock-step, so that no end of data is written yet, with
// its events and logs.
type stuck struct {
	a    *gated
	c    *mxrelay.Client
	h    *mxrelay.Handle
	rec  *testkit.Recorder
	logs *testkit.LogBuffer
	// owner is A's name in the store, as the email's row says it.
	owner string
}

func newStuck(t *testing.T, q *testkit.Queue, lease time.Duration) *stuck {
	s := &stuck{a: newGated(t), rec: new(testkit.Recorder), logs: new(testkit.LogBuffer)}
	s.c = testkit.NewClient(t, s.a.relay, &mxrelay.Options{Store: q.Store(t, nil), Lease: lease,
		DisablePipelining: true, CommandTimeout: time.Minute, Logger: s.logs.Logger(), OnEvent: s.rec.On})
	e := testkit.Mail("taken")
	e.ID = "taken"
	var err error
	s.h, err = s.c.Enqueue(e)
	require.NoError(t, err)
	select {
	case <-s.a.hit: // lock-step: MAIL is out, its reply does not come
	case <-testkit.Ctx(t).Done():
		t.Fatal("A's session did not start")
	}
	require.NoError(t, q.Row(`SELECT owner FROM {s}.email WHERE id = 'taken'`).Scan(&s.owner))
	return s
}

// unstick lets A's session go on, and waits for it to end.
func (s *stuck) unstick(t *testing.T) {
	s.a.open()
	require.True(t, s.rec.AwaitFunc(testkit.Ctx(t), func(es []mxrelay.Event) bool {
		return slices.ContainsFunc(es, func(e mxrelay.Event) bool {
			return e.Type == mxrelay.EventSessionCompleted || e.Type == mxrelay.EventSessionFailed
		})
	}), "A's session did not end")
}

// noResult checks that A gave no result and wrote no end of data.
func (s *stuck) noResult(t *testing.T) {
	t.Helper()
	assert.Empty(t, s.a.relay.Mailbox(), "A wrote an end of data for an email taken over")
	for _, e := range s.rec.Events() {
		assert.Nil(t, e.Result, "A gave a result: %v", e.Type)
	}
	st := s.c.Stats()
	assert.Zero(t, st.EmailsDelivered+st.EmailsFailed)
	assert.Equal(t, st.EmailsQueued, st.EmailsReleased, "let go of, each time it was held")
}

// TestSharedStoreLeaseRunOut: A's session is stuck before the end of data
// of its one email when A's lease runs out and B takes the email over
// (B's session is stuck too). Once unstuck, A's Ending is refused: A
// writes no end of data and no result. B sends it, and A's Handle gets
// B's result from the store.
func TestSharedStoreLeaseRunOut(t *testing.T) {
	q := testkit.NewQueue(t)
	a := newStuck(t, q, time.Hour) // no renewal in the test's time
	q.Exec(`UPDATE {s}.email SET lease_expires = now() - interval '1 second' WHERE id = 'taken'`)
	b := newGated(t)
	var recB testkit.Recorder
	testkit.NewClient(t, b.relay, &mxrelay.Options{Store: q.Store(t, nil), OnEvent: recB.On})
	ctx := testkit.Ctx(t)
	select {
	case <-b.hit: // B holds it, and has not finished it: A's body is still there
	case <-ctx.Done():
		t.Fatal("B did not take the email over")
	}
	a.unstick(t)
	a.noResult(t)
	b.open()
	require.True(t, recB.Await(ctx, mxrelay.EventEmailProcessed, 1), "B sent it")
	res, err := a.h.Wait(ctx)
	require.NoError(t, err, "A's Handle gets B's result")
	assert.Equal(t, mxrelay.OutcomeDelivered, res.Outcome)
	onceEach(t, []string{"taken"}, b.relay)
	var owner string
	var attempt int
	require.NoError(t, q.Row(`SELECT owner, attempt FROM {s}.email WHERE id = 'taken' AND finished_at IS NOT NULL`).Scan(&owner, &attempt))
	assert.Equal(t, 2, attempt)
	assert.NotEqual(t, a.owner, owner, "the result is B's")
}

// TestSharedStoreTakenOverWhileRenewed: another claim takes A's email
// over while A's session is stuck before its end of data and A renews its
// lease: A's next renewal is refused and A drops the email, writing no
// end of data and no result once unstuck. When that claim hands it back,
// A claims it anew and sends it once.
func TestSharedStoreTakenOverWhileRenewed(t *testing.T) {
	q := testkit.NewQueue(t)
	a := newStuck(t, q, 300*time.Millisecond) // renewed every 100 ms
	q.Exec(`UPDATE {s}.email SET attempt = attempt + 1, owner = 'intruder', lease_expires = now() + interval '1 hour' WHERE id = 'taken'`)
	ctx := testkit.Ctx(t)
	require.True(t, a.logs.Await(ctx, func(w string) bool { return strings.Contains(w, "taken over by another claim") }),
		"A's renewal did not see the takeover")
	a.unstick(t)
	a.noResult(t)
	assert.Equal(t, 1, q.Count(`SELECT count(*) FROM {s}.email WHERE id = 'taken' AND owner = 'intruder' AND attempt = 2 AND ends = 0 AND finished_at IS NULL`),
		"A wrote nothing of it")

	q.Exec(`UPDATE {s}.email SET owner = NULL, lease_expires = NULL WHERE id = 'taken'`) // the intruder hands it back
	res, err := a.h.Wait(ctx)
	require.NoError(t, err)
	assert.Equal(t, mxrelay.OutcomeDelivered, res.Outcome)
	assert.Equal(t, 1, testkit.CountSubject(a.a.relay, "taken"))
	assert.Equal(t, 1, q.Count(`SELECT count(*) FROM {s}.email WHERE id = 'taken' AND attempt = 3 AND finished_at IS NOT NULL`))
}

// TestSharedStoreTakeoverAfterEndOfData: A's session is stuck after its
// end of data went out (recorded by Ending) when its lease runs out. B's
// takeover sees an end of data with no answer: an unknown outcome, failed
// as such, or with RetryUnknown sent again and flagged MaybeDelivered.
// When A's session goes on, A's copy reaches the server, and A, fenced,
// gives no result: the store's is B's.
func TestSharedStoreTakeoverAfterEndOfData(t *testing.T) {
	for _, retry := range []bool{false, true} {
		t.Run(fmt.Sprint("RetryUnknown ", retry), func(t *testing.T) {
			q := testkit.NewQueue(t)
			a := newGated(t)
			var recA testkit.Recorder
			ca := testkit.NewClient(t, a.relay, &mxrelay.Options{Store: q.Store(t, nil), Lease: time.Hour,
				CommandTimeout: time.Minute, OnEvent: recA.On})
			e := testkit.Mail("unknown")
			e.ID = "unknown"
			h, err := ca.Enqueue(e)
			require.NoError(t, err)
			ctx := testkit.Ctx(t)
			select {
			case <-a.hit: // pipelined: MAIL, RCPT and BDAT LAST in one write, its Ending recorded first
			case <-ctx.Done():
				t.Fatal("A's session did not start")
			}
			require.Equal(t, 1, q.Count(`SELECT ends FROM {s}.email WHERE id = 'unknown'`))
			q.Exec(`UPDATE {s}.email SET lease_expires = now() - interval '1 second' WHERE id = 'unknown'`)

			relayB := testkit.NewRelay(t, nil)
			var recB testkit.Recorder
			testkit.NewClient(t, relayB, &mxrelay.Options{Store: q.Store(t, nil), RetryUnknown: retry, OnEvent: recB.On})
			want := mxrelay.EventEmailFailed
			if retry {
				want = mxrelay.EventEmailProcessed
			}
			require.True(t, recB.Await(ctx, want, 1))
			b := recB.Events()[slices.IndexFunc(recB.Events(), func(e mxrelay.Event) bool { return e.Type == want })].Result
			assert.True(t, b.MaybeDelivered)
			if !retry {
				assert.Equal(t, mxrelay.OutcomeUnknown, b.Outcome)
				assert.ErrorIs(t, b.Err, mxrelay.ErrUnknownOutcome)
			}

			a.open()
			res, err := h.Wait(ctx)
			assert.Equal(t, res.Err, err)
			testkit.SameResult(t, b, res)
			require.True(t, recA.Await(ctx, mxrelay.EventSessionCompleted, 1))
			assert.Equal(t, 1, testkit.CountSubject(a.relay, "unknown"), "A's end of data was out")
			n := 0
			if retry {
				n = 1
			}
			assert.Equal(t, n, testkit.CountSubject(relayB, "unknown"))
			for _, e := range recA.Events() {
				assert.Nil(t, e.Result, "A gave a result: %v", e.Type)
			}
		})
	}
}

// TestSharedStoreDeadHolderIsTakenOver: emails a process claimed before
// it died (its leases never renewed) are sent by another Client once the
// leases run out, when its claim said they would: it does not poll in
// between. One whose end of data the dead process had recorded is an
// unknown outcome.
func TestSharedStoreDeadHolderIsTakenOver(t *testing.T) {
	q := testkit.NewQueue(t)
	st := q.Store(t, nil)
	ctx := testkit.Ctx(t)
	for _, id := range []string{"d0", "d1", "d2"} {
		accept(t, st, &store.Envelope{ID: id, From: "a@example.com", To: []string{"b@example.com"}})
	}
	held, _, err := st.Claim(ctx, "dead", 3, 500*time.Millisecond)
	require.NoError(t, err)
	require.Len(t, held, 3)
	errs, err := st.Ending(ctx, []store.Token{held[2].Token})
	require.NoError(t, err)
	require.NoError(t, errs[0])
	// The process dies here.

	relay := testkit.NewRelay(t, nil)
	var rec testkit.Recorder
	testkit.NewClient(t, relay, &mxrelay.Options{Store: q.Store(t, nil), OnEvent: rec.On})
	require.True(t, rec.Await(ctx, mxrelay.EventEmailProcessed, 2))
	require.True(t, rec.Await(ctx, mxrelay.EventEmailFailed, 1))
	onceEach(t, []string{"d0", "d1"}, relay)
	for _, e := range rec.Events() {
		if e.Type == mxrelay.EventEmailFailed {
			assert.Equal(t, "d2", e.EmailID)
			assert.Equal(t, mxrelay.OutcomeUnknown, e.Result.Outcome)
		}
	}
	assert.Equal(t, 3, q.Count(`SELECT count(*) FROM {s}.email WHERE attempt = 2 AND finished_at IS NOT NULL`))
}

// TestSharedStoreRefusalKeptAcrossARetry: an email refused for one
// recipient (550 5.1.1) and deferred for the other (451) is let go of to
// the store until its retry, and resumed from the progress kept there:
// its Result, and the one read back, still carry the refusal's codes.
func TestSharedStoreRefusalKeptAcrossARetry(t *testing.T) {
	q := testkit.NewQueue(t)
	relay := testkit.NewRelay(t, nil)
	relay.Inject(relaytest.Fault{Kind: relaytest.ReplaceReply, Command: "RCPT", Recipient: "bad@example.com", Reply: "550 5.1.1 no such user"})
	relay.Inject(relaytest.Fault{Kind: relaytest.ReplaceReply, Command: "RCPT", Recipient: "b@example.com", Reply: "451 4.3.0 try later"})
	c := testkit.NewClient(t, relay, &mxrelay.Options{Store: q.Store(t, nil)})
	e := testkit.Mail("retried", "b@example.com", "bad@example.com")
	e.ID = "retried"
	ctx := testkit.Ctx(t)
	res, err := c.Send(ctx, e)
	require.NoError(t, err)
	assert.Equal(t, mxrelay.OutcomeDelivered, res.Outcome)
	assert.Equal(t, 2, res.Attempts)
	assert.Positive(t, c.Stats().EmailsReleased, "let go of until its retry")
	require.Len(t, res.Rejected, 1)
	assert.Equal(t, "bad@example.com", res.Rejected[0].Address)
	assert.Equal(t, 550, res.Rejected[0].Code)
	assert.Equal(t, [3]int{5, 1, 1}, res.Rejected[0].EnhancedCode)
	got, err := c.Result(ctx, "retried")
	require.NoError(t, err)
	testkit.SameResult(t, res, got)
}
