package test

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"io"
	"strconv"
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

var sweepEvery = flag.Bool("sweep.every", false, "TestCutAtEveryByte cuts after every byte, inside the bodies too")

var sweepSizesFlag = flag.String("sweep.sizes", "0,1024,40960,307200,-1",
	"body sizes of TestCutAtEveryByte's batch, comma-separated; -1 is a body of dot-leading lines")

// sweepSizes are the body sizes of the swept batch, by default: almost
// nothing, 1 KiB, 40 KiB, 300 KiB (two BDAT chunks, several frames), and a
// short body made of dot-leading lines. .ci/run also sweeps every byte of
// a batch of small ones (-sweep.sizes 0,100,400,1000,-1), whose client
// bytes are few enough to cut after each.
var sweepSizes = sync.OnceValue(func() []int {
	var sizes []int
	for _, f := range strings.Split(*sweepSizesFlag, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil {
			panic(fmt.Sprintf("-sweep.sizes: %v", err))
		}
		sizes = append(sizes, n)
	}
	return sizes
})

// sweepBodies are the bodies of the swept batch, after their header.
var sweepBodies = sync.OnceValue(func() []string {
	var bodies []string
	for _, size := range sweepSizes() {
		var b strings.Builder
		if size < 0 {
			b.WriteString(".\r\n..\r\n.hidden line\r\n. \r\n.\r\n")
		}
		for line := 0; b.Len() < size; line++ {
			fmt.Fprintf(&b, "%06d %s\r\n", line, strings.Repeat(string(rune('a'+line%26)), 64))
		}
		bodies = append(bodies, b.String())
	}
	return bodies
})

// sweepTag tags the recorded batch; the tag of every run is as long.
const sweepTag = "recorded"

// sweepEmails returns the swept batch, its subjects tagged with tag. Every
// tag must have the same length, so that every run writes the same bytes
// at the same offsets as the recorded one.
func sweepEmails(tag string) ([]mxrelay.Email, []string) {
	var emails []mxrelay.Email
	var subjects []string
	for i, body := range sweepBodies() {
		subject := fmt.Sprintf("%s-%d", tag, i)
		header := "From: a@example.com\r\nSubject: " + subject + "\r\n\r\n"
		to := []string{fmt.Sprintf("r%d@example.com", i), fmt.Sprintf("s%d@example.com", i)}
		emails = append(emails, mxrelay.Email{From: "a@example.com", To: to, Body: io.MultiReader(strings.NewReader(header), strings.NewReader(body))})
		subjects = append(subjects, subject)
	}
	return emails, subjects
}

// sweepOptions are the client's options for the sweep: one session for the
// whole batch, quick retries, and enough of them that whatever is not
// unknown is delivered in the end.
func sweepOptions(lockstep bool) *mxrelay.Options {
	return &mxrelay.Options{
		DisablePipelining:    lockstep,
		MaxEmailsPerSession:  len(sweepSizes()),
		BatchWait:            10 * time.Second,
		Retries:              10,
		RetryInterval:        time.Millisecond,
		MaxRetryInterval:     2 * time.Millisecond,
		ReconnectInterval:    time.Millisecond,
		MaxReconnectInterval: 2 * time.Millisecond,
		MaxReconnectAttempts: 10,
	}
}

// sweepRun sends the batch through s with o and checks the accounting rule.
func sweepRun(t *testing.T, s *relaytest.Server, o *mxrelay.Options, tag string) ([]sentEmail, tally) {
	t.Helper()
	ends := watchEndings(o)
	c := testkit.NewClient(t, s, o)
	emails, subjects := sweepEmails(tag)
	var all []sentEmail
	for i, e := range emails {
		h, err := c.Enqueue(e)
		require.NoError(t, err)
		all = append(all, sentEmail{subjects[i], e.To, h})
	}
	// Close drains the queue, retries included, and ends BatchWait for the
	// sessions that retry; nothing may be handed back.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	assert.NoError(t, c.Close(ctx))
	waitAll(t, time.Second, all)
	return all, checkAccounting(t, c, s, all, ends, false)
}

// traffic is the SMTP stream of one channel, both ways.
type traffic struct {
	up, down []byte // client to upstream, upstream to client
}

// firstChannel records the SMTP traffic of a relay's first channel, for
// relaytest.Options.OnSMTPData.
type firstChannel struct {
	mu     sync.Mutex
	tr     traffic
	others bool // another channel carried bytes
}

