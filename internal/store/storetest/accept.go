package storetest

import (
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mxrelay/mxrelay/internal/store"
)

var acceptTests = []test{
	{"AcceptIsInvisibleUntilCommitted", func(s *suite) {
		t, st := s.t, s.open()
		d, err := st.Accept(ctx, envelope("e1", 0))
		require.NoError(t, err)
		_, ok := d.Existing()
		assert.False(t, ok)
		_, err = d.Write([]byte("body"))
		require.NoError(t, err)
		assert.Empty(t, Claim(t, st, "w1", 1), "not claimable before Commit")
		_, err = st.Result(ctx, "e1")
		assert.ErrorIs(t, err, store.ErrNotFound)
		_, err = st.Body(ctx, "e1")
		assert.ErrorIs(t, err, store.ErrNotFound)
		d.Abort()
		d.Abort() // twice is safe
		assert.Empty(t, Claim(t, st, "w1", 1), "aborted: never accepted")
		Accept(t, st, "e1", 0, "again")
		assert.Equal(t, []string{"e1"}, IDs(Claim(t, st, "w1", 1)), "an aborted ID is free")
	}},

	{"CommitMakesTheEmailClaimable", func(s *suite) {
		t := s.t
		st := s.open()
		claimer := s.other(st)
		env := &store.Envelope{
			ID: "e1", From: "a@example.com", To: []string{"b@example.com", "c@example.com"},
			Mail:     &smtp.MailOptions{Body: smtp.Body8BitMIME, Size: 5},
			Rcpt:     map[string]*smtp.RcptOptions{"c@example.com": {Notify: []smtp.DSNNotify{smtp.DSNNotifyFailure}}},
			Priority: 1, Retries: 5, Immediate: true, Deadline: time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC),
		}
		woken := claimer.Wake()
		a := AcceptEnv(t, st, env, "hello")
		assert.Equal(t, "e1", a.ID)
		assert.False(t, a.Existing)
		assert.False(t, a.Queued.IsZero())
		Wait(t, woken, "the claimers woken by the commit")
		_, err := claimer.Result(ctx, "e1")
		assert.ErrorIs(t, err, store.ErrNotFinished, "kept, no result yet")

		got := Claim(t, claimer, "w1", 2)
		require.Len(t, got, 1)
		c := got[0]
		assert.Equal(t, *env, c.Envelope)
		assert.Equal(t, store.Token{ID: "e1", Owner: "w1", Attempt: 1}, c.Token)
		assert.Equal(t, []byte("meta:e1"), c.Meta, "meta as given")
		assert.EqualValues(t, 5, c.BodySize)
		assert.True(t, a.Queued.Equal(c.Queued), "queued %v, claimed %v", a.Queued, c.Queued)
		assert.True(t, c.Expires.After(a.Queued), "the lease ends after the accept")
		assert.Nil(t, c.Progress)
		assert.Zero(t, c.Unanswered)
		assert.Empty(t, c.Canceled)
	}},

	{"AcceptRefusesAnIDAlreadyKept", func(s *suite) {
		t, st := s.t, s.open()
		Accept(t, st, "e1", 0, "x")
		_, err := st.Accept(ctx, envelope("e1", 0))
		require.ErrorIs(t, err, store.ErrDuplicateID, "an email")
		c := claimOne(t, st, "w1", "e1")
		require.NoError(t, st.Finish(ctx, c.Token, delivered("e1")))
		_, err = s.other(st).Accept(ctx, envelope("e1", 0))
		require.ErrorIs(t, err, store.ErrDuplicateID, "a result")
	}},

	{"IdempotencyKeyReturnsTheFirstEmail", func(s *suite) {
		t := s.t
		st := s.open()
		first := AcceptEnv(t, st, &store.Envelope{ID: "e1", IdempotencyKey: "k", To: []string{"b@example.com"}}, "first")
		assert.False(t, first.Existing)

		again := s.other(st)
		d, err := again.Accept(ctx, &store.Envelope{ID: "e2", IdempotencyKey: "k", To: []string{"b@example.com"}})
		require.NoError(t, err)
		got, ok := d.Existing()
		require.True(t, ok, "known before the body is written")
		assert.Equal(t, "e1", got.ID)
		_, err = d.Write([]byte("second"))
		require.NoError(t, err)
		a, err := d.Commit(ctx, nil)
		require.NoError(t, err)
		assert.Equal(t, "e1", a.ID)
		assert.True(t, a.Existing)
		assert.True(t, first.Queued.Equal(a.Queued))

		c := Claim(t, st, "w1", 10)
		require.Equal(t, []string{"e1"}, IDs(c), "no second copy")
		_, err = st.Result(ctx, "e2")
		assert.ErrorIs(t, err, store.ErrNotFound)

		// While its result is kept, the key is still taken.
		require.NoError(t, st.Finish(ctx, c[0].Token, delivered("e1")))
		keyTaken(t, again, "k", "e1", "the key of a result kept")
	}},

	// An Accept with the key of one in progress waits for it: the second
	// gets the first email once it commits, or its own when the first
	// aborts.
	{"IdempotencyKeyWaitsForTheAcceptInProgress", func(s *suite) {
		for _, commit := range []bool{true, false} {
			s.t.Run(fmt.Sprintf("first commits %v", commit), func(t *testing.T) {
				s := s.sub(t)
				st := s.open()
				st2 := s.other(st)
				id1, key := "e1", "k"
				d1, err := st.Accept(ctx, &store.Envelope{ID: id1, IdempotencyKey: key})
				require.NoError(t, err)
				_, err = d1.Write([]byte("first"))
				require.NoError(t, err)

				second := make(chan store.Accepted, 1)
				go func() {
					defer close(second)
					d2, err := st2.Accept(ctx, &store.Envelope{ID: "e2", IdempotencyKey: key})
					if !assert.NoError(t, err) {
						return
					}
					d2.Write([]byte("second"))
					a, err := d2.Commit(ctx, nil)
					assert.NoError(t, err)
					second <- a
				}()
				if commit {
					_, err = d1.Commit(ctx, nil)
					require.NoError(t, err)
				} else {
					d1.Abort()
				}
				var a store.Accepted
				select {
				case a = <-second:
				case <-time.After(bound):
					t.Fatal("the second Accept did not return")
				}
				if commit {
					assert.Equal(t, id1, a.ID)
					assert.True(t, a.Existing)
				} else {
					assert.Equal(t, "e2", a.ID)
					assert.False(t, a.Existing)
				}
				assert.Len(t, Claim(t, st, "w1", 10), 1, "one email")
			})
		}
	}},

	// Many Accepts racing with one key (from several stores when they
	// share a backing): exactly one email, and each of them is told its ID.
	{"IdempotencyKeyRace", func(s *suite) {
		t := s.t
		const racers = 8
		stores := []store.Store{s.open()}
		if s.caps.Shared {
			stores = append(stores, s.open())
		}
		var wg sync.WaitGroup
		got := make([]store.Accepted, racers)
		start := make(chan struct{})
		for i := range racers {
			wg.Go(func() {
				<-start
				st := stores[i%len(stores)]
				d, err := st.Accept(ctx, &store.Envelope{ID: fmt.Sprintf("e%d", i), IdempotencyKey: "k"})
				if !assert.NoError(t, err) {
					return
				}
				d.Write([]byte("body"))
				a, err := d.Commit(ctx, nil)
				assert.NoError(t, err)
				got[i] = a
			})
		}
		close(start)
		wg.Wait()
		fresh := 0
		for _, a := range got {
			assert.Equal(t, got[0].ID, a.ID, "every racer has the one email")
			if !a.Existing {
				fresh++
			}
		}
		assert.Equal(t, 1, fresh, "one of them accepted it")
		assert.Len(t, Claim(t, stores[0], "w1", 10), 1)
	}},
}
