package storetest

import (
	"io"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mxrelay/mxrelay/internal/store"
)

// AdminBacking is the Backing of a store with an operator's side: each
// Store it opens is a store.Admin, and Inspector reads the backing as an
// operator's tool would, while the stores run.
type AdminBacking interface {
	Backing
	// Inspector returns a store.Inspector of the backing, for the test.
	Inspector(t *testing.T) store.Inspector
}

// AdminCapabilities say what a store's operator's side can do beyond
// what every one does.
type AdminCapabilities struct {
	Capabilities
	// Claims: the Inspector sees claims (StateClaimed, Owner, Expires).
	// A spool's claims live in the process that holds it, and its
	// Inspector reads the directory.
	Claims bool
}

// RunAdmin runs the suite of the operator's side (store.Admin and
// store.Inspector), each test on a backing newBacking makes for it.
func RunAdmin(t *testing.T, caps AdminCapabilities, newBacking func(t *testing.T) AdminBacking) {
	for _, tc := range adminTests {
		t.Run(tc.name, func(t *testing.T) {
			any := func(t *testing.T) Backing { return newBacking(t) }
			b := newBacking(t)
			tc.run(&adminSuite{
				suite: &suite{t: t, b: b, caps: caps.Capabilities, newBacking: any},
				b:     b, caps: caps,
			})
		})
	}
}

type adminSuite struct {
	*suite
	b     AdminBacking
	caps  AdminCapabilities
	inspk store.Inspector // made at the first use of insp, once a Store opened the backing
}

// insp is the backing's Inspector.
func (s *adminSuite) insp() store.Inspector {
	if s.inspk == nil {
		s.inspk = s.b.Inspector(s.t)
	}
	return s.inspk
}

