package storetest

import (
	"fmt"
	"sync"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mxrelay/mxrelay/internal/store"
)

var claimTests = []test{
	{"ClaimOrdersByPriorityThenAcceptance", func(s *suite) {
		t, st := s.t, s.open()
		Accept(t, st, "low", -1, "x")
		Accept(t, st, "normal1", 0, "x")
		Accept(t, st, "critical", 2, "x")
		Accept(t, st, "normal2", 0, "x")
		Accept(t, st, "high", 1, "x")
		Accept(t, st, "normal3", 0, "x")

		assert.Equal(t, []string{"critical", "high"}, IDs(Claim(t, st, "w1", 2)))
		assert.Equal(t, []string{"normal1", "normal2", "normal3", "low"}, IDs(Claim(t, st, "w1", 10)))
		assert.Empty(t, Claim(t, st, "w1", 10), "all held")
	}},

	// A retry keeps its place: an email coming back goes before those
	// accepted after it, and an email whose lease was taken over is
	// claimed in the same order as the ready ones.
	{"ClaimKeepsTheOrderOfAcceptanceAcrossRetries", func(s *suite) {
		t, st := s.t, s.open()
		for _, id := range []string{"e1", "e2", "e3", "e4"} {
			Accept(t, st, id, 0, "x")
		}
		first := Claim(t, st, "w1", 3)
		require.Equal(t, []string{"e1", "e2", "e3"}, IDs(first))
		require.NoError(t, st.Requeue(ctx, first[2].Token, &store.Progress{Attempts: 1}, time.Time{}))
		s.b.Expire(t, "e2")
		assert.Equal(t, []string{"e2", "e3", "e4"}, IDs(Claim(t, st, "w2", 10)))
	}},

	{"ALeasedEmailIsNotClaimedAgain", func(s *suite) {
		t, st := s.t, s.open()
		Accept(t, st, "e1", 0, "x")
		held := claimOne(t, st, "w1", "e1")
		got, next, err := s.other(st).Claim(ctx, "w2", 1, time.Hour)
		require.NoError(t, err)
		assert.Empty(t, got, "a running lease is not taken over")
		assert.True(t, next.Equal(held.Expires), "next is the lease's end: %v, %v", next, held.Expires)

		_, next, err = st.Claim(ctx, "w2", 1, time.Hour)
		require.NoError(t, err)
		assert.False(t, next.IsZero())
		require.NoError(t, st.Finish(ctx, held.Token, delivered("e1")))
		_, next, err = st.Claim(ctx, "w2", 1, time.Hour)
		require.NoError(t, err)
		assert.True(t, next.IsZero(), "nothing left that can become ready: %v", next)
	}},

	{"ClaimRefusesBadArguments", func(s *suite) {
		t, st := s.t, s.open()
		for _, c := range []struct {
			owner string
			n     int
			lease time.Duration
		}{{"", 1, time.Hour}, {"w1", 0, time.Hour}, {"w1", 1, 0}} {
			_, _, err := st.Claim(ctx, c.owner, c.n, c.lease)
			assert.Error(t, err, "%+v", c)
		}
	}},

	// Many claimers at once, on stores of their own when they can share
	// a backing: every email goes to exactly one of them.
	{"ConcurrentClaimersNeverShareAnEmail", func(s *suite) {
		t, st := s.t, s.open()
		const emails, claimers = 300, 6
		for i := range emails {
			Accept(t, st, fmt.Sprintf("e%03d", i), i%4-1, "x")
		}
		stores := make([]store.Store, claimers)
		for i := range stores {
			stores[i] = s.other(st)
		}
		var mu sync.Mutex
		owner := map[string]string{}
		var dup []string
		var wg sync.WaitGroup
		start := make(chan struct{})
		for i, cs := range stores {
			wg.Go(func() {
				<-start
				me := fmt.Sprintf("w%d", i)
				for {
					got, _, err := cs.Claim(ctx, me, 5, time.Hour)
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
	}},

	{"RequeueWaitsForItsRetryTime", func(s *suite) {
		t := s.t
		st, c := s.held()
		at := time.Now().Add(time.Hour).Truncate(time.Microsecond)
		p := &store.Progress{Attempts: 1, Rejected: map[string]string{"c@example.com": "550 no"}, Pending: []string{"b@example.com"}}
		require.NoError(t, st.Requeue(ctx, c.Token, p, at))

		got, next, err := st.Claim(ctx, "w1", 1, time.Hour)
		require.NoError(t, err)
		assert.Empty(t, got, "not before its retry time")
		assert.True(t, next.Equal(at), "next is the retry time: %v, %v", next, at)

		s.b.Due(t, "e1")
		c = claimOne(t, st, "w1", "e1")
		assert.Equal(t, p, c.Progress, "the progress recorded")
		assert.EqualValues(t, 2, c.Token.Attempt)

		_, next, err = st.Claim(ctx, "w1", 1, time.Hour)
		require.NoError(t, err)
		assert.True(t, next.Equal(c.Expires), "with nothing else waiting, next is the lease's end")

		require.NoError(t, st.Requeue(ctx, c.Token, p, time.Time{}))
		claimOne(t, st, "w1", "e1") // zero: ready now
	}},

	{"RenewExtendsTheLease", func(s *suite) {
		t, st := s.t, s.open()
		Accept(t, st, "e1", 0, "x")
		got, _, err := st.Claim(ctx, "w1", 1, time.Minute)
		require.NoError(t, err)
		require.Len(t, got, 1)
		s.b.Expire(t, "e1")
		// Expired, not taken over: still the holder's.
		errs, err := st.Renew(ctx, []store.Token{got[0].Token}, time.Hour)
		require.NoError(t, err)
		require.Equal(t, []error{nil}, errs)
		assert.Empty(t, Claim(t, s.other(st), "w2", 1), "renewed: not taken over")
		_, err = st.Renew(ctx, []store.Token{got[0].Token}, 0)
		assert.Error(t, err, "a lease of zero")
	}},

	{"HandBackKeepsOrAnswersTheEndOfData", func(s *suite) {
		t := s.t
		st, c := s.held()
		end(t, st, c.Token)
		require.NoError(t, st.HandBack(ctx, c.Token, nil))
		c = claimOne(t, st, "w2", "e1")
		assert.Equal(t, 1, c.Unanswered, "handed back without progress: the end of data stays unanswered")

		p := &store.Progress{Attempts: 1, Accepted: []string{"b@example.com"}, Pending: []string{}}
		require.NoError(t, st.HandBack(ctx, c.Token, p))
		c = claimOne(t, st, "w3", "e1")
		assert.Zero(t, c.Unanswered, "answered by the progress")
		assert.Equal(t, p, c.Progress)
	}},

	{"WakeOnRelease", func(s *suite) {
		t := s.t
		st, c := s.held()
		idle := s.other(st)
		woken := idle.Wake()
		require.NoError(t, st.HandBack(ctx, c.Token, nil))
		Wait(t, woken, "woken by the hand-back")
		c = claimOne(t, idle, "w2", "e1")

		woken = st.Wake()
		require.NoError(t, idle.Requeue(ctx, c.Token, &store.Progress{}, time.Time{}))
		Wait(t, woken, "woken by the requeue")
		require.NotNil(t, st.Wake(), "never nil")
	}},

	{"Cancel", func(s *suite) {
		t, st := s.t, s.open()
		Accept(t, st, "queued", 0, "body")
		Accept(t, st, "held", 0, "body")
		r := func(id string) *store.Result {
			return &store.Result{ID: id, Error: "canceled by the caller", Kind: "canceled"}
		}
		canceler := s.other(st)

		done, err := canceler.Cancel(ctx, "queued", r("queued"))
		require.NoError(t, err)
		assert.True(t, done, "no one held it: finished at once")
		res, err := st.Result(ctx, "queued")
		require.NoError(t, err)
		assert.Equal(t, "canceled", res.Kind)
		assert.False(t, res.Finished.IsZero())
		_, err = st.Body(ctx, "queued")
		assert.ErrorIs(t, err, store.ErrNotFound, "the body went with the result")

		held := claimOne(t, st, "w1", "held")
		done, err = canceler.Cancel(ctx, "held", r("held"))
		require.NoError(t, err)
		assert.False(t, done, "held: marked for its holder")
		errs, err := st.Ending(ctx, []store.Token{held.Token})
		require.NoError(t, err)
		assert.ErrorIs(t, errs[0], store.ErrCanceled)
		// The holder dies: the next claim says so.
		s.b.Expire(t, "held")
		again := claimOne(t, st, "w2", "held")
		assert.Equal(t, "canceled by the caller", again.Canceled)
		assert.Zero(t, again.Unanswered, "the canceled Ending recorded nothing")
		require.NoError(t, st.Finish(ctx, again.Token, r("held")))

		done, err = canceler.Cancel(ctx, "held", r("held"))
		require.NoError(t, err)
		assert.False(t, done, "already finished")
		_, err = canceler.Cancel(ctx, "nosuch", r("nosuch"))
		assert.ErrorIs(t, err, store.ErrNotFound)
	}},
}
