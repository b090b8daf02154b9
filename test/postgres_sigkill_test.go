package test

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mxrelay/mxrelay"
	"github.com/mxrelay/mxrelay/internal/spoolcheck"
	"github.com/mxrelay/mxrelay/internal/testkit"
	"github.com/mxrelay/mxrelay/relaytest"
)

var (
	pgCrashEmails       = flag.Int("pgcrash.emails", 5000, "emails in TestPostgresSurvivesSIGKILL, over all its processes")
	pgCrashProcs        = flag.Int("pgcrash.procs", 4, "processes sharing the queue in TestPostgresSurvivesSIGKILL")
	pgCrashKills        = flag.Int("pgcrash.kills", 5, "SIGKILLs of each process in TestPostgresSurvivesSIGKILL")
	pgCrashLease        = flag.Duration("pgcrash.lease", 2*time.Second, "Options.Lease in TestPostgresSurvivesSIGKILL")
	pgCrashRetryUnknown = flag.Bool("pgcrash.retry-unknown", false, "Options.RetryUnknown in TestPostgresSurvivesSIGKILL")
	pgCrashRate         = flag.Int("pgcrash.rate", 25, "Options.RateLimit of each process in TestPostgresSurvivesSIGKILL, emails a second: below the rate they enqueue at, so that the queue holds a backlog that priority orders (0: none)")
)

// TestPostgresSurvivesSIGKILL: processes (-pgcrash.procs) share one queue
// in PostgreSQL and send -pgcrash.emails emails through one relay that
// drops connections, answers 4xx to RCPT and to end of data and cuts the
// connection after a final dot, at random; each is SIGKILLed at random
// moments (-pgcrash.kills times) and started again. Then:
//
//   - every email whose Enqueue returned has exactly one result in the
//     store (Client.Result, and one row per key in the table), and so has
//     one whose Enqueue was under way when its process was killed and
//     committed; delivered ones are in the mailbox, failed ones that are
//     not unknown outcomes are not; one is in the mailbox twice only with
//     MaybeDelivered (and RetryUnknown). Each email's Enqueue is tried
//     again by the next life with the same IdempotencyKey, so an Enqueue
//     that committed before its process died is not a second email.
//   - a Handle's Result, which the store gives when another process sent
//     the email, is the store's.
//   - priority holds across processes: no claim, by any process, took an
//     email of a lower priority (or a later one of the same priority)
//     while an email it must have seen ready was left for a later claim
//     (checkPriority: from the store's own log of its claims, exact, not
//     from the timing of sends).
func TestPostgresSurvivesSIGKILL(t *testing.T) {
	q := testkit.NewQueue(t)
	q.Store(t, nil) // the schema, for the logs below
	q.Exec(claimLogSQL)
	relay := testkit.NewRelay(t, &relaytest.Options{Latency: relaytest.Latency{ToClient: 2 * time.Millisecond}})
	seed := rand.Uint64()
	t.Logf("seed %d", seed)

	run := &pgCrashRun{
		tried: map[string]bool{}, accepted: map[string]time.Time{}, reported: map[string]string{},
	}
	stopFaults := make(chan struct{})
	faultsDone := make(chan struct{})
	go func() {
		defer close(faultsDone)
		injectFaults(relay, rand.New(rand.NewPCG(seed, 1)), stopFaults)
	}()
	per := *pgCrashEmails / *pgCrashProcs
	var wg sync.WaitGroup
	for slot := range *pgCrashProcs {
		r := rand.New(rand.NewPCG(seed, uint64(10+slot)))
		wg.Go(func() {
			env := append(pgEnv(q.Conn, q.Name, relay),
				"MXRELAY_PG_SLOT=p"+strconv.Itoa(slot),
				"MXRELAY_PG_TO="+strconv.Itoa(per),
				"MXRELAY_PG_LEASE="+pgCrashLease.String(),
				"MXRELAY_PG_RETRY_UNKNOWN="+map[bool]string{true: "1"}[*pgCrashRetryUnknown],
				"MXRELAY_PG_COMMAND_TIMEOUT=30s",
				"MXRELAY_PG_RATE="+strconv.Itoa(*pgCrashRate),
			)
			run.slot(t, slot, env, r, *pgCrashKills)
		})
	}
	wg.Wait()
	close(stopFaults)
	<-faultsDone
	if t.Failed() {
		return
	}
	run.check(t, q, relay)
}

