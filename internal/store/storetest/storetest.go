// Package storetest is the conformance suite of the store seam: one set of
// tests, written against store.Store only, that every implementation
// passes (memstore, the spool, pgstore). An implementation's own tests
// call Run with a Backing, which says how to open its stores and how to
// move time for one email (a lease's end, a retry time, a result's age)
// without waiting for the clock, and with the Capabilities it has: tests
// of what it cannot do are skipped, saying why.
//
// The suite checks behaviour, never durations: no test sleeps, and every
// wait is bounded by a generous timeout that only guards against a hang.
package storetest

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mxrelay/mxrelay/internal/store"
)

// Backing is where the stores under test keep their emails: a directory,
// a database schema, or the process's memory. Each test of the suite
// gets a new one.
type Backing interface {
	// Open returns a new Store on the backing, closed when the test ends
	// (Close may be called before). Without Capabilities.Shared the suite
	// closes the last one before it opens another.
	Open(t *testing.T) store.Store
	// Expire ends the lease of email id now, as if its time had run out,
	// if it is held.
	Expire(t *testing.T, id string)
	// Due makes the retry time of email id come now.
	Due(t *testing.T, id string)
	// Outlive makes the result of email id older than the store's
	// retention time and has the store forget it, as time would.
	Outlive(t *testing.T, id string)
}

// Clock moves time for one email in a store that keeps its state in the
// process; *ledger.Ledger is one. Each reports whether the email was in
// the state it moves it from.
type Clock interface {
	Expire(id string) bool
	Due(id string) bool
	Outlive(id string) bool
}

// Local is the Backing of a store that keeps its state in the process:
// open returns a new Store, closed when t ends, and the Clock it keeps
// time by. The moves of time act on the Store opened last.
func Local(open func(t *testing.T) (store.Store, Clock)) Backing { return &local{open: open} }

type local struct {
	open  func(t *testing.T) (store.Store, Clock)
	clock Clock
}

func (l *local) Open(t *testing.T) store.Store {
	st, c := l.open(t)
	l.clock = c
	return st
}

func (l *local) Expire(t *testing.T, id string) { l.clock.Expire(id) }

func (l *local) Due(t *testing.T, id string) {
	require.True(t, l.clock.Due(id), "%s waits for a retry time", id)
}

func (l *local) Outlive(t *testing.T, id string) {
	require.True(t, l.clock.Outlive(id), "%s has a result", id)
}

// Capabilities say what a store can do beyond what every store does.
type Capabilities struct {
	// Shared: several Stores may be open on one backing at once, as
	// processes sharing one queue: what one accepts another claims, and
	// a result one records another's WaitResult returns.
	Shared bool
	// Durable: what was accepted and recorded survives the store's
	// Close without a clean shutdown (held emails not handed back, as a
	// process that dies) and a new Open on the backing.
	Durable bool
}

// bound is how long any wait of a test may take before it fails: a
// guard against a hang, never a measure.
const bound = 30 * time.Second

// suite is one test's backing and what it can do.
type suite struct {
	t          *testing.T
	b          Backing
	caps       Capabilities
	newBacking func(t *testing.T) Backing
}

// sub is a suite for t, a subtest, on a backing of its own.
func (s *suite) sub(t *testing.T) *suite {
	return &suite{t: t, b: s.newBacking(t), caps: s.caps, newBacking: s.newBacking}
}

// test is one test of the suite.
type test struct {
	name string
	run  func(s *suite)
}

// Run runs the suite, each test on a backing newBacking makes for it.
func Run(t *testing.T, caps Capabilities, newBacking func(t *testing.T) Backing) {
	var all []test
	for _, group := range [][]test{acceptTests, claimTests, fenceTests, bodyTests, resultTests, durableTests} {
		all = append(all, group...)
	}
	for _, tc := range all {
		t.Run(tc.name, func(t *testing.T) {
			tc.run(&suite{t: t, b: newBacking(t), caps: caps, newBacking: newBacking})
		})
	}
}

// needShared skips the test unless the stores share a backing.
func (s *suite) needShared() {
	if !s.caps.Shared {
		s.t.Skip("the store is single-process: one Store per backing (not Shared)")
	}
}

