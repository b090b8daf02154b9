package test

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mxrelay/mxrelay"
	"github.com/mxrelay/mxrelay/internal/pgtest"
	"github.com/mxrelay/mxrelay/internal/testkit"
	"github.com/mxrelay/mxrelay/relaytest"
)

// Processes on one PostgreSQL queue, each a child process of the test
// (pgProc): the database restarted while they send, a lease taken over
// from a process that stopped while its end of data was held, and the
// same idempotency keys enqueued by two processes at once.

// TestPostgresRestartMidRun: three processes send 900 emails; once 100
// are in the mailbox the database stops (a fast shutdown: every
// connection cut) and starts again on the same port and data. The
// Clients wait it out and go on: every email whose Enqueue returned ends
// once, as TestPostgresSurvivesSIGKILL checks (an Enqueue that failed
// while the database was down is tried again with its IdempotencyKey).
func TestPostgresRestartMidRun(t *testing.T) { restartRun(t, 10*time.Second, 0) }

// TestPostgresDownLongerThanTheLease: as TestPostgresRestartMidRun, the
// database down for longer than the processes' leases (1s): a result
// that could not be written in time is not one the store will keep.
func TestPostgresDownLongerThanTheLease(t *testing.T) { restartRun(t, time.Second, 3*time.Second) }

// restartRun is TestPostgresRestartMidRun with the processes' lease, the
// database kept down for down.
func restartRun(t *testing.T, lease, down time.Duration) {
	cluster := pgtest.New(t)
	q := &testkit.Queue{Schema: cluster.Schema(t)}
	q.Store(t, nil)
	q.Exec(claimLogSQL)
	var delivered atomic.Int64
	hundred := make(chan struct{})
	relay := testkit.NewRelay(t, &relaytest.Options{
		Latency: relaytest.Latency{ToClient: 2 * time.Millisecond},
		OnMessage: func(relaytest.Message) {
			if delivered.Add(1) == 100 {
				close(hundred)
			}
		},
	})
	run := &pgCrashRun{tried: map[string]bool{}, accepted: map[string]time.Time{}, reported: map[string]string{}}
	var wg sync.WaitGroup
	for slot := range 3 {
		wg.Go(func() {
			env := append(pgEnv(q.Conn, q.Name, relay), "MXRELAY_PG_SLOT=p"+strconv.Itoa(slot), "MXRELAY_PG_TO=300",
				"MXRELAY_PG_LEASE="+lease.String(), "MXRELAY_PG_COMMAND_TIMEOUT=30s")
			run.slot(t, slot, env, rand.New(rand.NewPCG(1, uint64(slot))), 0)
		})
	}
	select {
	case <-hundred:
	case <-time.After(time.Minute):
		t.Fatal("100 emails were not delivered within a minute")
	}
	run.mu.Lock()
	run.kills = append(run.kills, time.Now())
	run.mu.Unlock()
	stopped := time.Now()
	require.NoError(t, cluster.Stop())
	atStop := delivered.Load()
	time.Sleep(down) // an outage of that length: the condition tested, not an order of events
	require.NoError(t, cluster.Start())
	run.mu.Lock()
	run.kills = append(run.kills, time.Now())
	run.mu.Unlock()
	t.Logf("the database was down for %v, %d emails in the mailbox when it stopped", time.Since(stopped).Round(time.Millisecond), atStop)
	wg.Wait()
	if t.Failed() {
		return
	}
	run.check(t, q, relay)
	assert.Less(t, atStop, int64(900), "the database stopped mid-run")
	assert.Positive(t, run.counts.Delivered)
}