var adminTests = []struct {
	name string
	run  func(s *adminSuite)
}{
	// The hold is respected by claims in every process, and its release
	// wakes the claimers that wait.
	{"HoldIsSkippedByClaimsUntilReleased", func(s *adminSuite) {
		t, st := s.t, s.open()
		Accept(t, st, "e1", 1, "x")
		Accept(t, st, "e2", 0, "x")
		before, changed, err := admin(t, st).Hold(ctx, "e1", false)
		require.NoError(t, err)
		assert.True(t, changed)
		assert.Equal(t, store.StateReady, before.State)
		s.state("e1", store.StateHeld)

		other := s.other(st)
		c2 := Claim(t, other, "w1", 10)
		require.Equal(t, []string{"e2"}, IDs(c2), "e1 is held, though of a higher priority")
		require.NoError(t, other.Finish(ctx, c2[0].Token, delivered("e2")))
		got, next, err := other.Claim(ctx, "w2", 10, time.Hour)
		require.NoError(t, err)
		assert.Empty(t, got)
		assert.True(t, next.IsZero(), "no time at which e1 becomes ready: %v", next)

		_, changed, err = admin(t, st).Hold(ctx, "e1", false)
		require.NoError(t, err)
		assert.False(t, changed, "held already")

		wake := other.Wake()
		before, changed, err = admin(t, st).Release(ctx, "e1")
		require.NoError(t, err)
		assert.True(t, changed)
		assert.Equal(t, store.StateHeld, before.State)
		Wait(t, wake, "the release wakes the claimers")
		s.state("e1", store.StateReady)
		c := claimOne(t, other, "w2", "e1")
		assert.EqualValues(t, 1, c.Token.Attempt, "a hold is not a claim")

		Accept(t, st, "e3", 0, "x")
		_, changed, err = admin(t, st).Release(ctx, "e3")
		require.NoError(t, err)
		assert.False(t, changed, "not held")
	}},

	{"HoldSurvivesAReopen", func(s *adminSuite) {
		s.needDurable()
		t, st := s.t, s.open()
		Accept(t, st, "e1", 0, "x")
		_, _, err := admin(t, st).Hold(ctx, "e1", false)
		require.NoError(t, err)

		st = s.reopen(st)
		assert.Empty(t, Claim(t, st, "w1", 10), "still held")
		s.state("e1", store.StateHeld)
		st = s.reopen(st) // held after a second reopen too: a compaction keeps it
		assert.Empty(t, Claim(t, st, "w1", 10), "still held")
		_, changed, err := admin(t, st).Release(ctx, "e1")
		require.NoError(t, err)
		assert.True(t, changed)
		st = s.reopen(st)
		claimOne(t, st, "w1", "e1")
	}},

	// A claimed email is held only when forced; then its holder can write
	// nothing more of it.
	{"HoldOfAClaimedEmailIsForcedAndFencesItsHolder", func(s *adminSuite) {
		for _, w := range writes {
			s.t.Run(w.name, func(t *testing.T) {
				s := s.sub(t)
				st, c := s.held()
				_, _, err := admin(t, st).Hold(ctx, "e1", false)
				var ce *store.ClaimedError
				require.ErrorAs(t, err, &ce)
				assert.ErrorIs(t, err, store.ErrClaimed)
				assert.Equal(t, "w1", ce.Owner)
				assert.EqualValues(t, 1, ce.Attempt)
				errs, err := st.Renew(ctx, []store.Token{c.Token}, time.Hour)
				require.NoError(t, err)
				require.NoError(t, errs[0], "a refused hold leaves the claim as it was")

				before, changed, err := admin(t, st).Hold(ctx, "e1", true)
				require.NoError(t, err)
				assert.True(t, changed)
				assert.Equal(t, store.StateClaimed, before.State)
				assert.Equal(t, "w1", before.Owner)
				require.ErrorIs(t, w.write(st, c.Token), store.ErrFenced, "the holder is fenced")
				s.state("e1", store.StateHeld)
				assert.Empty(t, Claim(t, s.other(st), "w2", 10))

				_, _, err = admin(t, st).Release(ctx, "e1")
				require.NoError(t, err)
				c2 := claimOne(t, st, "w2", "e1")
				assert.EqualValues(t, 2, c2.Token.Attempt)
				assert.Zero(t, c2.Unanswered, "no end of data was recorded")
				require.NoError(t, st.Finish(ctx, c2.Token, delivered("e1")))
			})
		}
	}},

	// The end of data its holder recorded is not taken back: released,
	// the email is an unknown outcome.
	{"HoldAfterAnEndOfDataLeavesItUnanswered", func(s *adminSuite) {
		t := s.t
		st, c := s.held()
		end(t, st, c.Token)
		before, _, err := admin(t, st).Hold(ctx, "e1", true)
		require.NoError(t, err)
		assert.Equal(t, 1, before.Unanswered)
		_, _, err = admin(t, st).Release(ctx, "e1")
		require.NoError(t, err)
		c2 := claimOne(t, s.other(st), "w2", "e1")
		assert.Equal(t, 1, c2.Unanswered, "the end of data has no answer: unknown")
	}},

	{"RetryMakesADeferredEmailReady", func(s *adminSuite) {
		t := s.t
		st, c := s.held()
		p := &store.Progress{Attempts: 1, Pending: []string{"b@example.com"}, Error: "451 4.7.1 try later"}
		require.NoError(t, st.Requeue(ctx, c.Token, p, time.Now().Add(time.Hour)))
		got, next, err := st.Claim(ctx, "w2", 1, time.Hour)
		require.NoError(t, err)
		require.Empty(t, got, "deferred")
		assert.True(t, next.After(time.Now().Add(30*time.Minute)), "next is its retry time: %v", next)
		i := s.state("e1", store.StateDeferred)
		assert.True(t, i.NotBefore.After(time.Now().Add(30*time.Minute)), "%v", i.NotBefore)
		assert.Equal(t, "451 4.7.1 try later", i.LastError())
		assert.Equal(t, 1, i.Attempts())

		wake := s.other(st).Wake()
		before, changed, err := admin(t, st).Retry(ctx, "e1")
		require.NoError(t, err)
		assert.True(t, changed)
		assert.Equal(t, store.StateDeferred, before.State)
		Wait(t, wake, "the retry wakes the claimers")
		s.state("e1", store.StateReady)
		c2 := claimOne(t, s.other(st), "w2", "e1")
		assert.Equal(t, p, c2.Progress, "the progress is kept")

		_, _, err = admin(t, st).Retry(ctx, "e1")
		assert.ErrorIs(t, err, store.ErrClaimed, "it is being tried")
		require.NoError(t, st.Requeue(ctx, c2.Token, p, time.Time{}))
		_, changed, err = admin(t, st).Retry(ctx, "e1")
		require.NoError(t, err)
		assert.False(t, changed, "ready already")
	}},

	{"RetryOfAHeldEmailKeepsItHeld", func(s *adminSuite) {
		t := s.t
		st, c := s.held()
		p := &store.Progress{Attempts: 1, Pending: []string{"b@example.com"}}
		require.NoError(t, st.Requeue(ctx, c.Token, p, time.Now().Add(time.Hour)))
		_, _, err := admin(t, st).Hold(ctx, "e1", false)
		require.NoError(t, err)
		_, changed, err := admin(t, st).Retry(ctx, "e1")
		require.NoError(t, err)
		assert.True(t, changed)
		assert.Empty(t, Claim(t, st, "w2", 1), "still held")
		_, _, err = admin(t, st).Release(ctx, "e1")
		require.NoError(t, err)
		claimOne(t, st, "w2", "e1")
	}},

	{"DeleteEndsTheEmailWithAResult", func(s *adminSuite) {
		t, st := s.t, s.open()
		AcceptEnv(t, st, &store.Envelope{ID: "e1", IdempotencyKey: "k1", From: "a@example.com",
			To: []string{"b@example.com", "c@example.com"}}, "x")
		waiter := s.other(st)
		before, changed, err := admin(t, st).Delete(ctx, "e1", false)
		require.NoError(t, err)
		assert.True(t, changed)
		assert.Equal(t, store.StateReady, before.State)

		r, err := waiter.WaitResult(ctx, "e1")
		require.NoError(t, err)
		assert.False(t, r.Delivered)
		assert.False(t, r.MaybeDelivered)
		assert.Equal(t, store.DeletedKind, r.Kind)
		assert.Equal(t, store.DeletedError, r.Error)
		assert.Equal(t, map[string]string{"b@example.com": store.DeletedError, "c@example.com": store.DeletedError}, r.Rejected)
		_, err = st.Body(ctx, "e1")
		assert.ErrorIs(t, err, store.ErrNotFound, "the body is gone")
		assert.Empty(t, Claim(t, st, "w1", 10))
		keyTaken(t, st, "k1", "e1", "the key of a deleted email, whose result is kept")
		i := s.state("e1", store.StateFinished)
		require.NotNil(t, i.Result)
		assert.Equal(t, store.DeletedKind, i.Result.Kind)
	}},

	// The brief's case: the holder of a deleted email cannot record a
	// result after it, and the result says what its end of data may have
	// done.
	{"DeleteOfAClaimedEmailFencesItsHolder", func(s *adminSuite) {
		t := s.t
		st, c := s.held()
		end(t, st, c.Token)
		_, _, err := admin(t, st).Delete(ctx, "e1", false)
		require.ErrorIs(t, err, store.ErrClaimed)
		s.state("e1", store.StateClaimed)

		before, changed, err := admin(t, st).Delete(ctx, "e1", true)
		require.NoError(t, err)
		assert.True(t, changed)
		assert.Equal(t, store.StateClaimed, before.State)
		err = st.Finish(ctx, c.Token, delivered("e1"))
		var fe *store.FencedError
		require.ErrorAs(t, err, &fe, "the holder's result is refused, not taken for its own")
		assert.True(t, fe.Finished)
		errs, err := st.Ending(ctx, []store.Token{c.Token})
		require.NoError(t, err)
		assert.ErrorIs(t, errs[0], store.ErrFenced, "no end of data follows")

		r, err := s.other(st).Result(ctx, "e1")
		require.NoError(t, err)
		assert.Equal(t, store.DeletedKind, r.Kind, "the deletion's result stands")
		assert.True(t, r.MaybeDelivered, "its end of data was recorded and not answered")
		assert.Equal(t, 1, r.Attempts)
		assert.False(t, r.Delivered)
	}},

	// What the progress says stays said: recipients that have the email
	// keep it.
	{"DeleteKeepsWhatTheProgressSays", func(s *adminSuite) {
		t := s.t
		st, c := s.held()
		p := &store.Progress{Attempts: 1, Accepted: []string{"b@example.com"},
			Rejected: map[string]string{"c@example.com": "550 no"}, Pending: []string{"d@example.com"}}
		require.NoError(t, st.Requeue(ctx, c.Token, p, time.Time{}))
		_, _, err := admin(t, st).Delete(ctx, "e1", false)
		require.NoError(t, err)
		r, err := st.Result(ctx, "e1")
		require.NoError(t, err)
		assert.True(t, r.Delivered, "b@example.com has it")
		assert.Equal(t, []string{"b@example.com"}, r.Accepted)
		assert.Equal(t, map[string]string{"c@example.com": "550 no", "d@example.com": store.DeletedError}, r.Rejected)
	}},

	{"NoSuchEmailAndFinishedOnes", func(s *adminSuite) {
		t := s.t
		st, c := s.held()
		require.NoError(t, st.Finish(ctx, c.Token, delivered("e1")))
		a := admin(t, st)
		for _, tc := range []struct {
			id   string
			want error
		}{{"nope", store.ErrNotFound}, {"e1", store.ErrFinished}} {
			_, _, err := a.Hold(ctx, tc.id, true)
			assert.ErrorIs(t, err, tc.want, "hold %s", tc.id)
			_, _, err = a.Release(ctx, tc.id)
			assert.ErrorIs(t, err, tc.want, "release %s", tc.id)
			_, _, err = a.Retry(ctx, tc.id)
			assert.ErrorIs(t, err, tc.want, "retry %s", tc.id)
			_, _, err = a.Delete(ctx, tc.id, true)
			assert.ErrorIs(t, err, tc.want, "delete %s", tc.id)
		}
		_, err := s.insp().Inspect(ctx, "nope")
		assert.ErrorIs(t, err, store.ErrNotFound)
		r, err := st.Result(ctx, "e1")
		require.NoError(t, err)
		assert.True(t, r.Delivered, "the result is as it was")
	}},

	{"CancelFinishesAHeldEmail", func(s *adminSuite) {
		t, st := s.t, s.open()
		Accept(t, st, "e1", 0, "x")
		_, _, err := admin(t, st).Hold(ctx, "e1", false)
		require.NoError(t, err)
		finished, err := st.Cancel(ctx, "e1", &store.Result{ID: "e1", Error: "canceled", Kind: "canceled"})
		require.NoError(t, err)
		assert.True(t, finished)
		s.state("e1", store.StateFinished)
	}},

	{"InspectorListsAndCountsByState", func(s *adminSuite) {
		t, st := s.t, s.open()
		Accept(t, st, "claimed", 2, "x")
		c := claimOne(t, st, "w1", "claimed")
		Accept(t, st, "deferred", 1, "x")
		d := claimOne(t, st, "w1", "deferred")
		require.NoError(t, st.Requeue(ctx, d.Token, &store.Progress{Attempts: 1, Pending: []string{"b@example.com"}}, time.Now().Add(time.Hour)))
		Accept(t, st, "finished", 0, "x")
		f := claimOne(t, st, "w1", "finished")
		require.NoError(t, st.Finish(ctx, f.Token, delivered("finished")))
		Accept(t, st, "held", 0, "x")
		_, _, err := admin(t, st).Hold(ctx, "held", false)
		require.NoError(t, err)
		Accept(t, st, "ready", 0, "the body")

		claimedAs := store.StateReady // a spool's Inspector: its claims are the process's
		if s.caps.Claims {
			claimedAs = store.StateClaimed
		}
		all, err := s.insp().List(ctx, store.Filter{})
		require.NoError(t, err)
		assert.Equal(t, []string{"claimed", "deferred", "held", "ready"}, infoIDs(all), "by priority, then acceptance; no finished")
		assert.Equal(t, []store.State{claimedAs, store.StateDeferred, store.StateHeld, store.StateReady}, infoStates(all))
		if s.caps.Claims {
			assert.Equal(t, "w1", all[0].Owner)
			assert.True(t, all[0].Expires.Equal(c.Expires), "%v %v", all[0].Expires, c.Expires)
		}
		assert.EqualValues(t, len("the body"), all[3].BodySize)
		assert.Equal(t, []string{"b@example.com"}, all[3].To)

		done, err := s.insp().List(ctx, store.Filter{States: []store.State{store.StateFinished}})
		require.NoError(t, err)
		require.Equal(t, []string{"finished"}, infoIDs(done))
		require.NotNil(t, done[0].Result)
		assert.True(t, done[0].Result.Delivered)
		assert.False(t, done[0].Result.Finished.IsZero())

		some, err := s.insp().List(ctx, store.Filter{States: []store.State{store.StateHeld, store.StateDeferred}})
		require.NoError(t, err)
		assert.Equal(t, []string{"deferred", "held"}, infoIDs(some))

		n, err := s.insp().Counts(ctx)
		require.NoError(t, err)
		want := map[store.State]int{store.StateReady: 1, store.StateDeferred: 1, store.StateClaimed: 0, store.StateHeld: 1, store.StateFinished: 1}
		want[claimedAs]++
		assert.Equal(t, want, n)

		r, err := s.insp().Body(ctx, "ready")
		require.NoError(t, err)
		body, err := io.ReadAll(r)
		require.NoError(t, err)
		r.Close()
		assert.Equal(t, "the body", string(body))
		_, err = s.insp().Body(ctx, "finished")
		assert.ErrorIs(t, err, store.ErrNotFound)
	}},
}

