package testkit

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/mxrelay/mxrelay/internal/pgtest"
	"github.com/mxrelay/mxrelay/pgstore"
)

// Queue is a queue on PostgreSQL for the Clients of one test, as the
// processes of a service would share one: a schema of its own on the
// tests' shared cluster (internal/pgtest; the test skips where PostgreSQL
// is not installed), with the test's own pool for its SQL, {s} standing
// for the schema. Run the test binary through pgtest.Main.
type Queue struct {
	*pgtest.Schema
}

// NewQueue makes a Queue of t's own.
func NewQueue(t testing.TB) *Queue {
	t.Helper()
	return &Queue{pgtest.Shared(t).Schema(t)}
}

// Store opens a store on the queue with a pool of its own, as another
// process would, closed when the test ends: after the Clients made after
// it, whose cleanups run first. opts may be nil; its Schema is the
// queue's, and only notifications wake anyone unless it sets a
// PollInterval.
func (q *Queue) Store(t testing.TB, opts *pgstore.Options) *pgstore.Store {
	t.Helper()
	var o pgstore.Options
	if opts != nil {
		o = *opts
	}
	o.Schema = q.Name
	if o.PollInterval == 0 {
		o.PollInterval = time.Hour
	}
	st, err := pgstore.Open(context.Background(), pgtest.Pool(t, q.Conn), &o)
	require.NoError(t, err)
	t.Cleanup(func() { st.Close() })
	return st
}
