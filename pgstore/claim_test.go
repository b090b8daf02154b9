package pgstore

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mxrelay/mxrelay/internal/store"
)

func TestClaimOrdersByPriorityThenAcceptance(t *testing.T) {
	f := newFixture(t)
	st := f.open(nil)
	accept(t, st, "low", -1, "x")
	accept(t, st, "normal1", 0, "x")
	accept(t, st, "critical", 2, "x")
	accept(t, st, "normal2", 0, "x")
	accept(t, st, "high", 1, "x")
	accept(t, st, "normal3", 0, "x")

	got := claim(t, st, "w1", 2)
	assert.Equal(t, []string{"critical", "high"}, ids(got))
	got = claim(t, st, "w1", 10)
	assert.Equal(t, []string{"normal1", "normal2", "normal3", "low"}, ids(got))
	assert.Empty(t, claim(t, st, "w1", 10), "all held")
}

func TestClaimedCarriesTheEnvelope(t *testing.T) {
	f := newFixture(t)
	st := f.open(nil)
	env := &store.Envelope{ID: "e1", From: "a@example.com", To: []string{"b@example.com", "c@example.com"},
		Priority: 1, Retries: 5, Immediate: true, Deadline: time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)}
	a := acceptEnv(t, st, env, "hello")
	got := claim(t, st, "w1", 1)
	require.Len(t, got, 1)
	c := got[0]
	assert.Equal(t, *env, c.Envelope)
	assert.Equal(t, store.Token{ID: "e1", Owner: "w1", Attempt: 1}, c.Token)
	assert.Equal(t, []byte("meta:e1"), c.Meta)
	assert.EqualValues(t, 5, c.BodySize)
	assert.True(t, a.Queued.Equal(c.Queued))
	assert.Nil(t, c.Progress)
	assert.Zero(t, c.Unanswered)
	assert.Empty(t, c.Canceled)
}

// Many claimers at once, each on a pool of its own as separate processes
// would be: SKIP LOCKED hands every email to exactly one of them.
func TestConcurrentClaimersNeverShareAnEmail(t *testing.T) {
	f := newFixture(t)
	st := f.open(nil)
	const emails, claimers = 300, 6
	for i := range emails {
		accept(t, st, fmt.Sprintf("e%03d", i), i%4-1, "x")
	}
	stores := make([]*Store, claimers)
	for i := range stores {
		stores[i] = f.open(nil)
	}
	var mu sync.Mutex
	owner := map[string]string{}
	var dup []string
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i, s := range stores {
		wg.Go(func() {
			<-start
			me := fmt.Sprintf("w%d", i)
			for {
				got, _, err := s.Claim(context.Background(), me, 5, time.Hour)
				if !assert.NoError(t, err) || len(got) == 0 {
					return
				}
				mu.Lock()
				for _, c := range got {
					if prev, ok := owner[c.ID]; ok {
						dup = append(dup, c.ID+" by "+prev+" and "+me)
					}
					owner[c.ID] = me
				}
				mu.Unlock()
			}
		})
	}
	close(start)
	wg.Wait()
	assert.Empty(t, dup, "claimed twice")
	assert.Len(t, owner, emails, "every email claimed")
}

func TestExpiredLeaseIsTakenOverAndFencesTheOldHolder(t *testing.T) {
	f, st, old := heldEmail(t)

	got, next, err := st.Claim(context.Background(), "w2", 1, time.Hour)
	require.NoError(t, err)
	assert.Empty(t, got, "a running lease is not taken over")
	assert.True(t, next.Equal(old.Expires), "next is the lease's end: %v, %v", next, old.Expires)

	f.expire("e1")
	got = claim(t, st, "w2", 1)
	require.Len(t, got, 1, "ready again once the lease expired")
	c := got[0]
	assert.Equal(t, store.Token{ID: "e1", Owner: "w2", Attempt: 2}, c.Token)
	assert.Zero(t, c.Unanswered, "no end of data was recorded: not unknown")

	err = st.Finish(context.Background(), old.Token, &store.Result{ID: "e1", Delivered: true})
	var fe *store.FencedError
	require.ErrorAs(t, err, &fe)
	assert.Equal(t, &store.FencedError{Token: old.Token, Attempt: 2, Owner: "w2"}, fe)
	assert.ErrorIs(t, err, store.ErrFenced)
	require.NoError(t, st.Finish(context.Background(), c.Token, &store.Result{ID: "e1", Delivered: true}))
}