// claimLogSQL is the test's own log of the store's claims, of what their
// holders let go of, and of accepts, written by triggers on the store's
// table: for each claim, the email, its attempt, priority and place, the
// claiming statement's transaction, when that statement reached the
// server and when the row was written; for each email a holder let go of
// (released, finished, or taken over by another owner), the holder; for
// each accept, when it was made ready (before its commit).
const claimLogSQL = `
CREATE TABLE {s}.claim_log (
	seq bigserial PRIMARY KEY, letgo boolean NOT NULL, id text, attempt bigint, owner text, priority smallint, ord bigint,
	tx xid8, stmt_at timestamptz, at timestamptz);
CREATE FUNCTION {s}.log_claim() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
	INSERT INTO {s}.claim_log (letgo, id, attempt, owner, priority, ord, tx, stmt_at, at)
	VALUES (false, NEW.id, NEW.attempt, NEW.owner, NEW.priority, NEW.ord, pg_current_xact_id(), statement_timestamp(), clock_timestamp());
	RETURN NULL;
END $$;
CREATE TRIGGER claim_log AFTER UPDATE OF attempt ON {s}.email
	FOR EACH ROW WHEN (NEW.attempt > OLD.attempt) EXECUTE FUNCTION {s}.log_claim();
CREATE FUNCTION {s}.log_letgo() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
	INSERT INTO {s}.claim_log (letgo, id, attempt, owner, tx, at) VALUES (true, OLD.id, OLD.attempt, OLD.owner, pg_current_xact_id(), clock_timestamp());
	RETURN NULL;
END $$;
CREATE TRIGGER letgo_log AFTER UPDATE OF owner, finished_at ON {s}.email
	FOR EACH ROW WHEN (OLD.owner IS NOT NULL AND OLD.finished_at IS NULL
		AND (NEW.owner IS DISTINCT FROM OLD.owner OR NEW.finished_at IS NOT NULL))
	EXECUTE FUNCTION {s}.log_letgo();
CREATE TABLE {s}.accept_log (id text PRIMARY KEY, at timestamptz);
CREATE FUNCTION {s}.log_accept() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
	INSERT INTO {s}.accept_log (id, at) VALUES (NEW.id, clock_timestamp());
	RETURN NULL;
END $$;
CREATE TRIGGER accept_log AFTER UPDATE OF ord ON {s}.email
	FOR EACH ROW WHEN (OLD.ord IS NULL AND NEW.ord IS NOT NULL) EXECUTE FUNCTION {s}.log_accept();
`

// injectFaults arms a random fault on the relay every 400 ms, unless one is
// still armed, until stop:
// a connection dropped after RCPT, a RCPT answered 450, an end of data
// answered 451, a connection cut after the final dot (the upstream has
// the email; the client cannot know), a WebSocket closed at MAIL.
func injectFaults(relay *relaytest.Server, r *rand.Rand, stop <-chan struct{}) {
	faults := []relaytest.Fault{
		{Kind: relaytest.DropAfterRcpt},
		{Kind: relaytest.ReplaceReply, Command: "RCPT", Recipient: "c@example.com", Reply: "450 4.2.1 busy", Times: 3},
		{Kind: relaytest.ReplaceReply, Command: ".", Reply: "451 4.3.0 try again", Times: 2},
		{Kind: relaytest.DropAfterFinalDot},
		{Kind: relaytest.CloseWebSocket, Command: "MAIL", Code: 1011},
	}
	tick := time.NewTicker(400 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-stop:
			relay.ClearFaults()
			return
		case <-tick.C:
			if len(relay.Faults()) == 0 {
				relay.Inject(faults[r.IntN(len(faults))])
			}
		}
	}
}

// pgCrashRun is what the processes of TestPostgresSurvivesSIGKILL said.
type pgCrashRun struct {
	mu       sync.Mutex
	tried    map[string]bool
	accepted map[string]time.Time // when the first Enqueue that returned it returned
	reported map[string]string    // a Handle's Result: "outcome maybe"
	kills    []time.Time          // and the database's stop and start
	lives    int
	counts   spoolcheck.Counts
}

