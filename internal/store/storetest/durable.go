package storetest

import (
	"io"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mxrelay/mxrelay/internal/store"
)

// The tests of a store that keeps what it was given across a reopen: the
// store is closed as a process that dies would be (what it holds is not
// handed back) and a new one opened on the backing. A lease that was
// running may still run then (a shared store keeps it for its holder):
// the tests end it with Expire where they claim again.
var durableTests = []test{
	{"AcceptedIsKeptAcrossAReopen", func(s *suite) {
		s.needDurable()
		t, st := s.t, s.open()
		env := &store.Envelope{ID: "e1", IdempotencyKey: "k1", From: "a@example.com", To: []string{"b@example.com"},
			Priority: 2, Retries: 3, Deadline: time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)}
		a := AcceptEnv(t, st, env, "the body")
		Accept(t, st, "e2", 0, "second")
		d, err := st.Accept(ctx, envelope("torn", 0))
		require.NoError(t, err)
		_, err = d.Write([]byte("never committed"))
		require.NoError(t, err)
		// No Abort before the reopen: the process dies with the Accept in
		// progress. (Aborted when the test ends, so that a store that
		// holds a connection for it can let the connection go.)
		t.Cleanup(d.Abort)

		st = s.reopen(st)
		got := Claim(t, st, "w1", 10)
		require.Equal(t, []string{"e1", "e2"}, IDs(got), "what was committed, in order")
		c := got[0]
		assert.Equal(t, *env, c.Envelope)
		assert.Equal(t, []byte("meta:e1"), c.Meta)
		assert.True(t, a.Queued.Equal(c.Queued))
		assert.EqualValues(t, len("the body"), c.BodySize)
		r, err := st.Body(ctx, "e1")
		require.NoError(t, err)
		body, err := io.ReadAll(r)
		require.NoError(t, err)
		r.Close()
		assert.Equal(t, "the body", string(body))
		_, err = st.Result(ctx, "torn")
		assert.ErrorIs(t, err, store.ErrNotFound, "an Accept cut short accepts nothing")

		keyTaken(t, st, "k1", "e1", "the key of an email kept across the reopen")
		_, err = st.Accept(ctx, envelope("e2", 0))
		assert.ErrorIs(t, err, store.ErrDuplicateID)
	}},

	// The spool's rule across a reopen: an end of data recorded and not
	// answered is an unknown outcome; one answered by a progress is not.
	{"UnansweredEndOfDataIsUnknownAfterAReopen", func(s *suite) {
		s.needDurable()
		t, st := s.t, s.open()
		for _, id := range []string{"ended", "answered", "handed back", "untouched"} {
			Accept(t, st, id, 0, "x")
		}
		cs := Claim(t, st, "w1", 4)
		require.Len(t, cs, 4)
		var toks []store.Token
		for _, c := range cs {
			toks = append(toks, c.Token)
		}
		end(t, st, toks[:3]...)
		p := &store.Progress{Attempts: 1, Accepted: []string{"b@example.com"}, Rejected: map[string]string{"c@example.com": "550 no"}, Pending: []string{"d@example.com"}}
		require.NoError(t, st.Requeue(ctx, toks[1], p, time.Time{}))
		require.NoError(t, st.HandBack(ctx, toks[2], nil))

		st = s.reopen(st)
		for _, id := range []string{"ended", "untouched"} {
			s.b.Expire(t, id)
		}
		got := map[string]*store.Claimed{}
		for _, c := range Claim(t, st, "w2", 10) {
			got[c.ID] = c
		}
		require.Len(t, got, 4)
		assert.Equal(t, 1, got["ended"].Unanswered, "ended, not answered: unknown")
		assert.Nil(t, got["ended"].Progress)
		assert.Zero(t, got["answered"].Unanswered)
		assert.Equal(t, p, got["answered"].Progress, "resumed from its progress")
		assert.Equal(t, 1, got["handed back"].Unanswered, "handed back without progress")
		assert.Zero(t, got["untouched"].Unanswered)

		// The tokens of before are spent.
		err := st.Finish(ctx, toks[0], delivered("ended"))
		assert.ErrorIs(t, err, store.ErrFenced)
	}},

	{"ResultsAreKeptAcrossAReopen", func(s *suite) {
		s.needDurable()
		t := s.t
		st, c := s.held()
		AcceptEnv(t, st, &store.Envelope{ID: "e2", IdempotencyKey: "k2"}, "x")
		c2 := claimOne(t, st, "w1", "e2")
		want := full("e1")
		require.NoError(t, st.Finish(ctx, c.Token, want))
		require.NoError(t, st.Finish(ctx, c2.Token, delivered("e2")))

		st = s.reopen(st)
		got, err := st.Result(ctx, "e1")
		require.NoError(t, err)
		got.Finished, got.Queued = time.Time{}, want.Queued
		assert.Equal(t, want, got)
		a := receive(s, waitFor(ctx, st, "e2"), "a result recorded before the reopen")
		require.NoError(t, a.err)
		assert.True(t, a.r.Delivered)
		assert.Empty(t, Claim(t, st, "w2", 10), "finished emails are not sent again")

		keyTaken(t, st, "k2", "e2", "the key of a result kept across the reopen")
		_, err = st.Accept(ctx, envelope("e1", 0))
		assert.ErrorIs(t, err, store.ErrDuplicateID, "the ID of a result kept")
	}},

	{"ACanceledEmailStaysFinishedAcrossAReopen", func(s *suite) {
		s.needDurable()
		t, st := s.t, s.open()
		Accept(t, st, "e1", 0, "x")
		done, err := st.Cancel(ctx, "e1", &store.Result{ID: "e1", Error: "canceled", Kind: "canceled"})
		require.NoError(t, err)
		require.True(t, done)
		st = s.reopen(st)
		assert.Empty(t, Claim(t, st, "w1", 1))
		r, err := st.Result(ctx, "e1")
		require.NoError(t, err)
		assert.Equal(t, "canceled", r.Kind)
	}},
}
