package storetest

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mxrelay/mxrelay/internal/store"
)

// writes are the writes of a claim holder, each as one call that returns
// its error for tok.
var writes = []struct {
	name  string
	write func(st store.Store, tok store.Token) error
}{
	{"finish", func(st store.Store, tok store.Token) error {
		return st.Finish(ctx, tok, delivered(tok.ID))
	}},
	{"ending", func(st store.Store, tok store.Token) error {
		errs, err := st.Ending(ctx, []store.Token{tok})
		if err != nil {
			return err
		}
		return errs[0]
	}},
	{"requeue", func(st store.Store, tok store.Token) error {
		return st.Requeue(ctx, tok, &store.Progress{Attempts: 1, Pending: []string{"b@example.com"}}, time.Time{})
	}},
	{"hand back", func(st store.Store, tok store.Token) error {
		return st.HandBack(ctx, tok, &store.Progress{Attempts: 1, Pending: []string{"b@example.com"}})
	}},
	{"renew", func(st store.Store, tok store.Token) error {
		errs, err := st.Renew(ctx, []store.Token{tok}, time.Hour)
		if err != nil {
			return err
		}
		return errs[0]
	}},
}

var fenceTests = []test{
	{"ExpiredLeaseIsTakenOverAndFencesTheOldHolder", func(s *suite) {
		t := s.t
		st, old := s.held()
		s.b.Expire(t, "e1")
		other := s.other(st)
		c := claimOne(t, other, "w2", "e1")
		assert.Equal(t, store.Token{ID: "e1", Owner: "w2", Attempt: 2}, c.Token)
		assert.Zero(t, c.Unanswered, "no end of data was recorded: not unknown")

		err := st.Finish(ctx, old.Token, delivered("e1"))
		var fe *store.FencedError
		require.ErrorAs(t, err, &fe)
		assert.Equal(t, &store.FencedError{Token: old.Token, Attempt: 2, Owner: "w2"}, fe)
		assert.ErrorIs(t, err, store.ErrFenced)
		require.NoError(t, other.Finish(ctx, c.Token, delivered("e1")))
	}},

	// The spool's rule: an end-of-data record that nothing answered makes
	// a takeover an unknown outcome; a recorded progress answers it.
	{"ExpiredLeaseAfterAnEndOfDataIsAnUnknownOutcome", func(s *suite) {
		t := s.t
		st, c := s.held()
		end(t, st, c.Token)

		s.b.Expire(t, "e1")
		c = claimOne(t, st, "w2", "e1")
		assert.Equal(t, 1, c.Unanswered, "the end of data has no answer: unknown")
		assert.Nil(t, c.Progress)

		// Retried (RetryUnknown): another end of data, answered by a 4xx.
		end(t, st, c.Token)
		p := &store.Progress{Attempts: 2, Unknown: true, Pending: []string{"b@example.com"}}
		require.NoError(t, st.Requeue(ctx, c.Token, p, time.Time{}))

		c = claimOne(t, st, "w3", "e1")
		assert.Zero(t, c.Unanswered, "answered by the progress record")
		assert.Equal(t, p, c.Progress, "MaybeDelivered kept")

		// And the holder dies once more, after two ends of data.
		end(t, st, c.Token)
		end(t, st, c.Token)
		s.b.Expire(t, "e1")
		c = claimOne(t, st, "w4", "e1")
		assert.Equal(t, 2, c.Unanswered)
		assert.Equal(t, p, c.Progress)
		assert.EqualValues(t, 4, c.Token.Attempt)
	}},

	// A holder whose lease was taken over can write nothing: not a result,
	// not an end of data, not a requeue, a hand-back or a renewal.
	{"StaleHolderWritesAreRefused", func(s *suite) {
		// Taken over by another process, or by the same one (its session
		// stuck past the lease while another of its workers claimed
		// again): the attempt alone fences then.
		for _, by := range []string{"w2", "w1"} {
			for _, w := range writes {
				s.t.Run(w.name+" taken over by "+by, func(t *testing.T) {
					s := s.sub(t)
					st, c := s.held()
					stale := c.Token
					s.b.Expire(t, "e1")
					holder := claimOne(t, st, by, "e1").Token

					err := w.write(st, stale)
					var fe *store.FencedError
					require.ErrorAs(t, err, &fe)
					assert.Equal(t, stale, fe.Token)
					assert.EqualValues(t, 2, fe.Attempt)
					assert.Equal(t, by, fe.Owner)
					assert.False(t, fe.Finished)
					// The holder's attempt with another owner: refused too.
					err = w.write(st, store.Token{ID: "e1", Owner: "w3", Attempt: holder.Attempt})
					require.ErrorIs(t, err, store.ErrFenced)

					// Nothing was written: the next takeover finds the
					// email as the holder's claim left it.
					s.b.Expire(t, "e1")
					next := claimOne(t, st, "w9", "e1")
					assert.Zero(t, next.Unanswered, "no end of data recorded")
					assert.Nil(t, next.Progress, "no progress recorded")
					assert.EqualValues(t, 3, next.Token.Attempt)
					require.NoError(t, w.write(st, next.Token), "the holder's own write goes through")
				})
			}
		}
	}},

	{"ReleasedTokenIsSpent", func(s *suite) {
		t := s.t
		st, c := s.held()
		require.NoError(t, st.HandBack(ctx, c.Token, nil))
		err := st.Finish(ctx, c.Token, delivered("e1"))
		var fe *store.FencedError
		require.ErrorAs(t, err, &fe)
		assert.Equal(t, &store.FencedError{Token: c.Token, Attempt: 1}, fe, "not held by anyone")
		assert.Equal(t, []string{"e1"}, IDs(Claim(t, st, "w2", 1)), "handed back: ready again")
	}},

	{"FinishedTokenIsSpent", func(s *suite) {
		t := s.t
		st, c := s.held()
		require.NoError(t, st.Finish(ctx, c.Token, delivered("e1")))
		for _, w := range writes[1:] {
			err := w.write(st, c.Token)
			var fe *store.FencedError
			require.ErrorAs(t, err, &fe, w.name)
			assert.True(t, fe.Finished, w.name)
		}
	}},

	{"FinishAgainWithTheSameTokenIsANoOp", func(s *suite) {
		t := s.t
		st, c := s.held()
		require.NoError(t, st.Finish(ctx, c.Token, &store.Result{ID: "e1", Delivered: true, Attempts: 1}))
		require.NoError(t, st.Finish(ctx, c.Token, &store.Result{ID: "e1", Error: "second"}), "a retry after a lost reply")
		r, err := st.Result(ctx, "e1")
		require.NoError(t, err)
		assert.True(t, r.Delivered, "the first result stands")
		assert.Empty(t, r.Error)
	}},

	{"EndingIsOneCallForAWindow", func(s *suite) {
		t, st := s.t, s.open()
		for _, id := range []string{"e1", "e2", "e3", "e4"} {
			Accept(t, st, id, 0, "x")
		}
		cs := Claim(t, st, "w1", 4)
		require.Len(t, cs, 4)
		s.b.Expire(t, "e2")
		claimOne(t, st, "w2", "e2")
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

		// Recorded for e1 and e4 only.
		for _, id := range []string{"e1", "e2", "e3", "e4"} {
			s.b.Expire(t, id)
		}
		again := map[string]int{}
		for _, c := range Claim(t, st, "w3", 4) {
			again[c.ID] = c.Unanswered
		}
		assert.Equal(t, map[string]int{"e1": 1, "e2": 0, "e3": 0, "e4": 1}, again)
	}},
}