// slot runs the lives of one process: each but the last (kills) is SIGKILLed at a
// random moment (unless it ends first); each starts where the last one's
// Enqueues stopped, the one under way at the kill tried again.
func (run *pgCrashRun) slot(t *testing.T, slot int, env []string, r *rand.Rand, kills int) {
	next := 0
	for life := 0; ; life++ {
		last := life >= kills
		p, err := spawnPG(t, "crash", append(env, "MXRELAY_PG_FROM="+strconv.Itoa(next))...)
		if err != nil {
			t.Errorf("process %d: %v", slot, err)
			return
		}
		run.mu.Lock()
		run.lives++
		run.mu.Unlock()
		var kill <-chan time.Time
		if !last {
			kill = time.After(time.Duration(200+r.IntN(1800)) * time.Millisecond)
		}
		timeout := time.After(3 * time.Minute)
		done, killed := false, false
	read:
		for {
			select {
			case l, ok := <-p.lines:
				if !ok {
					break read
				}
				if run.line(l, &next) {
					done = true
				}
			case <-kill:
				run.mu.Lock()
				run.kills = append(run.kills, time.Now())
				run.mu.Unlock()
				p.cmd.Process.Signal(syscall.SIGKILL)
				kill, killed = nil, true
			case <-timeout:
				p.cmd.Process.Kill()
				t.Errorf("process %d: a life did not end within 3 minutes", slot)
				return
			}
		}
		<-p.done
		if !killed && p.err != nil {
			t.Errorf("process %d, life %d: %v", slot, life, p.err)
			return
		}
		if last && !done {
			t.Errorf("process %d: the last life ended without DONE: %v", slot, p.err)
			return
		}
		if done {
			return
		}
	}
}

// line records what a child's line says, and reports its DONE. next
// becomes the index after the last email accepted.
func (run *pgCrashRun) line(l string, next *int) bool {
	f := strings.Fields(l)
	if len(f) == 0 {
		return false
	}
	run.mu.Lock()
	defer run.mu.Unlock()
	switch {
	case f[0] == "T" && len(f) == 2:
		run.tried[f[1]] = true
	case f[0] == "A" && len(f) == 3:
		ns, _ := strconv.ParseInt(f[2], 10, 64)
		if _, ok := run.accepted[f[1]]; !ok {
			run.accepted[f[1]] = time.Unix(0, ns)
		}
		_, n, _ := strings.Cut(f[1], "-")
		i, _ := strconv.Atoi(n)
		*next = max(*next, i+1)
	case f[0] == "R" && len(f) == 4:
		run.reported[f[1]] = f[2] + " " + f[3]
	case f[0] == "DONE":
		return true
	}
	return false
}

// crashPriority is the priority of the i-th email of a process: mostly
// NORMAL, one in twenty CRITICAL, one in ten HIGH, one in ten LOW.
func crashPriority(i int) mxrelay.Priority {
	switch {
	case i%20 == 7:
		return mxrelay.PriorityCritical
	case i%10 == 3:
		return mxrelay.PriorityHigh
	case i%10 == 9:
		return mxrelay.PriorityLow
	}
	return mxrelay.PriorityNormal
}

// crash is the child of TestPostgresSurvivesSIGKILL: it enqueues its
// emails from MXRELAY_PG_FROM on, keeping at most MXRELAY_PG_WINDOW of its
// own without a result (so that the queue holds a backlog and the
// processes' Handles wait for emails the others send), then waits until
// every email in the store has its result, and closes.
func (k *pgChild) crash(t *testing.T) {
	slot := os.Getenv("MXRELAY_PG_SLOT")
	from, to, window := envInt("MXRELAY_PG_FROM", 0), envInt("MXRELAY_PG_TO", 0), envInt("MXRELAY_PG_WINDOW", 600)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	var pending []*mxrelay.Handle
	for i := from; i < to; i++ {
		if len(pending) >= window {
			k.report(ctx, t, pending[0])
			pending = pending[1:]
		}
		id := fmt.Sprintf("%s-%d", slot, i)
		e := testkit.Mail(id, "b@example.com", "c@example.com")
		e.ID = id
		pending = append(pending, k.enqueue(t, e, mxrelay.WithPriority(crashPriority(i))))
	}
	for _, h := range pending {
		k.report(ctx, t, h)
	}
	k.drain(ctx, t)
	k.close(t)
}