// The spool's rule: an end-of-data record that nothing answered makes a
// takeover an unknown outcome; a recorded progress answers it.
func TestExpiredLeaseAfterAnEndOfDataIsAnUnknownOutcome(t *testing.T) {
	f, st, c := heldEmail(t)
	ctx := context.Background()
	end(t, st, c.Token)

	f.expire("e1")
	c = claim(t, st, "w2", 1)[0]
	assert.Equal(t, 1, c.Unanswered, "the end of data has no answer: unknown")
	assert.Nil(t, c.Progress)

	// Retried (RetryUnknown): another end of data, answered by a 4xx.
	end(t, st, c.Token)
	p := &store.Progress{Attempts: 2, Unknown: true, Pending: []string{"b@example.com"}}
	require.NoError(t, st.Requeue(ctx, c.Token, p, time.Time{}))

	c = claim(t, st, "w3", 1)[0]
	assert.Zero(t, c.Unanswered, "answered by the progress record")
	assert.Equal(t, p, c.Progress, "MaybeDelivered kept")

	// And the holder dies once more after an end of data.
	end(t, st, c.Token)
	f.expire("e1")
	c = claim(t, st, "w4", 1)[0]
	assert.Equal(t, 1, c.Unanswered)
	assert.Equal(t, p, c.Progress)
	assert.EqualValues(t, 4, c.Token.Attempt)
}

// A holder whose lease was taken over can write nothing: not a result,
// not an end of data, not a requeue, a hand-back or a renewal.
func TestStaleHolderWritesAreRefused(t *testing.T) {
	ctx := context.Background()
	p := &store.Progress{Attempts: 1, Pending: []string{"b@example.com"}}
	writes := []struct {
		name  string
		write func(st *Store, tok store.Token) error
	}{
		{"finish", func(st *Store, tok store.Token) error {
			return st.Finish(ctx, tok, &store.Result{ID: tok.ID, Delivered: true})
		}},
		{"ending", func(st *Store, tok store.Token) error {
			errs, err := st.Ending(ctx, []store.Token{tok})
			if err != nil {
				return err
			}
			return errs[0]
		}},
		{"requeue", func(st *Store, tok store.Token) error { return st.Requeue(ctx, tok, p, time.Time{}) }},
		{"hand back", func(st *Store, tok store.Token) error { return st.HandBack(ctx, tok, p) }},
		{"renew", func(st *Store, tok store.Token) error {
			errs, err := st.Renew(ctx, []store.Token{tok}, time.Hour)
			if err != nil {
				return err
			}
			return errs[0]
		}},
	}
	// Taken over by another process, or by the same one (its session
	// stuck past the lease while another of its workers claimed again):
	// the attempt alone fences then.
	for _, by := range []string{"w2", "w1"} {
		for _, w := range writes {
			t.Run(w.name+" taken over by "+by, func(t *testing.T) {
				f, st, c := heldEmail(t)
				stale := c.Token
				f.expire("e1")
				holder := claim(t, st, by, 1)[0].Token
				before := f.count(`SELECT ends FROM {s}.email WHERE id = 'e1'`)

				err := w.write(st, stale)
				var fe *store.FencedError
				require.ErrorAs(t, err, &fe)
				assert.EqualValues(t, 2, fe.Attempt)
				assert.Equal(t, by, fe.Owner)

				assert.Equal(t, before, f.count(`SELECT ends FROM {s}.email WHERE id = 'e1'`), "nothing recorded")
				assert.Equal(t, 1, f.count(`SELECT count(*) FROM {s}.email WHERE id = 'e1' AND owner = $1 AND finished_at IS NULL AND progress IS NULL`, by),
					"the new holder's claim is untouched")
				// The holder's attempt with another owner: refused too.
				err = w.write(st, store.Token{ID: "e1", Owner: "w3", Attempt: holder.Attempt})
				require.ErrorIs(t, err, store.ErrFenced)
				require.NoError(t, w.write(st, holder), "the holder's own write goes through")
			})
		}
	}
}

func TestReleasedTokenIsSpent(t *testing.T) {
	_, st, c := heldEmail(t)
	ctx := context.Background()
	require.NoError(t, st.HandBack(ctx, c.Token, nil))
	err := st.Finish(ctx, c.Token, &store.Result{ID: "e1"})
	var fe *store.FencedError
	require.ErrorAs(t, err, &fe)
	assert.Equal(t, &store.FencedError{Token: c.Token, Attempt: 1}, fe, "not held by anyone")
	assert.Equal(t, []string{"e1"}, ids(claim(t, st, "w2", 1)), "handed back: ready again")
}

func TestFinishAgainWithTheSameTokenIsANoOp(t *testing.T) {
	_, st, c := heldEmail(t)
	ctx := context.Background()
	require.NoError(t, st.Finish(ctx, c.Token, &store.Result{ID: "e1", Delivered: true, Attempts: 1}))
	require.NoError(t, st.Finish(ctx, c.Token, &store.Result{ID: "e1", Error: "second"}), "a retry after a lost reply")
	r, err := st.Result(ctx, "e1")
	require.NoError(t, err)
	assert.True(t, r.Delivered, "the first result stands")
	assert.Empty(t, r.Error)
}

