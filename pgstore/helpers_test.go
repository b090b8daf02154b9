package pgstore

import (
	"context"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/mxrelay/mxrelay/internal/pgtest"
)

// bound is how long any wait of a test may take before it fails: a
// guard against a hang, never a measure.
const bound = 30 * time.Second

var schemas atomic.Int64

// schemaFor is a schema of t's own, so that tests sharing a cluster do
// not see each other's emails.
func schemaFor(t testing.TB) string {
	name := strings.Map(func(r rune) rune {
		if 'a' <= r && r <= 'z' || '0' <= r && r <= '9' {
			return r
		}
		if 'A' <= r && r <= 'Z' {
			return r - 'A' + 'a'
		}
		return '_'
	}, t.Name())
	return fmt.Sprintf("t%d_%.30s", schemas.Add(1), name)
}

// newPool is a pool on connString, closed when t ends.
func newPool(t testing.TB, connString string) *pgxpool.Pool {
	t.Helper()
	pool, err := pgxpool.New(context.Background(), connString)
	require.NoError(t, err)
	t.Cleanup(pool.Close)
	return pool
}

// fixture is a schema of its own on the shared cluster, and the
// connection string to reach it.
type fixture struct {
	t      testing.TB
	conn   string
	schema string
	admin  *pgxpool.Pool // for the test's own SQL (moving time, counting rows)
}

// newFixture is a fixture on the shared cluster.
func newFixture(t testing.TB) *fixture {
	t.Helper()
	return newFixtureOn(t, pgtest.Shared(t))
}

// newFixtureOn is a fixture on cluster c.
func newFixtureOn(t testing.TB, c *pgtest.Cluster) *fixture {
	t.Helper()
	f := &fixture{t: t, conn: c.ConnString(), schema: schemaFor(t)}
	f.admin = newPool(t, f.conn)
	t.Cleanup(func() {
		// Registered after the pool's Close, so run before it.
		f.admin.Exec(context.Background(), "DROP SCHEMA IF EXISTS "+f.schema+" CASCADE")
	})
	return f
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
	st, err := Open(context.Background(), newPool(f.t, f.conn), &o)
	require.NoError(f.t, err)
	f.t.Cleanup(func() { st.Close() })
	return st
}

// exec runs the test's own SQL, {s} being the schema.
func (f *fixture) exec(sql string, args ...any) int64 {
	f.t.Helper()
	tag, err := f.admin.Exec(context.Background(), strings.ReplaceAll(sql, "{s}", f.schema), args...)
	require.NoError(f.t, err)
	return tag.RowsAffected()
}

// count is the number the query returns.
func (f *fixture) count(sql string, args ...any) int {
	f.t.Helper()
	var n int
	require.NoError(f.t, f.admin.QueryRow(context.Background(), strings.ReplaceAll(sql, "{s}", f.schema), args...).Scan(&n))
	return n
}