// check checks the accounting, the Handles' Results and the priority
// order once every process has ended.
func (run *pgCrashRun) check(t *testing.T, q *testkit.Queue, relay *relaytest.Server) {
	assert.Zero(t, q.Count(`SELECT count(*) FROM {s}.email WHERE finished_at IS NULL`), "every accepted email has its result")
	rows, err := q.Admin.Query(context.Background(), strings.ReplaceAll(`SELECT coalesce(idem_key, id) FROM {s}.email`, "{s}", q.Name))
	require.NoError(t, err)
	perKey := map[string]int{}
	for rows.Next() {
		var key string
		require.NoError(t, rows.Scan(&key))
		perKey[key]++
	}
	require.NoError(t, rows.Err())

	// The results, as any process reads them back.
	reader := testkit.NewClient(t, relay, &mxrelay.Options{Store: q.Store(t, nil)})
	ctx := testkit.Ctx(t)
	results := map[string][]spoolcheck.Result{}
	outcomes := map[string]*mxrelay.Result{}
	for id, n := range perKey {
		assert.Equal(t, 1, n, "%s: one email per key", id)
		res, err := reader.Result(ctx, id)
		if !assert.NoError(t, err, id) {
			continue
		}
		testkit.CheckResult(t, res)
		outcomes[id] = res
		results[id] = append(results[id], spoolcheck.Result{Delivered: res.Outcome == mxrelay.OutcomeDelivered, MaybeDelivered: res.MaybeDelivered, Error: fmt.Sprint(res.Err)})
	}
	for id, rep := range run.reported {
		if res := outcomes[id]; assert.NotNil(t, res, "%s: a Handle's result, none in the store", id) {
			assert.Equal(t, fmt.Sprintf("%s %t", res.Outcome, res.MaybeDelivered), rep, "%s: the Handle's Result is the store's", id)
		}
	}

	inBox := testkit.MostCopies(relay)
	accepted := map[string]bool{}
	for id := range run.accepted {
		accepted[id] = true
	}
	n := spoolcheck.Check(t, spoolcheck.Run{Tried: run.tried, Accepted: accepted, Results: results, InBox: inBox, RetryUnknown: *pgCrashRetryUnknown})
	causes, err := q.Admin.Query(context.Background(), strings.ReplaceAll(`SELECT count(*), coalesce((result->>'maybeDelivered')::boolean, false),
			left(regexp_replace(result->>'error', '^.*attempt\(s\): ', ''), 110)
		FROM {s}.email WHERE NOT (result->>'delivered')::boolean GROUP BY 2, 3 ORDER BY 1 DESC LIMIT 6`, "{s}", q.Name))
	require.NoError(t, err)
	for causes.Next() {
		var n int
		var maybe bool
		var cause string
		require.NoError(t, causes.Scan(&n, &maybe, &cause))
		t.Logf("not delivered (MaybeDelivered %t): %d: %s", maybe, n, cause)
	}
	require.NoError(t, causes.Err())
	pc := checkPriority(t, q, run.accepted, run.kills)
	peak := checkHolding(t, q, pgHoldBound)
	run.counts = n
	reclaims := q.Count(`SELECT count(*) FROM {s}.claim_log WHERE attempt > 1 AND NOT letgo`)
	t.Logf("%d lives, %d SIGKILLs or database stops and starts, %d emails tried, %d accepted: %d delivered, %d failed, %d unknown, %d in the mailbox twice or more; %d claims again (retries and takeovers); priority: %d emails checked against %d claims that could have passed them (%d not checked: a kill between their accept and first claim); the most a process held: %d (bound %d)",
		run.lives, len(run.kills), len(run.tried), len(run.accepted), n.Delivered, n.Failed, n.Unknown, n.Dups, reclaims, pc.checked, pc.claims, pc.skipped, peak, pgHoldBound)
}

// priorityCounts say what checkPriority looked at.
type priorityCounts struct{ checked, claims, skipped int }

