package main

import (
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mxrelay/mxrelay/internal/pgtest"
	"github.com/mxrelay/mxrelay/internal/store"
	"github.com/mxrelay/mxrelay/internal/store/storetest"
	"github.com/mxrelay/mxrelay/pgstore"
)

var schemas atomic.Int64

// pgQueue is a schema of the test's own on the shared cluster: the
// command's flags for it, and how to open a Store on it as a process of
// its own.
type pgQueue struct {
	t      *testing.T
	conn   string
	schema string
}

func newPGQueue(t *testing.T) *pgQueue {
	c := pgtest.Shared(t)
	q := &pgQueue{t: t, conn: c.ConnString(), schema: fmt.Sprintf("q%d_%s", schemas.Add(1), strings.ToLower(t.Name()))}
	q.schema = q.schema[:min(len(q.schema), 40)]
	admin := q.pool()
	t.Cleanup(func() { admin.Exec(ctx, "DROP SCHEMA IF EXISTS "+q.schema+" CASCADE") })
	return q
}

func (q *pgQueue) pool() *pgxpool.Pool {
	pool, err := pgxpool.New(ctx, q.conn)
	require.NoError(q.t, err)
	q.t.Cleanup(pool.Close)
	return pool
}

// open is a Store on the schema, as a process using the queue has.
func (q *pgQueue) open() *pgstore.Store {
	st, err := pgstore.Open(ctx, q.pool(), &pgstore.Options{Schema: q.schema, ReapInterval: -1, PollInterval: time.Hour})
	require.NoError(q.t, err)
	q.t.Cleanup(func() { st.Close() })
	return st
}

// args are the command's store flags, then more.
func (q *pgQueue) args(more ...string) []string {
	return append([]string{"-pg", q.conn, "-schema", q.schema}, more...)
}

// TestPGSchema: the command neither creates nor migrates a schema but
// with migrate, and says what to do.
func TestPGSchema(t *testing.T) {
	q := newPGQueue(t)
	r := cmd(t, nil, q.args("list")...)
	assert.Equal(t, exStore, r.code)
	assert.Contains(t, r.stderr, "no schema "+q.schema)
	assert.Contains(t, r.stderr, "migrate")
	assert.Equal(t, fmt.Sprintf("schema %s is at version %d\n", q.schema, pgstore.SchemaVersion), ok(t, q.args("migrate")...))
	assert.Equal(t, "ID  AGE  PRIORITY  ATTEMPTS  STATE  LAST ERROR\n", ok(t, q.args("list")...))

	// MXRELAY_PG and MXRELAY_PG_SCHEMA stand for the flags.
	r = cmd(t, map[string]string{"MXRELAY_PG": q.conn, "MXRELAY_PG_SCHEMA": q.schema}, "counts")
	assert.Equal(t, exOK, r.code, r.stderr)
	r = cmd(t, nil, "-pg", "host=127.0.0.1 port=1 connect_timeout=5 sslmode=disable", "list")
	assert.Equal(t, exStore, r.code, "out of reach")
	assert.Contains(t, r.stderr, "unavailable")
}