// TestPostgresIdempotencyKeyAcrossProcesses: two processes enqueue emails
// with the same 20 keys (and IDs of their own) at the same moment; each
// key is one email, sent once, and both processes' Handles have its ID
// and its Result, whichever of them sent it.
func TestPostgresIdempotencyKeyAcrossProcesses(t *testing.T) {
	q := testkit.NewQueue(t)
	q.Store(t, nil)
	relay := testkit.NewRelay(t, nil)
	const keys = 20
	ctx := testkit.Ctx(t)
	var ps []*pgProc
	for i := range 2 {
		p := startPG(t, "idem", append(pgEnv(q.Conn, q.Name, relay), "MXRELAY_PG_SLOT=c"+strconv.Itoa(i), "MXRELAY_PG_KEYS="+strconv.Itoa(keys))...)
		p.await(ctx, t, "READY", nil)
		ps = append(ps, p)
	}
	for _, p := range ps {
		p.say(t, "GO")
	}
	handles := make([]map[string]string, len(ps)) // key → Handle ID
	results := make([]map[string]string, len(ps)) // Handle ID → "outcome maybe"
	for i, p := range ps {
		handles[i], results[i] = map[string]string{}, map[string]string{}
		p.finish(ctx, t, func(l string) {
			var a, b, c string
			if n, _ := fmt.Sscan(l, &a, &b, &c); n == 3 && a == "H" {
				handles[i][b] = c
			}
			var d string
			if n, _ := fmt.Sscan(l, &a, &b, &c, &d); n == 4 && a == "R" {
				results[i][b] = c + " " + d
			}
		})
	}
	for k := range keys {
		key := fmt.Sprint("order-", k)
		id := handles[0][key]
		require.NotEmpty(t, id, key)
		assert.Equal(t, id, handles[1][key], "%s: one email, the same Handle ID in both processes", key)
		for i := range ps {
			assert.Equal(t, "DELIVERED false", results[i][id], "%s: process %d's Handle has the Result", key, i)
		}
	}
	onceEach(t, subjects("order", keys), relay)
	assert.Equal(t, keys, q.Count(`SELECT count(*) FROM {s}.email`))
}

// idem is the child of TestPostgresIdempotencyKeyAcrossProcesses.
func (k *pgChild) idem(t *testing.T) {
	slot, keys := os.Getenv("MXRELAY_PG_SLOT"), envInt("MXRELAY_PG_KEYS", 0)
	k.say("READY")
	require.Equal(t, "GO", k.next())
	var hs []*mxrelay.Handle
	for i := range keys {
		e := testkit.Mail(fmt.Sprint("order", i))
		e.ID = fmt.Sprintf("%s-order%d", slot, i) // the key decides, not the ID
		e.IdempotencyKey = fmt.Sprint("order-", i)
		h := k.enqueue(t, e)
		k.say("H %s %s", e.IdempotencyKey, h.ID())
		hs = append(hs, h)
	}
	ctx := testkit.Ctx(t)
	for _, h := range hs {
		k.report(ctx, t, h)
	}
	k.close(t)
}