// checkPriority checks the store's claims, in its log, against the order
// it promises: a claim takes the ready emails highest priority first,
// in order of acceptance within a priority, skipping only those another
// claim has locked. For each email X, accepted (its Enqueue returned) at
// tA, first claimed by statement Y: any claim statement E that reached
// the server after tA saw X committed and ready (X was not claimed before
// Y); if E ended before Y reached the server, Y did not hold X's lock when
// E passed it, so E must not have taken an email that X goes before. The
// one other holder of X's lock would be a claim that locked X and then
// rolled back, as a process killed during its claim does: X is not
// checked when a kill fell between its accept and its first claim. All
// times are the machine's one clock: the database's clock_timestamp and
// statement_timestamp, the child's time.Now.
func checkPriority(t *testing.T, q *testkit.Queue, accepted map[string]time.Time, kills []time.Time) priorityCounts {
	type claim struct {
		id         string
		attempt    int64
		priority   int
		ord        int64
		tx         string
		stmtAt, at time.Time
	}
	type statement struct {
		tx            string
		stmtAt, maxAt time.Time
		took          []*claim
	}
	rows, err := q.Admin.Query(context.Background(), strings.ReplaceAll(
		`SELECT c.id, c.attempt, c.priority, c.ord, c.tx::text, c.stmt_at, c.at, e.idem_key
		FROM {s}.claim_log c JOIN {s}.email e USING (id) WHERE NOT c.letgo ORDER BY c.seq`, "{s}", q.Name))
	require.NoError(t, err)
	byTx := map[string]*statement{}
	var statements []*statement
	first := map[string]*claim{} // by key
	for rows.Next() {
		c := new(claim)
		var key *string
		require.NoError(t, rows.Scan(&c.id, &c.attempt, &c.priority, &c.ord, &c.tx, &c.stmtAt, &c.at, &key))
		s := byTx[c.tx]
		if s == nil {
			s = &statement{tx: c.tx, stmtAt: c.stmtAt}
			byTx[c.tx] = s
			statements = append(statements, s)
		}
		s.took = append(s.took, c)
		if c.at.After(s.maxAt) {
			s.maxAt = c.at
		}
		if c.attempt == 1 && key != nil {
			first[*key] = c
		}
	}
	require.NoError(t, rows.Err())
	slices.SortFunc(statements, func(a, b *statement) int { return a.stmtAt.Compare(b.stmtAt) })
	acceptAt := map[string]time.Time{}
	arows, err := q.Admin.Query(context.Background(), strings.ReplaceAll(
		`SELECT coalesce(e.idem_key, e.id), a.at FROM {s}.accept_log a JOIN {s}.email e USING (id)`, "{s}", q.Name))
	require.NoError(t, err)
	for arows.Next() {
		var key string
		var at time.Time
		require.NoError(t, arows.Scan(&key, &at))
		acceptAt[key] = at
	}
	require.NoError(t, arows.Err())

	var n priorityCounts
	for key, tA := range accepted {
		y := first[key]
		if !assert.NotNil(t, y, "%s: accepted, never claimed", key) {
			continue
		}
		if slices.ContainsFunc(kills, func(k time.Time) bool { return !k.Before(acceptAt[key]) && !k.After(y.at) }) {
			n.skipped++
			continue
		}
		n.checked++
		i, _ := slices.BinarySearchFunc(statements, tA, func(s *statement, t time.Time) int {
			if !s.stmtAt.After(t) {
				return -1
			}
			return 1
		})
		for _, e := range statements[i:] {
			if !e.stmtAt.Before(y.stmtAt) {
				break
			}
			if e.tx == y.tx || !e.maxAt.Before(y.stmtAt) {
				continue
			}
			n.claims++
			for _, m := range e.took {
				if m.priority < y.priority || m.priority == y.priority && m.ord > y.ord {
					b, _ := json.Marshal(map[string]any{"took": m.id, "priority": m.priority, "ord": m.ord, "at": m.at,
						"passed": key, "its_priority": y.priority, "its_ord": y.ord, "accepted": tA, "first_claimed": y.stmtAt})
					t.Errorf("a claim took an email that a ready one goes before: %s", b)
				}
			}
		}
	}
	return n
}

// The children's sessions (MaxConcurrentSessions) and MaxEmailsPerSession,
// unless their environment says otherwise.
const pgSessions, pgPerSession = 2, 40

// pgHoldBound is the most emails a child may hold of the queue: ahead (what
// its sessions can start soon: sessions × min(MaxEmailsPerSession,
// PipelineWindow), the default window being larger) besides those in its
// sessions, and those whose result or release it is writing.
const pgHoldBound = pgSessions*pgPerSession + pgSessions*pgPerSession + pgSessions*pgPerSession

// checkHolding checks, from the store's log of claims and of what their
// holders let go of, that no process held more of the queue than bound at
// any time (so that no process sits on a backlog the others could send,
// and an email accepted later waits behind at most bound emails per
// process, whatever their priority), and returns the most one held.
func checkHolding(t *testing.T, q *testkit.Queue, bound int) int {
	rows, err := q.Admin.Query(context.Background(), strings.ReplaceAll(
		`SELECT letgo, id, owner FROM {s}.claim_log ORDER BY seq`, "{s}", q.Name))
	require.NoError(t, err)
	held := map[string]map[string]bool{}
	peak := 0
	for rows.Next() {
		var letgo bool
		var id, owner string
		require.NoError(t, rows.Scan(&letgo, &id, &owner))
		if letgo {
			delete(held[owner], id)
			continue
		}
		if held[owner] == nil {
			held[owner] = map[string]bool{}
		}
		held[owner][id] = true
		peak = max(peak, len(held[owner]))
	}
	require.NoError(t, rows.Err())
	assert.LessOrEqual(t, peak, bound, "the most emails one process held")
	return peak
}
