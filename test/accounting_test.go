package test

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"runtime/pprof"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mxrelay/mxrelay"
	"github.com/mxrelay/mxrelay/internal/testkit"
	"github.com/mxrelay/mxrelay/relaytest"
)

var accountingEmails = flag.Int("accounting.emails", 500, "emails in TestAccountingUnderRandomFaults")

// randomFault picks one of the relay's faults; data is the verb that
// starts the data, "DATA" or "BDAT", so that every fault can fire.
func randomFault(r *rand.Rand, data string) (relaytest.Fault, bool) {
	switch r.IntN(12) {
	case 0:
		return relaytest.Fault{Kind: relaytest.DropAfterRcpt}, false
	case 1:
		return relaytest.Fault{Kind: relaytest.DropAfterFinalDot}, false
	case 2:
		return relaytest.Fault{Kind: relaytest.DropAfterBytes, Bytes: int64(1 + r.IntN(3000)), FromServer: r.IntN(2) == 0}, false
	case 3:
		return relaytest.Fault{Kind: relaytest.ReplaceReply, Command: "RCPT", Reply: "450 4.2.1 busy"}, false
	case 4:
		return relaytest.Fault{Kind: relaytest.ReplaceReply, Command: "RCPT", Reply: "550 5.1.1 no such user"}, false
	case 5:
		return relaytest.Fault{Kind: relaytest.ReplaceReply, Command: "MAIL", Reply: "421 4.3.2 closing"}, false
	case 6:
		return relaytest.Fault{Kind: relaytest.ReplaceReply, Command: ".", Reply: "451 4.3.0 try again"}, false
	case 7:
		return relaytest.Fault{Kind: relaytest.ReplaceReply, Command: ".", Reply: "554 5.6.0 refused"}, false
	case 8:
		return relaytest.Fault{Kind: relaytest.StallReply, Command: []string{"RCPT", ".", data}[r.IntN(3)]}, false
	case 9:
		return relaytest.Fault{Kind: relaytest.FailChannel}, false
	case 10:
		return relaytest.Fault{Kind: relaytest.ReplaceReply, Command: data, Reply: "451 4.3.0 later"}, false
	default:
		return relaytest.Fault{}, true // restart the relay
	}
}

// TestAccountingUnderRandomFaults checks the accounting rule: every accepted
// email ends exactly once, none is reported delivered unless the upstream
// has it, none that failed without an unknown outcome is in the mailbox.
func TestAccountingUnderRandomFaults(t *testing.T) {
	for _, v := range []struct {
		name     string
		lockstep bool
		sessions int
		chunking bool
	}{
		{"pipelined BDAT", false, 1, true},
		{"pipelined DATA", false, 1, false},
		{"lock-step BDAT", true, 1, true},
		{"3 sessions", false, 3, true},
	} {
		t.Run(v.name, func(t *testing.T) {
			n := accountingRun(t, faultRun{emails: *accountingEmails, faultEvery: 2, chunking: v.chunking, opts: mxrelay.Options{
				CommandTimeout:        300 * time.Millisecond,
				MaxEmailsPerSession:   7,
				MaxReconnectAttempts:  50,
				Retries:               4,
				MaxQueueSize:          *accountingEmails,
				DisablePipelining:     v.lockstep,
				MaxConcurrentSessions: v.sessions,
			}})
			// Pipelined, a cut leaves every email of the window unknown (and
			// failed, RetryUnknown being off): under this storm of faults that
			// can be most of them. Most must still be delivered or maybe
			// delivered.
			assert.Greater(t, n.delivered+n.unknown, *accountingEmails/2, "most emails get through, or may have")
		})
	}
}