// admin is st's operator's side.
func admin(t testing.TB, st store.Store) store.Admin {
	t.Helper()
	a, ok := st.(store.Admin)
	require.True(t, ok, "%T is a store.Admin", st)
	return a
}

// state asserts that the Inspector sees email id in state want (a
// spool's sees a claimed email as ready) and returns its Info.
func (s *adminSuite) state(id string, want store.State) *store.Info {
	s.t.Helper()
	i, err := s.insp().Inspect(ctx, id)
	require.NoError(s.t, err)
	if want == store.StateClaimed && !s.caps.Claims {
		want = store.StateReady
	}
	require.Equal(s.t, want, i.State, "%s", id)
	return i
}

// sub is the suite for t, a subtest, on a backing of its own.
func (s *adminSuite) sub(t *testing.T) *adminSuite {
	b := s.newBacking(t).(AdminBacking)
	return &adminSuite{suite: &suite{t: t, b: b, caps: s.caps.Capabilities, newBacking: s.newBacking}, b: b, caps: s.caps}
}

func infoIDs(is []*store.Info) []string {
	var out []string
	for _, i := range is {
		out = append(out, i.ID)
	}
	return out
}

func infoStates(is []*store.Info) []store.State {
	var out []store.State
	for _, i := range is {
		out = append(out, i.State)
	}
	return out
}
