package spool

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"

	"github.com/mxrelay/mxrelay/internal/spoolcheck"
	"github.com/mxrelay/mxrelay/internal/store"
)

var (
	crashEmails = flag.Int("crash.emails", 200, "emails in TestSurvivesSIGKILL, per variant")
	crashKills  = flag.Int("crash.kills", 8, "SIGKILLs in TestSurvivesSIGKILL, per variant")
)

// The child's settings, from its environment.
const (
	childEnv    = "MXRELAY_SPOOL_CRASH_CHILD" // set: run as the child (see TestMain)
	dirEnv      = "MXRELAY_SPOOL_CRASH_DIR"
	mailboxEnv  = "MXRELAY_SPOOL_CRASH_MAILBOX"
	fromEnv     = "MXRELAY_SPOOL_CRASH_FROM"
	toEnv       = "MXRELAY_SPOOL_CRASH_TO"
	againEnv    = "MXRELAY_SPOOL_CRASH_AGAIN" // IDs tried, not seen accepted: submitted again
	retryEnv    = "MXRELAY_SPOOL_CRASH_RETRY_UNKNOWN"
	workersEnv  = "MXRELAY_SPOOL_CRASH_WORKERS"
	faultsEnv   = "MXRELAY_SPOOL_CRASH_FAULTS"
	seedEnv     = "MXRELAY_SPOOL_CRASH_SEED"
	childLimit  = 2 * time.Minute
	childWindow = 8 // emails per claim: a pipeline window
)

// TestSurvivesSIGKILL runs a child process that accepts emails into a
// spool and sends them as the Client would (claim a window, record its
// ends of data, "write" each end of data by appending the email's ID to
// a mailbox file, then record the reply), kills it with SIGKILL at random
// moments, starts it again on the same directory, and checks the
// accounting rule across the crashes: every email whose Commit returned
// has exactly one result in the records; delivered ones are in the
// mailbox, failed ones that are not unknown outcomes are not; an email is
// in the mailbox more than once only if its result says MaybeDelivered,
// and only with RetryUnknown; an email the child refused (Abort) is
// never sent and has no result. Each life first submits again, with the
// same idempotency key, the emails the last one was killed accepting:
// each of them is accepted once.
func TestSurvivesSIGKILL(t *testing.T) {
	if testing.Short() {
		t.Skip("child processes killed at random")
	}
	for _, v := range []struct {
		name    string
		retry   bool
		workers int
		faults  bool
	}{
		{"unknown fails", false, 1, false},
		{"RetryUnknown", true, 1, false},
		{"3 workers, 4xx", false, 3, true},
	} {
		t.Run(v.name, func(t *testing.T) {
			crashRun(t, v.retry, v.workers, v.faults)
		})
	}
}

func crashRun(t *testing.T, retryUnknown bool, workers int, faults bool) {
	dir := filepath.Join(t.TempDir(), "spool")
	mailbox := filepath.Join(t.TempDir(), "mailbox")
	seed := rand.Uint64()
	r := rand.New(rand.NewPCG(seed, 7))
	t.Logf("seed %d", seed)

	tried := map[string]bool{}    // "T": Accept called
	accepted := map[string]bool{} // "A": Commit returned nil, or Existing
	refused := map[string]bool{}  // "X": aborted on purpose
	next, lives := 0, 0
	for kill := 0; ; kill++ {
		last := kill >= *crashKills
		lives++
		var again []string
		for id := range tried {
			if !accepted[id] && !refused[id] {
				again = append(again, id)
			}
		}
		cmd := exec.Command(os.Args[0], "-test.run=^$")
		cmd.Env = append(os.Environ(),
			childEnv+"=1", dirEnv+"="+dir, mailboxEnv+"="+mailbox,
			fromEnv+"="+strconv.Itoa(next), toEnv+"="+strconv.Itoa(*crashEmails),
			againEnv+"="+strings.Join(again, ","),
			retryEnv+"="+strconv.FormatBool(retryUnknown), workersEnv+"="+strconv.Itoa(workers),
			faultsEnv+"="+strconv.FormatBool(faults), seedEnv+"="+strconv.FormatUint(r.Uint64(), 10),
		)
		// Killed after a random number of its lines and a random moment
		// more, so that kills land everywhere however fast the machine.
		killAfter := 1 + r.IntN(80)
		killAt := func(n int) <-chan time.Time {
			if n != killAfter {
				return nil
			}
			return time.After(time.Duration(r.IntN(3000)) * time.Microsecond)
		}
		if spoolcheck.Life(t, cmd, last, childLimit, killAt, func(line string) bool {
			verb, id, _ := strings.Cut(line, " ")
			switch verb {
			case "T":
				tried[id] = true
				n, _ := strconv.Atoi(strings.TrimPrefix(id, "e"))
				next = max(next, n+1)
			case "A":
				accepted[id] = true
			case "X":
				refused[id] = true
			case "DONE":
				return true
			default:
				t.Errorf("life %d: %s", lives, line)
			}
			return false
		}) {
			break
		}
	}

	// The directory is empty of emails and its records say what became
	// of each.
	assert.Empty(t, msgFiles(t, dir), "every accepted email has its result")
	results := map[string][]Record{}
	for _, rec := range records(t, dir) {
		results[rec.ID] = append(results[rec.ID], rec)
	}
	inBox := map[string]int{}
	if data, err := os.ReadFile(mailbox); err == nil {
		for line := range strings.Lines(string(data)) {
			if id, ok := strings.CutSuffix(line, "\n"); ok {
				inBox[id]++
			}
		}
	}
	sr := map[string][]spoolcheck.Result{}
	for id, rs := range results {
		for _, r := range rs {
			sr[id] = append(sr[id], spoolcheck.Result{Delivered: r.Delivered, MaybeDelivered: r.MaybeDelivered, Error: r.Error})
		}
	}
	n := spoolcheck.Check(t, spoolcheck.Run{Tried: tried, Accepted: accepted, Refused: refused, Results: sr, InBox: inBox, RetryUnknown: retryUnknown})
	t.Logf("%d lives, %d emails tried, %d accepted, %d refused: %d delivered, %d failed, %d unknown, %d in the mailbox twice or more",
		lives, len(tried), len(accepted), len(refused), n.Delivered, n.Failed, n.Unknown, n.Dups)
}