// faultRun is a run of emails through a relay with random faults.
type faultRun struct {
	emails     int
	faultEvery int  // one fault per this many emails ended, on average
	chunking   bool // false: the relay hides CHUNKING, the client sends DATA
	// closeAfter, if positive, closes the client with a context already
	// ended once that many emails have ended: the rest are handed back.
	closeAfter int
	opts       mxrelay.Options
	// fault picks the faults; nil: randomFault.
	fault func(r *rand.Rand, data string) (relaytest.Fault, bool)
}

// accountingRun sends r.emails small emails (one or two recipients,
// random priorities) while the relay misbehaves, and checks the
// accounting rule when all have their result.
func accountingRun(t *testing.T, fr faultRun) tally {
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d (emails %d, a fault per %d)", seed, fr.emails, fr.faultEvery)
	r := rand.New(rand.NewPCG(seed, 42))

	data, ro := "BDAT", &relaytest.Options{}
	if !fr.chunking {
		data, ro.HideExtensions = "DATA", []string{"CHUNKING"}
	}
	o := fr.opts
	pick := fr.fault
	if pick == nil {
		pick = randomFault
	}
	s := testkit.NewRelay(t, ro)
	ends := watchEndings(&o)
	c := testkit.NewClient(t, s, &o)

	stop := make(chan struct{})
	var wg sync.WaitGroup
	var stopOnce sync.Once
	halt := func() { stopOnce.Do(func() { close(stop); wg.Wait() }) }
	defer halt()
	wg.Add(1)
	faults := 0
	go func() {
		defer wg.Done()
		rf := rand.New(rand.NewPCG(seed, 7))
		// Faults are tied to progress, not to the clock: at most two armed
		// at a time, and the next one only once fr.faultEvery emails (on
		// average) have ended since the last, so that a slow machine sees
		// the same mix as a fast one.
		next := 0
		for faults < fr.emails/fr.faultEvery {
			select {
			case <-stop:
				return
			case <-time.After(time.Duration(200+rf.IntN(1500)) * time.Microsecond):
			}
			st := c.Stats()
			if len(s.Faults()) >= 2 || int(st.EmailsDelivered+st.EmailsFailed) < next {
				continue
			}
			next += 1 + rf.IntN(2*fr.faultEvery-1)
			f, restart := pick(rf, data)
			if restart {
				s.CloseClientConnections()
			} else {
				s.Inject(f)
			}
			faults++
		}
	}()

	var all []sentEmail
	for i := range fr.emails {
		to := []string{fmt.Sprintf("r%d@example.com", i)}
		if i%2 == 0 {
			to = append(to, fmt.Sprintf("s%d@example.com", i))
		}
		subject := fmt.Sprintf("acct-%d", i)
		opts := []mxrelay.SendOption{mxrelay.WithPriority(mxrelay.Priority(r.IntN(4) - 1))}
		h, err := c.Enqueue(testkit.Mail(subject, to...), opts...)
		require.NoError(t, err)
		all = append(all, sentEmail{subject, to, h})
		if r.IntN(10) == 0 {
			time.Sleep(time.Millisecond) // the load's shape: bursts with gaps, not a wait for anything
		}
	}
	if fr.closeAfter > 0 {
		ended := make(chan struct{}, len(all))
		for _, m := range all {
			go func() {
				<-m.h.Done()
				ended <- struct{}{}
			}()
		}
		timeout := time.NewTimer(5 * time.Minute)
		defer timeout.Stop()
		for n := range fr.closeAfter {
			select {
			case <-ended:
			case <-timeout.C:
				t.Fatalf("%d emails ended, not %d: %+v", n, fr.closeAfter, c.Stats())
			}
		}
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		assert.ErrorIs(t, c.Close(ctx), context.Canceled, "emails handed back")
	}
	waitAll(t, 5*time.Minute, all)
	halt()
	s.ClearFaults()
	n := checkAccounting(t, c, s, all, ends, o.RetryUnknown)
	t.Logf("%d emails: %v; %d faults; %d relay connections, %d sessions",
		len(all), n, faults, s.Stats().Connections, s.Stats().Channels)
	return n
}