// TestPostgresLeaseTakenOverWhileStuck: process A's one email has its end
// of data held by A's relay (a hook) when A stops (SIGSTOP: a process
// frozen, as by a long pause) with a short lease. Process B, on a relay
// of its own, takes the email over once the lease ran out: its end of
// data was recorded, so B, with RetryUnknown, sends it again and records
// the result (delivered, MaybeDelivered). Then A's relay lets the end of
// data through (its server says 250) and A goes on: A is fenced, so it
// writes no result and no second end of data, and its Handle gets B's
// Result from the store.
func TestPostgresLeaseTakenOverWhileStuck(t *testing.T) {
	q := testkit.NewQueue(t)
	q.Store(t, nil)
	held := make(chan struct{})
	release := make(chan struct{})
	var ends atomic.Int64
	var once sync.Once
	relayA := testkit.NewRelay(t, &relaytest.Options{
		HideExtensions: []string{"CHUNKING"}, // DATA: the end of data is its own ".\r\n"
		OnSMTPData: func(d relaytest.SMTPData) {
			if !d.FromServer && (bytes.HasSuffix(d.Data, []byte("\r\n.\r\n")) || string(d.Data) == ".\r\n") {
				ends.Add(1)
				once.Do(func() { close(held) })
				<-release
			}
		},
	})
	var releaseOnce sync.Once
	open := func() { releaseOnce.Do(func() { close(release) }) }
	t.Cleanup(open) // before the relay's Close, registered before it
	relayB := testkit.NewRelay(t, nil)
	ctx := testkit.Ctx(t)

	a := startPG(t, "takeover", append(pgEnv(q.Conn, q.Name, relayA), "MXRELAY_PG_LEASE=600ms",
		"MXRELAY_PG_LOCKSTEP=1", "MXRELAY_PG_COMMAND_TIMEOUT=1m")...)
	select {
	case <-held:
	case <-ctx.Done():
		t.Fatal("A's end of data did not reach its relay")
	}
	var ownerA string
	require.NoError(t, q.Row(`SELECT owner FROM {s}.email WHERE id = 'taken' AND ends = 1`).Scan(&ownerA), "the end of data is recorded before it is written")
	// Said before A stops, so before anything could fence its email.
	letGo, err := strconv.Atoi(a.await(ctx, t, "LET", nil)[0])
	require.NoError(t, err)
	require.Contains(t, []int{0, 1}, letGo, "A's Enqueue held its email, or let it go")
	t.Logf("emails A's Enqueue let go of: %d", letGo)
	a.signal(t, syscall.SIGSTOP)
	t.Cleanup(func() { a.cmd.Process.Signal(syscall.SIGCONT) })

	b := startPG(t, "takeover", append(pgEnv(q.Conn, q.Name, relayB), "MXRELAY_PG_ROLE=B", "MXRELAY_PG_RETRY_UNKNOWN=1")...)
	var statsB []string
	b.finish(ctx, t, func(l string) {
		if f := strings.Fields(l); len(f) > 0 && f[0] == "STATS" {
			statsB = f[1:]
		}
	})
	assert.Equal(t, []string{"1", "1", "0", "0", "0"}, statsB, "B queued the one it took over, and delivered it")
	var ownerB string
	var attempt int
	var maybe, delivered bool
	require.NoError(t, q.Row(`SELECT owner, attempt, coalesce((result->>'maybeDelivered')::boolean, false), (result->>'delivered')::boolean FROM {s}.email WHERE id = 'taken' AND finished_at IS NOT NULL`).
		Scan(&ownerB, &attempt, &maybe, &delivered))
	assert.NotEqual(t, ownerA, ownerB, "the result is B's")
	assert.Equal(t, 2, attempt)
	assert.True(t, delivered)
	assert.True(t, maybe, "A's end of data may have reached the server")
	assert.Equal(t, 1, testkit.CountSubject(relayB, "taken"))

	open()
	a.signal(t, syscall.SIGCONT)
	var got, statsA []string
	a.finish(ctx, t, func(l string) {
		f := strings.Fields(l)
		switch {
		case len(f) == 4 && f[0] == "R":
			got = f[2:]
		case len(f) > 0 && f[0] == "STATS":
			statsA = f[1:]
		}
	})
	assert.Equal(t, []string{"DELIVERED", "true"}, got, "A's Handle has B's Result")
	// A claim in progress when A's Enqueue committed (a worker's first
	// pull) may have missed the email: Enqueue then let it go to the
	// store (released), and A claimed it again, a record of its own
	// (queued again), whose end of data is the one held. Either way the
	// record that A's end of data went out for is let go once, fenced.
	n := strconv.Itoa(1 + letGo)
	assert.Equal(t, []string{n, "0", "0", n, "0"}, statsA, "A delivered nothing, failed nothing: it let the email go")
	assert.Equal(t, int64(1), ends.Load(), "A wrote no second end of data")
	assert.Equal(t, 1, testkit.CountSubject(relayA, "taken"), "A's one end of data, let through")
	var ownerNow string
	require.NoError(t, q.Row(`SELECT owner FROM {s}.email WHERE id = 'taken'`).Scan(&ownerNow))
	assert.Equal(t, ownerB, ownerNow, "A wrote nothing after B's result")
}

// takeover is the child of TestPostgresLeaseTakenOverWhileStuck: A
// enqueues the email, says whether its Enqueue let go of it (LET), and
// waits for its Result; B waits until the store has a result for every
// email.
func (k *pgChild) takeover(t *testing.T) {
	ctx := testkit.Ctx(t)
	if os.Getenv("MXRELAY_PG_ROLE") == "B" {
		k.drain(ctx, t)
		k.close(t)
		return
	}
	e := testkit.Mail("taken")
	e.ID = "taken"
	h := k.enqueue(t, e)
	k.say("LET %d", k.c.Stats().EmailsReleased) // let go of at Enqueue: no claim held it yet
	k.report(context.Background(), t, h)
	k.close(t)
}