// crashChild is the child process of TestSurvivesSIGKILL: it reports
// on stdout what it tries ("T id"), what the spool accepted ("A id") and
// what it refused on purpose ("X id"), and "DONE" once every email it
// knows of has its result and the Store is closed. Anything else it
// prints is a failure. Its exit code is TestMain's.
func crashChild() int {
	env := os.Getenv
	from, _ := strconv.Atoi(env(fromEnv))
	to, _ := strconv.Atoi(env(toEnv))
	workers, _ := strconv.Atoi(env(workersEnv))
	seed, _ := strconv.ParseUint(env(seedEnv), 10, 64)
	c := &child{
		retry:  env(retryEnv) == "true",
		faults: env(faultsEnv) == "true",
		r:      rand.New(rand.NewPCG(seed, 9)),
	}
	var err error
	c.box, err = os.OpenFile(env(mailboxEnv), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		c.say("ERROR", err.Error())
		return 1
	}
	c.s, err = Open(env(dirEnv), nil)
	if err != nil {
		c.say("ERROR", err.Error())
		return 1
	}
	known := c.s.Recovered()
	ctx, cancel := context.WithTimeout(context.Background(), childLimit)
	defer cancel()
	var wg sync.WaitGroup
	for k := range workers {
		wg.Go(func() { c.work(ctx, fmt.Sprintf("w%d-%d", k, os.Getpid())) })
	}
	var ids []string
	if again := env(againEnv); again != "" {
		ids = strings.Split(again, ",")
	}
	for i := from; i < to; i++ {
		ids = append(ids, "e"+strconv.Itoa(i))
	}
	for _, id := range ids {
		if a, ok := c.submit(ctx, id); ok {
			known = append(known, a)
		}
	}
	for _, a := range known {
		if _, err := c.s.WaitResult(ctx, a.ID); err != nil {
			c.say("ERROR", a.ID+": "+err.Error())
			return 1
		}
	}
	cancel()
	wg.Wait()
	if err := c.s.Close(); err != nil {
		c.say("ERROR", err.Error())
		return 1
	}
	c.say("DONE", "")
	return 0
}

// child is the state of the child process.
type child struct {
	s      *Store
	box    *os.File // the mailbox: one line per end of data the "server" took
	retry  bool
	faults bool
	mu     sync.Mutex
	r      *rand.Rand
	out    sync.Mutex
}

func (c *child) say(verb, id string) {
	c.out.Lock()
	defer c.out.Unlock()
	fmt.Fprintf(os.Stdout, "%s %s\n", verb, id)
}

// chance reports true one time in n.
func (c *child) chance(n int) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.r.IntN(n) == 0
}

// body is email id's body.
func body(id string) string { return "Subject: " + id + "\r\n\r\n" + strings.Repeat("x", 200) + "\r\n" }