// TestPGCommandsWhileProcessesRun: every command against a queue that
// processes use, live: what they do is seen by their next claim, and the
// holder of an email deleted or held with -force is fenced.
func TestPGCommandsWhileProcessesRun(t *testing.T) {
	q := newPGQueue(t)
	p1, p2 := q.open(), q.open() // two processes sharing the queue
	storetest.AcceptEnv(t, p1, &store.Envelope{ID: "claimed", From: "a@example.com", To: []string{"b@example.com"}, Priority: 2}, "sending")
	c := storetest.Claim(t, p1, "client-1", 1)[0]
	errs, err := p1.Ending(ctx, []store.Token{c.Token})
	require.NoError(t, err)
	require.NoError(t, errs[0], "its end of data is written")
	storetest.Accept(t, p1, "deferred", 1, "x")
	d := storetest.Claim(t, p1, "client-1", 1)[0]
	require.NoError(t, p1.Requeue(ctx, d.Token, &store.Progress{Attempts: 1, Pending: []string{"b@example.com"}, Error: "451 4.7.1 later"}, time.Now().Add(time.Hour)))
	storetest.Accept(t, p2, "ready", 0, "the body")
	storetest.Accept(t, p2, "other", 0, "x")

	var all []*store.Info
	jsonOf(t, &all, q.args("list", "-json")...)
	require.Len(t, all, 4)
	assert.Equal(t, "claimed", all[0].ID)
	assert.Equal(t, store.StateClaimed, all[0].State)
	assert.Equal(t, "client-1", all[0].Owner)
	assert.Equal(t, 1, all[0].Unanswered)
	assert.Equal(t, store.StateDeferred, all[1].State)
	assert.Equal(t, "451 4.7.1 later", all[1].LastError())
	assert.Equal(t, []store.State{store.StateReady, store.StateReady}, []store.State{all[2].State, all[3].State})
	assert.Regexp(t, `(?m)^claimed +\d+s +critical +1\? +claimed by client-1 \(lease until `, ok(t, q.args("list")...))
	assert.Regexp(t, `(?m)^unanswered: +1 end`, ok(t, q.args("show", "claimed")...))
	assert.Equal(t, "the body", ok(t, q.args("show", "-body", "ready")...))

	// hold: no process claims it; release: the next claim does, and the
	// claimers waiting are woken.
	assert.Equal(t, "ready: held\n", ok(t, q.args("hold", "ready")...))
	got := storetest.Claim(t, p2, "client-2", 10)
	assert.Equal(t, []string{"other"}, storetest.IDs(got), "held: skipped")
	wake := p2.Wake()
	assert.Equal(t, "ready: released\n", ok(t, q.args("release", "ready")...))
	storetest.Wait(t, wake, "the release wakes the processes")
	assert.Equal(t, []string{"ready"}, storetest.IDs(storetest.Claim(t, p2, "client-2", 10)))

	// requeue: the deferred email is ready now, for any process.
	assert.Equal(t, "deferred: ready now\n", ok(t, q.args("requeue", "deferred")...))
	dd := storetest.Claim(t, p2, "client-2", 10)
	require.Equal(t, []string{"deferred"}, storetest.IDs(dd))
	r := cmd(t, nil, q.args("requeue", "deferred")...)
	assert.Equal(t, exNotDone, r.code, "claimed: being tried")
	assert.Contains(t, r.stderr, "deferred: claimed by client-2")

	// delete of a claimed email: refused, then forced, fencing its holder.
	r = cmd(t, nil, q.args("delete", "claimed")...)
	assert.Equal(t, exNotDone, r.code)
	assert.Contains(t, r.stderr, "claimed: claimed by client-1 (claim 1, lease until ")
	assert.Contains(t, r.stderr, "-force fences the claim")
	out := ok(t, q.args("delete", "-force", "claimed")...)
	assert.Equal(t, "claimed: deleted; the claim of client-1 (claim 1) is fenced; its end of data was written and has no answer: its result says it may have been delivered\n", out)
	err = p1.Finish(ctx, c.Token, &store.Result{ID: "claimed", Delivered: true, Attempts: 1})
	assert.ErrorIs(t, err, store.ErrFenced, "the holder cannot write a result over the deletion")
	var i store.Info
	jsonOf(t, &i, q.args("show", "-json", "claimed")...)
	assert.Equal(t, store.StateFinished, i.State)
	require.NotNil(t, i.Result)
	assert.Equal(t, store.DeletedKind, i.Result.Kind)
	assert.True(t, i.Result.MaybeDelivered)
	assert.Regexp(t, `(?m)^result: +failed \(deleted\), may have been delivered$`, ok(t, q.args("show", "claimed")...))

	// hold -force of a claimed email fences its holder too.
	var changes []changed
	jsonOf(t, &changes, q.args("hold", "-force", "-json", "deferred")...)
	require.Len(t, changes, 1)
	assert.True(t, changes[0].Changed)
	assert.Equal(t, store.StateClaimed, changes[0].Before.State)
	assert.Equal(t, "client-2", changes[0].Before.Owner)
	err = p2.Requeue(ctx, dd[0].Token, &store.Progress{Attempts: 2, Pending: []string{"b@example.com"}}, time.Time{})
	assert.ErrorIs(t, err, store.ErrFenced)

	var n map[store.State]int
	jsonOf(t, &n, q.args("counts", "-json")...)
	assert.Equal(t, map[store.State]int{"ready": 0, "deferred": 0, "claimed": 2, "held": 1, "finished": 1}, n)
	r = cmd(t, nil, q.args("hold", "nope")...)
	assert.Equal(t, exNotDone, r.code)
	assert.Equal(t, "mxrelay-queue: nope: no such email\n", r.stderr)
}