// sentEmail is an email a test enqueued, under a subject unique in its
// run, so that the mailbox can be matched to it.
type sentEmail struct {
	subject string
	to      []string
	h       *mxrelay.Handle
}

// waitAll waits up to d for every email's result, and dumps the
// goroutines and fails the test if one has none by then.
func waitAll(t testing.TB, d time.Duration, all []sentEmail) {
	t.Helper()
	timeout := time.NewTimer(d)
	defer timeout.Stop()
	for _, m := range all {
		select {
		case <-m.h.Done():
		case <-timeout.C:
			pprof.Lookup("goroutine").WriteTo(os.Stderr, 2)
			t.Fatalf("email %s has no result after %v", m.subject, d)
		}
	}
}

// endings counts, by email ID, the events that end an email
// (EventEmailProcessed, EventEmailFailed): one each, for one Result each.
type endings struct {
	mu      sync.Mutex
	n       map[string]int
	retries map[string][]string // why each attempt before the last failed
}

// watchEndings sets o.OnEvent (and an EventBuffer that loses nothing in
// these runs) to count the endings.
func watchEndings(o *mxrelay.Options) *endings {
	e := &endings{n: map[string]int{}, retries: map[string][]string{}}
	o.EventBuffer = 1 << 20
	o.OnEvent = func(ev mxrelay.Event) {
		switch ev.Type {
		case mxrelay.EventEmailProcessed, mxrelay.EventEmailFailed:
			e.mu.Lock()
			e.n[ev.EmailID]++
			e.mu.Unlock()
		case mxrelay.EventEmailRetrying:
			e.mu.Lock()
			e.retries[ev.EmailID] = append(e.retries[ev.EmailID], fmt.Sprintf("attempt %d in %s: %v", ev.Attempt, ev.SessionID, ev.Err))
			e.mu.Unlock()
		}
	}
	return e
}

