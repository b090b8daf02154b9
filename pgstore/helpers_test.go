package pgstore

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/mxrelay/mxrelay/internal/pgtest"
)

// bound is how long any wait of a test may take before it fails: a
// guard against a hang, never a measure.
const bound = 30 * time.Second

// fixture is a schema of its own on the shared cluster, and the
// connection string to reach it.
type fixture struct {
	t      testing.TB
	conn   string
	schema string
	admin  *pgxpool.Pool // for the test's own SQL (moving time, counting rows)
	s      *pgtest.Schema
}

// newFixture is a fixture on the shared cluster.
func newFixture(t testing.TB) *fixture {
	t.Helper()
	return newFixtureOn(t, pgtest.Shared(t))
}

// newFixtureOn is a fixture on cluster c.
func newFixtureOn(t testing.TB, c *pgtest.Cluster) *fixture {
	t.Helper()
	s := c.Schema(t)
	return &fixture{t: t, conn: s.Conn, schema: s.Name, admin: s.Admin, s: s}
}

// open is a Store on the fixture's schema with a pool of its own, as a
// process of its own would have; closed when the test ends. opts may be
// nil; its Schema is the fixture's.
func (f *fixture) open(opts *Options) *Store {
	f.t.Helper()
	var o Options
	if opts != nil {
		o = *opts
	}
	o.Schema = f.schema
	if o.PollInterval == 0 {
		// Only notifications wake anyone in a test, unless it says so.
		o.PollInterval = time.Hour
	}
	if o.ReapInterval == 0 {
		o.ReapInterval = -1
	}
	st, err := Open(context.Background(), pgtest.Pool(f.t, f.conn), &o)
	require.NoError(f.t, err)
	f.t.Cleanup(func() { st.Close() })
	return st
}

// exec runs the test's own SQL, {s} being the schema.
func (f *fixture) exec(sql string, args ...any) int64 { f.t.Helper(); return f.s.Exec(sql, args...) }

// count is the number the query returns.
func (f *fixture) count(sql string, args ...any) int { f.t.Helper(); return f.s.Count(sql, args...) }
