package pgtest

import (
	"context"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

var schemas atomic.Int64

// SchemaName is a schema name of t's own, so that tests sharing a cluster
// do not see each other's tables: a counter, then t's name in lower case.
func SchemaName(t testing.TB) string {
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

// Pool is a pool on connString, closed when t ends.
func Pool(t testing.TB, connString string) *pgxpool.Pool {
	t.Helper()
	pool, err := pgxpool.New(context.Background(), connString)
	if err != nil {
		t.Fatal("pgtest: ", err)
	}
	t.Cleanup(pool.Close)
	return pool
}

// Schema is a schema of t's own on the cluster (SchemaName, dropped when
// t ends) and a pool for the test's own SQL on it, in which {s} stands for
// the schema.
type Schema struct {
	t    testing.TB
	Conn string // the cluster's connection string
	Name string
	// Admin is the test's own pool, for moving time and counting rows.
	Admin *pgxpool.Pool
}

// Schema makes a Schema of t's own on c.
func (c *Cluster) Schema(t testing.TB) *Schema {
	t.Helper()
	s := &Schema{t: t, Conn: c.ConnString(), Name: SchemaName(t)}
	s.Admin = Pool(t, s.Conn)
	t.Cleanup(func() {
		// Registered after the pool's Close, so run before it.
		s.Admin.Exec(context.Background(), "DROP SCHEMA IF EXISTS "+s.Name+" CASCADE")
	})
	return s
}

// Exec runs the test's own SQL, {s} being the schema, and returns the
// rows it affected.
func (s *Schema) Exec(sql string, args ...any) int64 {
	s.t.Helper()
	tag, err := s.Admin.Exec(context.Background(), strings.ReplaceAll(sql, "{s}", s.Name), args...)
	if err != nil {
		s.t.Fatal("pgtest: ", err)
	}
	return tag.RowsAffected()
}

// Row is the row the query returns, {s} being the schema.
func (s *Schema) Row(sql string, args ...any) pgx.Row {
	return s.Admin.QueryRow(context.Background(), strings.ReplaceAll(sql, "{s}", s.Name), args...)
}

// Count is the number the query returns, {s} being the schema.
func (s *Schema) Count(sql string, args ...any) int {
	s.t.Helper()
	var n int
	if err := s.Row(sql, args...).Scan(&n); err != nil {
		s.t.Fatal("pgtest: ", err)
	}
	return n
}