// submit accepts email id under its idempotency key, or refuses it on
// purpose, once in twenty.
func (c *child) submit(ctx context.Context, id string) (store.Accepted, bool) {
	n, _ := strconv.Atoi(strings.TrimPrefix(id, "e"))
	c.say("T", id)
	d, err := c.s.Accept(ctx, &store.Envelope{ID: id, IdempotencyKey: "k-" + id, From: "a@example.com",
		To: []string{"b@example.com"}, Priority: n%4 - 1})
	if err != nil {
		c.say("ERROR", id+": "+err.Error())
		return store.Accepted{}, false
	}
	if _, err := io.WriteString(d, body(id)); err != nil {
		c.say("ERROR", id+": "+err.Error())
		return store.Accepted{}, false
	}
	if _, existing := d.Existing(); !existing && c.chance(20) {
		d.Abort()
		c.say("X", id)
		return store.Accepted{}, false
	}
	a, err := d.Commit(ctx, nil)
	if err != nil {
		c.say("ERROR", id+": "+err.Error())
		return store.Accepted{}, false
	}
	c.say("A", id)
	return a, !a.Existing
}

// work claims windows of emails and sends them until ctx ends.
func (c *child) work(ctx context.Context, owner string) {
	for ctx.Err() == nil {
		wake := c.s.Wake()
		got, _, err := c.s.Claim(ctx, owner, childWindow, time.Hour)
		if err != nil {
			if !errors.Is(err, store.ErrClosed) {
				c.say("ERROR", err.Error())
			}
			return
		}
		if len(got) == 0 {
			select {
			case <-wake:
			case <-ctx.Done():
			}
			continue
		}
		c.window(ctx, got)
	}
}

// window sends one claim's emails as a pipelined session would: the ends
// of data recorded in one call, then each written and answered.
func (c *child) window(ctx context.Context, got []*store.Claimed) {
	var send []*store.Claimed
	for _, e := range got {
		if e.Unanswered > 0 && !c.retry {
			// The Client's rule without RetryUnknown: fail it at once.
			c.finish(ctx, e, &store.Result{ID: e.ID, MaybeDelivered: true, Attempts: attempts(e), Kind: "unknown",
				Error: "the previous life stopped after this email's end of data was written"})
			continue
		}
		if !c.readBody(ctx, e) {
			return
		}
		send = append(send, e)
	}
	toks := make([]store.Token, len(send))
	for i, e := range send {
		toks[i] = e.Token
	}
	errs, err := c.s.Ending(ctx, toks)
	if err != nil {
		c.say("ERROR", err.Error())
		return
	}
	// The ends of data go out; the server takes those it will accept
	// (they are in the mailbox from then on), and its replies come a
	// round trip later: a kill in between leaves ends of data with no
	// answer, some of them delivered.
	type reply struct {
		e    *store.Claimed
		code int
	}
	var replies []reply
	for i, e := range send {
		if errs[i] != nil {
			c.say("ERROR", e.ID+": "+errs[i].Error())
			continue
		}
		code := 250
		switch {
		case c.faults && c.chance(6):
			code = 451
		case c.faults && c.chance(12):
			code = 550
		}
		if code == 250 {
			if _, err := fmt.Fprintf(c.box, "%s\n", e.ID); err != nil {
				c.say("ERROR", err.Error())
				return
			}
		}
		replies = append(replies, reply{e, code})
	}
	time.Sleep(time.Millisecond) // the replies' round trip
	for _, r := range replies {
		e := r.e
		maybe := e.Unanswered > 0 || e.Progress != nil && e.Progress.Unknown
		switch r.code {
		case 451:
			p := &store.Progress{Attempts: attempts(e) + 1, Unknown: maybe, Pending: e.To}
			if err := c.s.Requeue(ctx, e.Token, p, time.Time{}); err != nil {
				c.say("ERROR", e.ID+": "+err.Error())
			}
		case 550:
			c.finish(ctx, e, &store.Result{ID: e.ID, MaybeDelivered: maybe, Attempts: attempts(e) + 1, Error: "550 refused"})
		default:
			c.finish(ctx, e, &store.Result{ID: e.ID, Delivered: true, MaybeDelivered: maybe, Attempts: attempts(e) + 1,
				Accepted: e.To, Reply: store.Reply{Code: 250, Message: "ok"}})
		}
	}
}

// attempts is how many attempts e had before this claim.
func attempts(e *store.Claimed) int {
	n := e.Unanswered
	if e.Progress != nil {
		n += e.Progress.Attempts
	}
	return n
}

func (c *child) finish(ctx context.Context, e *store.Claimed, r *store.Result) {
	if err := c.s.Finish(ctx, e.Token, r); err != nil {
		c.say("ERROR", e.ID+": "+err.Error())
	}
}

// readBody reads e's body as a session would, and checks it.
func (c *child) readBody(ctx context.Context, e *store.Claimed) bool {
	r, err := c.s.Body(ctx, e.ID)
	if err != nil {
		c.say("ERROR", e.ID+": "+err.Error())
		return false
	}
	defer r.Close()
	got, err := io.ReadAll(r)
	if err != nil || string(got) != body(e.ID) {
		c.say("ERROR", fmt.Sprintf("%s: body %q, %v", e.ID, got, err))
		return false
	}
	return true
}
