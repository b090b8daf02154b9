package test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/mxrelay/mxrelay"
	"github.com/mxrelay/mxrelay/internal/testkit"
	"github.com/mxrelay/mxrelay/pgstore"
	"github.com/mxrelay/mxrelay/relaytest"
)

// The PostgreSQL tests across processes run their Clients in child
// processes: this test binary run again as TestPostgresChild, in the mode
// MXRELAY_PG_CHILD names, on the queue and the relay the parent gives it
// in its environment. A child says what it did one line at a time on its
// standard output ("T id" before an Enqueue, "A id unixnano" after it
// returned, "R id outcome maybe" for a Handle's Result, "DONE" at its
// end), and reads the parent's commands on its standard input.

// pgProc is a child process seen from the parent.
type pgProc struct {
	cmd   *exec.Cmd
	in    io.WriteCloser
	lines chan string   // its lines, closed at the end of its output
	done  chan struct{} // closed once it has exited and been reaped
	err   error         // how it exited, set before done closes
}

// pgEnv is what every child is told: the queue (a connection string and a
// schema) and the relay.
func pgEnv(conn, schema string, relay *relaytest.Server) []string {
	return []string{"MXRELAY_PG_CONN=" + conn, "MXRELAY_PG_SCHEMA=" + schema,
		"MXRELAY_PG_URL=" + relay.URL, "MXRELAY_PG_KEY=" + relay.APIKey}
}

// startPG starts a child in mode with env (on top of this process's), and
// kills it when the test ends if it still runs.
func startPG(t testing.TB, mode string, env ...string) *pgProc {
	t.Helper()
	p, err := spawnPG(t, mode, env...)
	require.NoError(t, err)
	return p
}

// spawnPG is startPG for a goroutine of the test: it returns its error.
func spawnPG(t testing.TB, mode string, env ...string) (*pgProc, error) {
	cmd := exec.Command(os.Args[0], "-test.run=^TestPostgresChild$", "-test.count=1")
	cmd.Env = append(append(os.Environ(), "MXRELAY_PG_CHILD="+mode), env...)
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	in, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	p := &pgProc{cmd: cmd, in: in, lines: make(chan string, 64), done: make(chan struct{})}
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			p.lines <- sc.Text()
		}
		close(p.lines)
		p.err = cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		p.cmd.Process.Kill()
		p.cmd.Process.Signal(syscall.SIGCONT)
		for range p.lines {
		}
		<-p.done
	})
	return p, nil
}

// say writes a command line to the child.
func (p *pgProc) say(t testing.TB, line string) {
	t.Helper()
	_, err := io.WriteString(p.in, line+"\n")
	require.NoError(t, err)
}

// await reads the child's lines until one starts with verb, and returns
// its fields after the verb; other lines go to seen (nil: dropped). It
// fails t if the child's output ends first, or ctx. With verb "", it
// reads to the end of the child's output and checks that it exited
// cleanly.
func (p *pgProc) await(ctx context.Context, t testing.TB, verb string, seen func(string)) []string {
	t.Helper()
	for {
		select {
		case l, ok := <-p.lines:
			if !ok {
				<-p.done
				if verb == "" {
					require.NoError(t, p.err, "the child's exit")
					return nil
				}
				t.Fatalf("the child ended (%v) before saying %s", p.err, verb)
			}
			f := strings.Fields(l)
			if verb != "" && len(f) > 0 && f[0] == verb {
				return f[1:]
			}
			if seen != nil {
				seen(l)
			}
		case <-ctx.Done():
			t.Fatalf("the child did not say %q in time", verb)
		}
	}
}

// finish reads the child's output to its end, each line to seen, and
// checks that it exited cleanly.
func (p *pgProc) finish(ctx context.Context, t testing.TB, seen func(string)) {
	t.Helper()
	p.await(ctx, t, "", seen)
}

// signal sends sig to the child.
func (p *pgProc) signal(t testing.TB, sig syscall.Signal) {
	t.Helper()
	require.NoError(t, p.cmd.Process.Signal(sig))
}

// TestPostgresChild is the child process of the PostgreSQL tests across
// processes (see pgProc).
func TestPostgresChild(t *testing.T) {
	mode := os.Getenv("MXRELAY_PG_CHILD")
	if mode == "" {
		t.Skip("only as the child process of the PostgreSQL tests across processes")
	}
	k := newPGChild(t)
	switch mode {
	case "crash":
		k.crash(t)
	case "idem":
		k.idem(t)
	case "takeover":
		k.takeover(t)
	default:
		t.Fatalf("unknown mode %q", mode)
	}
}

// pgChild is a child's side: its Client on the queue, and the commands of
// its parent.
type pgChild struct {
	c    *mxrelay.Client
	st   *pgstore.Store
	pool *pgxpool.Pool
	cmds *bufio.Scanner
}

// envInt is the child's integer setting name, or def.
func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil {
		return v
	}
	return def
}