func TestEndingIsOneCallForAWindow(t *testing.T) {
	f := newFixture(t)
	st := f.open(nil)
	ctx := context.Background()
	for _, id := range []string{"e1", "e2", "e3", "e4"} {
		accept(t, st, id, 0, "x")
	}
	cs := claim(t, st, "w1", 4)
	require.Len(t, cs, 4)
	f.expire("e2")
	taken := claim(t, st, "w2", 1)
	require.Equal(t, []string{"e2"}, ids(taken))
	_, err := st.Cancel(ctx, "e3", &store.Result{ID: "e3", Error: "canceled", Kind: "canceled"})
	require.NoError(t, err)

	var toks []store.Token
	for _, c := range cs {
		toks = append(toks, c.Token)
	}
	errs, err := st.Ending(ctx, toks)
	require.NoError(t, err)
	require.Len(t, errs, 4)
	assert.NoError(t, errs[0])
	assert.ErrorIs(t, errs[1], store.ErrFenced)
	assert.ErrorIs(t, errs[2], store.ErrCanceled)
	assert.NoError(t, errs[3])
	assert.Equal(t, 2, f.count(`SELECT sum(ends) FROM {s}.email`), "recorded for e1 and e4 only")
}

func TestRequeueWaitsForItsRetryTime(t *testing.T) {
	f, st, c := heldEmail(t)
	ctx := context.Background()
	at := time.Now().Add(time.Hour).Truncate(time.Microsecond)
	require.NoError(t, st.Requeue(ctx, c.Token, &store.Progress{Attempts: 1}, at))

	got, next, err := st.Claim(ctx, "w1", 1, time.Hour)
	require.NoError(t, err)
	assert.Empty(t, got, "not before its retry time")
	assert.True(t, next.Equal(at), "next is the retry time: %v, %v", next, at)

	f.exec(`UPDATE {s}.email SET not_before = now() - interval '1 second'`)
	got = claim(t, st, "w1", 1)
	require.Equal(t, []string{"e1"}, ids(got), "due")
	assert.Equal(t, &store.Progress{Attempts: 1}, got[0].Progress)

	_, next, err = st.Claim(ctx, "w1", 1, time.Hour)
	require.NoError(t, err)
	assert.True(t, next.Equal(got[0].Expires), "with nothing else waiting, next is the lease's end")
}

func TestRenewExtendsTheLease(t *testing.T) {
	f := newFixture(t)
	st := f.open(nil)
	ctx := context.Background()
	accept(t, st, "e1", 0, "x")
	c, _, err := st.Claim(ctx, "w1", 1, time.Minute)
	require.NoError(t, err)
	f.expire("e1")
	// Expired, not taken over: still the holder's.
	errs, err := st.Renew(ctx, []store.Token{c[0].Token}, time.Hour)
	require.NoError(t, err)
	require.Equal(t, []error{nil}, errs)
	got, _, err := st.Claim(ctx, "w2", 1, time.Hour)
	require.NoError(t, err)
	assert.Empty(t, got, "renewed: not taken over")
}

func TestCancel(t *testing.T) {
	f := newFixture(t)
	st := f.open(nil)
	ctx := context.Background()
	accept(t, st, "queued", 0, "body")
	accept(t, st, "held", 0, "body")
	r := func(id string) *store.Result {
		return &store.Result{ID: id, Error: "canceled by the caller", Kind: "canceled"}
	}

	done, err := st.Cancel(ctx, "queued", r("queued"))
	require.NoError(t, err)
	assert.True(t, done, "no one held it: finished at once")
	res, err := st.Result(ctx, "queued")
	require.NoError(t, err)
	assert.Equal(t, "canceled", res.Kind)
	_, err = st.Body(ctx, "queued")
	assert.ErrorIs(t, err, store.ErrNotFound, "the body went with the result")

	held := claim(t, st, "w1", 1)[0]
	require.Equal(t, "held", held.ID)
	done, err = st.Cancel(ctx, "held", r("held"))
	require.NoError(t, err)
	assert.False(t, done, "held: marked for its holder")
	errs, err := st.Ending(ctx, []store.Token{held.Token})
	require.NoError(t, err)
	assert.ErrorIs(t, errs[0], store.ErrCanceled)
	// The holder dies: the next claim says so.
	f.expire("held")
	again := claim(t, st, "w2", 1)
	require.Len(t, again, 1)
	assert.Equal(t, "canceled by the caller", again[0].Canceled)
	require.NoError(t, st.Finish(ctx, again[0].Token, r("held")))

	done, err = st.Cancel(ctx, "held", r("held"))
	require.NoError(t, err)
	assert.False(t, done, "already finished")
	_, err = st.Cancel(ctx, "nosuch", r("nosuch"))
	assert.ErrorIs(t, err, store.ErrNotFound)
}

func TestHandBackKeepsOrAnswersTheEndOfData(t *testing.T) {
	_, st, c := heldEmail(t)
	ctx := context.Background()
	end(t, st, c.Token)
	require.NoError(t, st.HandBack(ctx, c.Token, nil))
	c = claim(t, st, "w2", 1)[0]
	assert.Equal(t, 1, c.Unanswered, "handed back without progress: the end of data stays unanswered")

	p := &store.Progress{Attempts: 1, Accepted: []string{"b@example.com"}, Pending: []string{}}
	require.NoError(t, st.HandBack(ctx, c.Token, p))
	c = claim(t, st, "w3", 1)[0]
	assert.Zero(t, c.Unanswered)
	assert.Equal(t, p, c.Progress)
}
