package test

import (
	"context"
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"strconv"
	"strings"
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
	crashEmails = flag.Int("crash.emails", 200, "emails in TestSpoolSurvivesSIGKILL, per variant")
	crashKills  = flag.Int("crash.kills", 8, "SIGKILLs in TestSpoolSurvivesSIGKILL, per variant")
)

// TestSpoolSurvivesSIGKILL runs a child process that sends through
// relaytest with a spool, kills it with SIGKILL at random moments, starts
// it again on the same spool, and checks the accounting rule across the
// crashes: every email whose Enqueue returned has exactly one result in the
// spool's records; delivered ones are in the mailbox, failed ones that are
// not unknown outcomes are not; an email is in the mailbox more than once
// only if its result says MaybeDelivered, which the spool sets only when a
// life before had recorded its end of data as written.
func TestSpoolSurvivesSIGKILL(t *testing.T) {
	if os.Getenv("MXRELAY_SPOOL_CHILD") != "" {
		t.Skip("in the child")
	}
	for _, v := range []struct {
		name     string
		retry    bool
		sessions int
	}{
		{"unknown fails", false, 1},
		{"RetryUnknown", true, 1},
		{"3 sessions, 4xx", false, 3},
	} {
		t.Run(v.name, func(t *testing.T) {
			crashRun(t, v.retry, v.sessions)
		})
	}
}

func crashRun(t *testing.T, retryUnknown bool, sessions int) {
	// Latency keeps a window of transactions in flight, so that kills
	// land between end of data and its reply too.
	s := testkit.NewRelay(t, &relaytest.Options{Latency: relaytest.Latency{ToClient: 2 * time.Millisecond}})
	if sessions > 1 {
		// Emails delivered to b and retried for c, and ends of data
		// refused for now, across the kills.
		s.Inject(relaytest.Fault{Kind: relaytest.ReplaceReply, Command: "RCPT", Recipient: "c@example.com", Reply: "450 4.2.1 busy", Times: *crashEmails / 8})
		s.Inject(relaytest.Fault{Kind: relaytest.ReplaceReply, Command: ".", Reply: "451 4.3.0 try again", Times: *crashEmails / 8})
	}
	dir := t.TempDir()
	seed := rand.Uint64()
	r := rand.New(rand.NewPCG(seed, 7))
	t.Logf("seed %d", seed)

	tried := map[string]bool{}    // "T": Enqueue called
	accepted := map[string]bool{} // "A": Enqueue returned the email accepted
	next := 0
	lives := 0
	for kill := 0; ; kill++ {
		last := kill >= *crashKills
		lives++
		cmd := exec.Command(os.Args[0], "-test.run=^TestSpoolChild$", "-test.count=1")
		cmd.Env = append(os.Environ(),
			"MXRELAY_SPOOL_CHILD=1",
			"MXRELAY_SPOOL_URL="+s.URL,
			"MXRELAY_SPOOL_KEY="+s.APIKey,
			"MXRELAY_SPOOL_DIR="+dir,
			"MXRELAY_SPOOL_FROM="+strconv.Itoa(next),
			"MXRELAY_SPOOL_TO="+strconv.Itoa(*crashEmails),
			"MXRELAY_SPOOL_RETRY_UNKNOWN="+strconv.FormatBool(retryUnknown),
			"MXRELAY_SPOOL_SESSIONS="+strconv.Itoa(sessions),
		)
		killAt := func(n int) <-chan time.Time {
			if n != 0 {
				return nil
			}
			return time.After(time.Duration(20+r.IntN(300)) * time.Millisecond)
		}
		if spoolcheck.Life(t, cmd, last, 2*time.Minute, killAt, func(line string) bool {
			verb, id, _ := strings.Cut(line, " ")
			switch verb {
			case "T":
				tried[id] = true
				n, _ := strconv.Atoi(strings.TrimPrefix(id, "e"))
				next = max(next, n+1)
			case "A":
				accepted[id] = true
			case "DONE":
				return true
			}
			return false
		}) {
			break
		}
	}

	// The spool is empty and its records say what became of each email.
	assert.Empty(t, testkit.SpoolFiles(t, dir), "every accepted email has its result")
	results := map[string][]mxrelay.SpoolResult{}
	for _, res := range testkit.SpoolResults(t, dir) {
		results[res.EmailID] = append(results[res.EmailID], res)
	}
	inBox := testkit.MostCopies(s)
	sr := map[string][]spoolcheck.Result{}
	for id, rs := range results {
		for _, r := range rs {
			sr[id] = append(sr[id], spoolcheck.Result{Delivered: r.Delivered, MaybeDelivered: r.MaybeDelivered, Error: r.Error})
		}
	}
	n := spoolcheck.Check(t, spoolcheck.Run{Tried: tried, Accepted: accepted, Results: sr, InBox: inBox, RetryUnknown: retryUnknown})
	t.Logf("%d lives, %d emails tried, %d accepted: %d delivered, %d failed, %d unknown, %d in the mailbox twice or more",
		lives, len(tried), len(accepted), n.Delivered, n.Failed, n.Unknown, n.Dups)
}

// TestSpoolChild is the child process of TestSpoolSurvivesSIGKILL.
func TestSpoolChild(t *testing.T) {
	if os.Getenv("MXRELAY_SPOOL_CHILD") == "" {
		t.Skip("only as TestSpoolSurvivesSIGKILL's child process")
	}
	env := os.Getenv
	from, _ := strconv.Atoi(env("MXRELAY_SPOOL_FROM"))
	to, _ := strconv.Atoi(env("MXRELAY_SPOOL_TO"))
	retry, _ := strconv.ParseBool(env("MXRELAY_SPOOL_RETRY_UNKNOWN"))
	sessions, _ := strconv.Atoi(env("MXRELAY_SPOOL_SESSIONS"))
	c, err := mxrelay.New(env("MXRELAY_SPOOL_URL"), env("MXRELAY_SPOOL_KEY"), testkit.Fast(&mxrelay.Options{
		SpoolDir:              env("MXRELAY_SPOOL_DIR"),
		RetryUnknown:          retry,
		MaxConcurrentSessions: sessions,
		MaxQueueSize:          50,
		MaxEmailsPerSession:   40,
	}))
	require.NoError(t, err)
	say := func(verb, id string) { fmt.Fprintf(os.Stdout, "%s %s\n", verb, id) }
	handles := c.Recovered()
	for i := from; i < to; i++ {
		id := "e" + strconv.Itoa(i)
		say("T", id)
		e := testkit.Mail(id, "b@example.com", "c@example.com")
		e.ID = id
		h, err := c.EnqueueWait(context.Background(), e, mxrelay.WithPriority(mxrelay.Priority(i%4-1)))
		require.NoError(t, err)
		handles = append(handles, h)
		say("A", id)
	}
	for _, h := range handles {
		<-h.Done()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	require.NoError(t, c.Close(ctx))
	say("DONE", "")
}