// envDuration is the child's duration setting name, or def.
func envDuration(name string, def time.Duration) time.Duration {
	if v, err := time.ParseDuration(os.Getenv(name)); err == nil {
		return v
	}
	return def
}

func newPGChild(t *testing.T) *pgChild {
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, os.Getenv("MXRELAY_PG_CONN"))
	require.NoError(t, err)
	st, err := pgstore.Open(ctx, pool, &pgstore.Options{Schema: os.Getenv("MXRELAY_PG_SCHEMA"), PollInterval: time.Hour})
	require.NoError(t, err)
	c, err := mxrelay.New(os.Getenv("MXRELAY_PG_URL"), os.Getenv("MXRELAY_PG_KEY"), testkit.Fast(&mxrelay.Options{
		Store:                 st,
		Lease:                 envDuration("MXRELAY_PG_LEASE", 0),
		RetryUnknown:          os.Getenv("MXRELAY_PG_RETRY_UNKNOWN") == "1",
		MaxConcurrentSessions: envInt("MXRELAY_PG_SESSIONS", pgSessions),
		MaxEmailsPerSession:   envInt("MXRELAY_PG_PER_SESSION", pgPerSession),
		DisablePipelining:     os.Getenv("MXRELAY_PG_LOCKSTEP") == "1",
		CommandTimeout:        envDuration("MXRELAY_PG_COMMAND_TIMEOUT", 0),
		SessionTimeout:        time.Minute,
		RateLimit:             mxrelay.RateLimit{Emails: envInt("MXRELAY_PG_RATE", 0), Per: time.Second},
	}))
	require.NoError(t, err)
	return &pgChild{c: c, st: st, pool: pool, cmds: bufio.NewScanner(os.Stdin)}
}

// say prints a line for the parent.
func (k *pgChild) say(format string, args ...any) { fmt.Fprintf(os.Stdout, format+"\n", args...) }

// next is the parent's next command line; "" when its pipe closed.
func (k *pgChild) next() string {
	if !k.cmds.Scan() {
		return ""
	}
	return k.cmds.Text()
}

// enqueue accepts e, its IdempotencyKey its ID, trying again while the
// store cannot be reached: the key makes a try that took effect and
// failed on its way back (a commit whose answer was lost) the same email.
func (k *pgChild) enqueue(t *testing.T, e mxrelay.Email, opts ...mxrelay.SendOption) *mxrelay.Handle {
	if e.IdempotencyKey == "" {
		e.IdempotencyKey = e.ID
	}
	k.say("T %s", e.ID)
	var err error
	for try := 0; try < 600; try++ {
		var h *mxrelay.Handle
		h, err = k.c.EnqueueWait(context.Background(), e, opts...)
		if err == nil {
			k.say("A %s %d", e.ID, time.Now().UnixNano())
			return h
		}
		if errors.Is(err, mxrelay.ErrInvalidEmail) || errors.Is(err, mxrelay.ErrClosed) {
			break
		}
		time.Sleep(50 * time.Millisecond) // the database restarting: a pace, not an order
		e.Body.(io.Seeker).Seek(0, io.SeekStart)
	}
	t.Fatalf("enqueue %s: %v", e.ID, err)
	return nil
}

// report prints h's Result, once it has one.
func (k *pgChild) report(ctx context.Context, t *testing.T, h *mxrelay.Handle) *mxrelay.Result {
	res, _ := h.Wait(ctx)
	require.NotNil(t, res, "%s: no result", h.ID())
	k.say("R %s %s %t", h.ID(), res.Outcome, res.MaybeDelivered)
	return res
}

// drain waits until every email in the store has its result: this Client
// sends what is left meanwhile (what a process killed held, once its
// leases ran out), and the store's notifications say when each result
// comes.
func (k *pgChild) drain(ctx context.Context, t *testing.T) {
	for ctx.Err() == nil {
		var id string
		err := k.pool.QueryRow(ctx, `SELECT id FROM `+os.Getenv("MXRELAY_PG_SCHEMA")+`.email WHERE finished_at IS NULL ORDER BY ord LIMIT 1`).Scan(&id)
		switch {
		case errors.Is(err, pgx.ErrNoRows):
			return
		case err != nil:
			time.Sleep(100 * time.Millisecond) // the database restarting: a pace, not an order
			continue
		}
		_, err = k.st.WaitResult(ctx, id)
		require.NoError(t, err)
	}
	t.Fatal("the store still had emails without a result")
}

// close closes the Client, then the store and the pool, and says DONE.
func (k *pgChild) close(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	require.NoError(t, k.c.Close(ctx))
	st := k.c.Stats()
	k.st.Close()
	k.pool.Close()
	k.say("STATS %d %d %d %d %d", st.EmailsQueued, st.EmailsDelivered, st.EmailsFailed, st.EmailsReleased, st.EmailsHandedBack)
	k.say("DONE")
}