func (f *firstChannel) on(d relaytest.SMTPData) {
	f.mu.Lock()
	defer f.mu.Unlock()
	switch {
	case d.Conn != 1 || d.Channel != 1:
		f.others = true
	case d.FromServer:
		f.tr.down = append(f.tr.down, d.Data...)
	default:
		f.tr.up = append(f.tr.up, d.Data...)
	}
}

func (f *firstChannel) traffic() (traffic, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.tr, f.others
}

// recordSweep sends the batch once with no fault and returns its one
// channel's traffic.
func recordSweep(t *testing.T, m sweepMode) traffic {
	var rec firstChannel
	s := testkit.NewRelay(t, &relaytest.Options{HideExtensions: m.hide, OnSMTPData: rec.on})
	_, n := sweepRun(t, s, sweepOptions(m.lockstep), sweepTag)
	require.Equal(t, len(sweepSizes()), n.delivered)
	tr, others := rec.traffic()
	require.False(t, others, "the batch went in one session")
	return tr
}

// smtpStep is a command of the recorded stream with its reply.
type smtpStep struct {
	verb       string
	cmd, reply [2]int // offsets [start, end) in the up and down streams
	body       [2]int // a BDAT chunk or DATA body after the command line; empty for none
	email      int    // index of the email in the batch (from its MAIL); -1 before the first
	endOfData  bool   // BDAT ... LAST, or the body of DATA
}

// end is where the step ends in the up stream, body included.
func (st smtpStep) end() int { return max(st.cmd[1], st.body[1]) }

// parseTraffic splits a recorded session into commands, their bodies and
// their replies, which come in the same order.
func parseTraffic(t *testing.T, tr traffic) []smtpStep {
	var steps []smtpStep
	up := tr.up
	email := -1
	for p := 0; p < len(up); {
		i := bytes.Index(up[p:], []byte("\r\n"))
		require.GreaterOrEqual(t, i, 0, "a command line ends at %d", p)
		line := string(up[p : p+i])
		st := smtpStep{cmd: [2]int{p, p + i + 2}}
		p += i + 2
		verb, arg, _ := strings.Cut(line, " ")
		st.verb = strings.ToUpper(verb)
		if st.verb == "MAIL" {
			email++
		}
		st.email = email
		switch st.verb {
		case "BDAT":
			f := strings.Fields(arg)
			size, err := strconv.Atoi(f[0])
			require.NoError(t, err)
			st.body = [2]int{p, p + size}
			st.endOfData = len(f) == 2
			p += size
		case "DATA":
			// The body follows the 354; the reply paired with DATA below is
			// the 354, and the end of data gets its own step.
			end := bytes.Index(up[p:], []byte("\r\n.\r\n"))
			require.GreaterOrEqual(t, end, 0)
			steps = append(steps, st)
			st = smtpStep{verb: ".", email: email, endOfData: true, body: [2]int{p, p + end + 5}}
			st.cmd = st.body
			p += end + 5
		}
		steps = append(steps, st)
	}
	// Replies, in order: the greeting, then one per step.
	down := tr.down
	var replies [][2]int
	for q := 0; q < len(down); {
		start := q
		for {
			i := bytes.Index(down[q:], []byte("\r\n"))
			require.GreaterOrEqual(t, i, 0, "a reply line ends at %d", q)
			cont := i >= 4 && down[q+3] == '-'
			q += i + 2
			if !cont {
				break
			}
		}
		replies = append(replies, [2]int{start, q})
	}
	require.Len(t, replies, len(steps)+1, "a reply per command, and the greeting")
	for i := range steps {
		steps[i].reply = replies[i+1]
	}
	return steps
}

// sweepPoints returns the cut points of a stream of n bytes: with every,
// each of 0 to n. Otherwise the offsets next to a boundary (marks: where
// a line or a body starts or ends; a cut just before the mark, exactly at
// it, or just after), and inside bodies one offset in 64 KiB.
func sweepPoints(n int, marks []int, bodies [][2]int, every bool) []int {
	const near, bodyStride = 1, 64 << 10
	var out []int
	for k := 0; k <= n; k++ {
		keep := every || k == n
		for _, m := range marks {
			keep = keep || (k >= m-near && k <= m+near)
		}
		for _, b := range bodies {
			keep = keep || (k >= b[0] && k < b[1] && (k-b[0])%bodyStride == 0)
		}
		if keep {
			out = append(out, k)
		}
	}
	return out
}