// history says why an email's earlier attempts failed, for a failing
// assertion's message.
func (e *endings) history(id string) string {
	if e == nil {
		return "no events recorded"
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	return strings.Join(e.retries[id], "; ")
}

// tally is the split of a run's results.
type tally struct {
	delivered  int // Err == nil
	failed     int // refused, or retries exhausted
	unknown    int // failed with ErrUnknownOutcome
	givenBack  int // failed with ErrClosed: handed back by Close
	maybe      int // MaybeDelivered, delivered or not
	duplicates int // copies in the mailbox beyond the first, per recipient
}

func (n tally) String() string {
	return fmt.Sprintf("%d delivered, %d failed, %d unknown, %d given back (%d maybe delivered, %d duplicates)",
		n.delivered, n.failed, n.unknown, n.givenBack, n.maybe, n.duplicates)
}

func (n *tally) add(o tally) {
	n.delivered += o.delivered
	n.failed += o.failed
	n.unknown += o.unknown
	n.givenBack += o.givenBack
	n.maybe += o.maybe
	n.duplicates += o.duplicates
}

// checkAccounting checks the accounting rule for a run of c, whose only
// emails were all, which have their results. It closes c first, so that
// its last events are in; ends may be nil when the run did not count them.
//
// The rule: accepted = delivered + failed + unknown + given back; each
// email has exactly one Result; it is delivered only if the upstream has
// it (a 2xx to its end of data), unknown only with MaybeDelivered; the
// mailbox holds a failed or given-back email zero times, a delivered one
// at least once, and more than once only if it was maybe delivered and
// retried (retryUnknown); one that failed with an unknown outcome, zero or
// once.
func checkAccounting(t testing.TB, c *mxrelay.Client, s *relaytest.Server, all []sentEmail, ends *endings, retryUnknown bool) tally {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	require.NoError(t, c.Close(ctx))

	// Count what the upstream has, per (subject, recipient).
	got := map[string]int{}
	for _, msg := range s.Mailbox() {
		for _, rcpt := range msg.To {
			got[testkit.SubjectOf(msg.Data)+" "+rcpt]++
		}
	}
	var n tally
	outcomes := map[mxrelay.Outcome]int{}
	for _, m := range all {
		res, err := m.h.Wait(ctx)
		require.NotNil(t, res, m.subject)
		outcomes[res.Outcome]++
		assert.Equal(t, err == nil, res.Outcome == mxrelay.OutcomeDelivered, "%s: outcome %v, err %v", m.subject, res.Outcome, err)
		accepted := map[string]bool{}
		for _, a := range res.Accepted {
			accepted[a] = true
		}
		switch {
		case err == nil:
			n.delivered++
			assert.NotEmpty(t, res.Accepted, "%s delivered to someone", m.subject)
		case errors.Is(err, mxrelay.ErrUnknownOutcome):
			n.unknown++
			assert.True(t, res.MaybeDelivered, "%s: an unknown outcome is maybe delivered", m.subject)
		case errors.Is(err, mxrelay.ErrClosed):
			n.givenBack++
		default:
			n.failed++
			if !retryUnknown {
				assert.False(t, res.MaybeDelivered, "%s: without RetryUnknown, an email maybe delivered ends unknown (%v)", m.subject, err)
			}
		}
		if err != nil {
			assert.Empty(t, res.Accepted, "%s: an email delivered to someone is not failed", m.subject)
		}
		if res.MaybeDelivered {
			n.maybe++
		}
		if ends != nil {
			ends.mu.Lock()
			assert.Equal(t, 1, ends.n[m.h.ID()], "%s ends once", m.subject)
			ends.mu.Unlock()
		}
		copies := 1 // the most copies an email maybe delivered may leave
		if retryUnknown {
			copies = res.Attempts
		}
		for _, rcpt := range m.to {
			k := got[m.subject+" "+rcpt]
			n.duplicates += max(k-1, 0)
			switch {
			case accepted[rcpt] && !res.MaybeDelivered:
				assert.Equal(t, 1, k, "%s to %s delivered once (%d attempts, last in %s; %s)", m.subject, rcpt, res.Attempts, res.SessionID, ends.history(m.h.ID()))
			case accepted[rcpt]:
				assert.GreaterOrEqual(t, k, 1, "%s to %s reported delivered, so the mailbox has it", m.subject, rcpt)
				assert.LessOrEqual(t, k, copies, "%s to %s", m.subject, rcpt)
			case !res.MaybeDelivered:
				assert.Equal(t, 0, k, "%s to %s not delivered and no unknown outcome: not in the mailbox (%v)", m.subject, rcpt, err)
			default:
				assert.LessOrEqual(t, k, copies, "%s to %s maybe delivered (%v)", m.subject, rcpt, err)
			}
		}
	}
	st := c.Stats()
	assert.EqualValues(t, len(all), st.EmailsQueued)
	assert.EqualValues(t, n.delivered, st.EmailsDelivered)
	assert.EqualValues(t, n.failed+n.unknown+n.givenBack, st.EmailsFailed)
	assert.EqualValues(t, outcomes[mxrelay.OutcomeUnknown], st.EmailsUnknown, "unknown by Outcome")
	assert.EqualValues(t, outcomes[mxrelay.OutcomeHandedBack], st.EmailsHandedBack, "handed back by Outcome")
	assert.EqualValues(t, n.maybe, st.EmailsMaybeDelivered)
	if !retryUnknown {
		// Without RetryUnknown the last attempt of an email maybe
		// delivered is the unknown one: its Outcome says so.
		assert.Equal(t, n.unknown, outcomes[mxrelay.OutcomeUnknown], "unknown by error and by Outcome")
	}
	assert.Zero(t, st.QueueSize)
	assert.Zero(t, st.InFlight)
	if ends != nil {
		assert.Zero(t, st.EventsDropped)
	}
	return n
}