// needDurable skips the test unless the store keeps what it was given
// across a reopen.
func (s *suite) needDurable() {
	if !s.caps.Durable {
		s.t.Skip("the store keeps nothing across Close and Open (not Durable)")
	}
}

// open is a Store on the backing.
func (s *suite) open() store.Store {
	s.t.Helper()
	return s.b.Open(s.t)
}

// other is a second Store on st's backing when they can share one, st
// itself otherwise: for the tests that hold for both.
func (s *suite) other(st store.Store) store.Store {
	s.t.Helper()
	if s.caps.Shared {
		return s.open()
	}
	return st
}

// reopen closes st as a process that dies would (holding what it holds)
// and opens a new Store on the backing.
func (s *suite) reopen(st store.Store) store.Store {
	s.t.Helper()
	require.NoError(s.t, st.Close())
	return s.open()
}

var ctx = context.Background()

// envelope is an email with the given ID and priority to b@example.com.
func envelope(id string, prio int) *store.Envelope {
	return &store.Envelope{ID: id, From: "a@example.com", To: []string{"b@example.com"}, Priority: prio}
}

// Accept accepts an email with the given ID and priority to
// b@example.com, with body; its meta is "meta:<ID>". For the tests of a
// store's own, as for the suite's.
func Accept(t testing.TB, st store.Store, id string, prio int, body string) store.Accepted {
	t.Helper()
	return AcceptEnv(t, st, envelope(id, prio), body)
}

// AcceptEnv accepts env with body, its meta "meta:<ID>".
func AcceptEnv(t testing.TB, st store.Store, env *store.Envelope, body string) store.Accepted {
	t.Helper()
	d, err := st.Accept(ctx, env)
	require.NoError(t, err)
	_, err = d.Write([]byte(body))
	require.NoError(t, err)
	a, err := d.Commit(ctx, []byte("meta:"+env.ID))
	require.NoError(t, err)
	return a
}

// Claim claims up to n emails for owner under a lease of an hour.
func Claim(t testing.TB, st store.Store, owner string, n int) []*store.Claimed {
	t.Helper()
	got, _, err := st.Claim(ctx, owner, n, time.Hour)
	require.NoError(t, err)
	return got
}

// claimOne claims one email for owner, which must be id.
func claimOne(t testing.TB, st store.Store, owner, id string) *store.Claimed {
	t.Helper()
	got := Claim(t, st, owner, 1)
	require.Equal(t, []string{id}, IDs(got))
	return got[0]
}

// IDs are the IDs of cs, in their order.
func IDs(cs []*store.Claimed) []string {
	var out []string
	for _, c := range cs {
		out = append(out, c.ID)
	}
	return out
}

// held is a store on the backing with one email, e1, claimed by w1.
func (s *suite) held() (store.Store, *store.Claimed) {
	s.t.Helper()
	st := s.open()
	Accept(s.t, st, "e1", 0, "x")
	return st, claimOne(s.t, st, "w1", "e1")
}

// end records the ends of data of toks, each of which must be recorded.
func end(t testing.TB, st store.Store, toks ...store.Token) {
	t.Helper()
	errs, err := st.Ending(ctx, toks)
	require.NoError(t, err)
	require.Equal(t, make([]error, len(toks)), errs)
}

// Wait fails t unless ch is closed within a bound that only guards
// against a hang.
func Wait(t testing.TB, ch <-chan struct{}, what string) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(bound):
		t.Fatalf("%s: not within %v", what, bound)
	}
}

// delivered is a delivery result for email id.
func delivered(id string) *store.Result {
	return &store.Result{ID: id, Delivered: true, Attempts: 1, Accepted: []string{"b@example.com"}}
}

// keyTaken asserts that an Accept with key gets email id: Existing.
func keyTaken(t testing.TB, st store.Store, key, id, why string) {
	t.Helper()
	d, err := st.Accept(ctx, &store.Envelope{ID: id + "-again", IdempotencyKey: key})
	require.NoError(t, err)
	defer d.Abort()
	prev, ok := d.Existing()
	require.True(t, ok, why)
	assert.Equal(t, id, prev.ID, why)
}