// lineStarts returns the offsets just after each LF of b[from:to].
func lineStarts(b []byte, from, to int) []int {
	var out []int
	for i := from; i < to; i++ {
		if b[i] == '\n' {
			out = append(out, i+1)
		}
	}
	return out
}

// sweepMode is how the client sends the swept batch.
type sweepMode struct {
	name     string
	lockstep bool     // Options.DisablePipelining
	hide     []string // extensions the relay hides
	// repliesOnlyEvery sweeps the replies only with -sweep.every.
	repliesOnlyEvery bool
}

var sweepModes = []sweepMode{
	{name: "pipelined BDAT"},
	{name: "lock-step BDAT", lockstep: true},
	// DATA dot-stuffs the body, in the client's bytes. Its replies differ
	// from BDAT's lock-step ones only by the 354s: swept with -sweep.every,
	// to keep the default run under a minute.
	{name: "pipelined DATA", hide: []string{"CHUNKING"}, repliesOnlyEvery: true},
}

// TestCutAtEveryByte records the SMTP traffic of a batch of five emails
// sent in one session, then sends the batch again, once per byte of that
// traffic in each direction, with the relay cutting the WebSocket after
// that byte (relaytest.DropAfterBytes), and checks the accounting rule
// after each run.
//
// The unit is the byte of the channel's SMTP stream, which is what
// DropAfterBytes counts (and relaytest.Options.OnSMTPData records): not
// the bytes of the WebSocket frames, whose headers, JSON envelopes and
// control messages (AUTHENTICATE, SMTP_CHANNEL_OPEN, ...) fall between
// SMTP bytes and are not swept here. Cuts during authentication and
// channel set-up are other faults' business (DropAfterAuthenticate,
// IgnoreChannel, FailChannel).
//
// A run costs about 0.1 s under -race (the batch is 350 KB), so the
// default run does not cut after every byte: it cuts next to every
// boundary (the byte before, at and after the start and end of each
// command line, reply line and body, of each dot-leading body line, and
// of the final "." of DATA), and one byte in 64 KiB inside bodies: about
// 230 runs per mode, 130 for DATA (see sweepModes). A cut inside a line
// is not different, for the client, from one a byte after the line's
// start or before its end, nor is one inside a body from another.
// -sweep.every cuts after every byte: some 1,200 runs per mode for the
// replies, minutes, and 350,000 per mode for the client's bytes, hours
// under -race.
//
// Beyond the rule, the recorded traffic says when an email cannot be
// unknown: the client writes an end of data only after the replies it
// waits for (in lock-step, the previous command's; for DATA, the 354;
// pipelined BDAT, EHLO's), so a cut before that reply was complete, or
// before the relay had the whole command it answers, leaves that email
// not sent, hence retried and delivered. Conversely, a cut in the
// replies after an email's whole reply to its end of data and the whole
// reply after it (RSET's or QUIT's, which confirms the 250 was in step)
// leaves it delivered at the first attempt: the relay queues the bytes
// before the cut, and on loopback they reach the client before the reset
// does. A cut between the two leaves it unknown. And
// since Retries is ample and the only fault is the one cut, every email
// is delivered or unknown: none fails otherwise.
func TestCutAtEveryByte(t *testing.T) {
	if testing.Short() {
		t.Skip("the sweep sends thousands of batches")
	}
	for _, mode := range sweepModes {
		t.Run(mode.name, func(t *testing.T) {
			t.Parallel() // each mode is CPU-bound and single-threaded, mostly
			tr := recordSweep(t, mode)
			steps := parseTraffic(t, tr)
			var bodies [][2]int
			upMarks := []int{0}
			// gate[i]: the bytes of each stream that must have passed before
			// the client may write email i's end of data.
			gateUp := make([]int, len(sweepSizes()))
			gateDown := make([]int, len(sweepSizes()))
			// answered[i]: the end of the reply that confirms email i's 250.
			answered := make([]int, len(sweepSizes()))
			ehlo := -1
			for j, st := range steps {
				upMarks = append(upMarks, st.cmd[0], st.cmd[1])
				if st.body != [2]int{} {
					bodies = append(bodies, st.body)
					upMarks = append(upMarks, st.body[0], st.body[1])
					for _, l := range lineStarts(tr.up, st.body[0], st.body[1]) {
						if l < len(tr.up) && tr.up[l] == '.' {
							upMarks = append(upMarks, l, l+1) // a dot-leading line, stuffed for DATA
						}
					}
					if st.verb == "." {
						upMarks = append(upMarks, st.body[1]-3) // the final ".\r\n"
					}
				}
				if st.verb == "EHLO" {
					ehlo = j
				}
				if !st.endOfData {
					continue
				}
				prev := steps[j-1]
				if !mode.lockstep && st.verb == "BDAT" {
					prev = steps[ehlo]
				}
				gateUp[st.email] = prev.end()
				gateDown[st.email] = prev.reply[1]
				// Delivered once a reply only its own command gets is in
				// too (the next DATA's 354, QUIT's 221): relaytest's
				// go-smtp words MAIL, RCPT and RSET alike (2.0.0), so an
				// RSET's 250 could be MAIL's, one line late, and confirms
				// nothing.
				k := j + 1
				for k < len(steps) && steps[k].verb != "DATA" && steps[k].verb != "QUIT" {
					k++
				}
				require.Less(t, k, len(steps), "a DATA or QUIT follows every end of data")
				answered[st.email] = steps[k].reply[1]
			}
			require.GreaterOrEqual(t, ehlo, 0)
			for _, dir := range []struct {
				name       string
				fromServer bool
				points     []int
				gate       []int
			}{
				{"to server", false, sweepPoints(len(tr.up), upMarks, bodies, *sweepEvery), gateUp},
				{"to client", true, sweepPoints(len(tr.down), append([]int{0}, lineStarts(tr.down, 0, len(tr.down))...), nil, *sweepEvery), gateDown},
			} {
				if dir.fromServer && mode.repliesOnlyEvery && !*sweepEvery {
					continue
				}
				var total tally
				start := time.Now()
				for _, k := range dir.points {
					tag := fmt.Sprintf("%c%07d", dir.name[3], k)
					t.Run(fmt.Sprintf("%s/after=%d", dir.name, k), func(t *testing.T) {
						var first firstChannel
						s := testkit.NewRelay(t, &relaytest.Options{HideExtensions: mode.hide, OnSMTPData: first.on})
						s.Inject(relaytest.Fault{Kind: relaytest.DropAfterBytes, Bytes: int64(k), FromServer: dir.fromServer})
						all, n := sweepRun(t, s, sweepOptions(mode.lockstep), tag)
						assert.Empty(t, s.Faults(), "the first channel took the fault")
						// The first channel carried the recorded bytes, up to
						// the cut, which came after exactly k: the offsets
						// (and the gates below) mean what the recording says.
						cut, _ := first.traffic()
						want := traffic{up: bytes.ReplaceAll(tr.up, []byte(sweepTag+"-"), []byte(tag+"-")), down: tr.down}
						got := map[bool][]byte{false: cut.up, true: cut.down}[dir.fromServer]
						assert.Len(t, got, min(k, len(map[bool][]byte{false: want.up, true: want.down}[dir.fromServer])))
						assert.True(t, bytes.HasPrefix(want.up, cut.up), "the client's bytes are the recorded ones")
						assert.True(t, bytes.HasPrefix(want.down, cut.down), "the replies are the recorded ones")
						assert.Zero(t, n.failed+n.givenBack, "one cut and ample retries: delivered or unknown")
						for i, m := range all {
							if dir.fromServer && k >= answered[i] {
								res, err := m.h.Wait(testkit.Ctx(t))
								assert.NoError(t, err, "%s: its 250 came before the cut", m.subject)
								assert.False(t, res.MaybeDelivered, m.subject)
								assert.Equal(t, 1, res.Attempts, m.subject)
							}
							if k < dir.gate[i] {
								res, err := m.h.Wait(testkit.Ctx(t))
								assert.NoError(t, err, "%s: cut before its end of data could be written", m.subject)
								assert.False(t, res.MaybeDelivered, m.subject)
							}
						}
						total.add(n)
					})
				}
				t.Logf("%s, cut %s: %d cut points (of %d bytes) in %v: %v", mode.name, dir.name, len(dir.points),
					map[bool]int{false: len(tr.up), true: len(tr.down)}[dir.fromServer], time.Since(start).Round(time.Millisecond), total)
			}
		})
	}
}
