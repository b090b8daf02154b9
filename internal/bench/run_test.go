package bench

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mxrelay/mxrelay/internal/smtpsink"
	"github.com/mxrelay/mxrelay/relaytest"
)

func newEnv(t *testing.T, rtt time.Duration, up Upstream) *Env {
	t.Helper()
	e, err := NewEnv(rtt, up)
	require.NoError(t, err)
	t.Cleanup(e.Close)
	return e
}

func testMail(t *testing.T) Mail {
	t.Helper()
	m, err := NewMail(1024, 2)
	require.NoError(t, err)
	return m
}

func checkSample(t *testing.T, s Sample, n int) {
	t.Helper()
	assert.Equal(t, n, s.N)
	assert.Len(t, s.Latency, n)
	assert.Positive(t, s.Elapsed)
	for _, l := range s.Latency {
		assert.Positive(t, l)
		assert.LessOrEqual(t, l, s.Elapsed)
	}
}

// TestEveryPathDelivers runs each path once with a few emails, at an RTT
// that makes the proxy and the relay's latency take part.
func TestEveryPathDelivers(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	m := testMail(t)
	for _, up := range []Upstream{Chunking, PipeliningOnly} {
		e := newEnv(t, 2*time.Millisecond, up)
		for _, cl := range []Client{{}, {JSON: true}} {
			c, err := e.NewClient(cl, 10)
			require.NoError(t, err)
			s, err := RunOurs(ctx, c, e.Sink, m, 10)
			closeClient(c)
			require.NoError(t, err, "%v %+v", up, cl)
			checkSample(t, s, 10)
		}
		conn, err := e.DialRelay(ctx, true)
		require.NoError(t, err)
		for range 2 { // a second session on the same WebSocket
			s, err := RunLockstep(ctx, RelayChannels(conn), e.Sink, m, 3)
			require.NoError(t, err)
			checkSample(t, s, 3)
		}
		conn.Close(1000, "")
		s, err := RunLockstep(ctx, e.Direct(), e.Sink, m, 3)
		require.NoError(t, err)
		checkSample(t, s, 3)
	}
}

// TestFailedEmailsFailTheRun: a recipient refused by the upstream fails
// the run, which gives no figure.
func TestFailedEmailsFailTheRun(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	m := testMail(t)
	e := newEnv(t, 0, Chunking)
	e.Relay.Inject(relaytest.Fault{Kind: relaytest.ReplaceReply, Command: "RCPT", Recipient: m.To[1], Reply: "550 5.1.1 no such user", Times: -1})
	c, err := e.NewClient(Client{}, 5)
	require.NoError(t, err)
	defer closeClient(c)
	s, err := RunOurs(ctx, c, e.Sink, m, 5)
	require.ErrorContains(t, err, "5 of 5 emails failed") // delivered, but not to every recipient
	assert.Zero(t, s.N)

	e.Relay.Inject(relaytest.Fault{Kind: relaytest.ReplaceReply, Command: "MAIL", Reply: "451 4.3.0 try later"})
	_, err = RunLockstep(ctx, e.Direct(), e.Sink, m, 2)
	require.NoError(t, err, "the fault is in the relay: TCP does not see it")
	conn, err := e.DialRelay(ctx, true)
	require.NoError(t, err)
	defer conn.Close(1000, "")
	_, err = RunLockstep(ctx, RelayChannels(conn), e.Sink, m, 2)
	require.ErrorContains(t, err, "451")
}

func TestExpectDelta(t *testing.T) {
	e := newEnv(t, 0, Chunking)
	before := e.Sink.Stats()
	require.NoError(t, expectDelta(e.Sink, before, 0, 100))
	assert.ErrorContains(t, expectDelta(e.Sink, before, 1, 100), "received 0 messages")
}

func TestQueueHeap(t *testing.T) {
	per, err := QueueHeap(Client{}, testMail(t), 500)
	require.NoError(t, err)
	assert.Positive(t, per)
	assert.Less(t, per, 64e3, "a queued email holds a reader, not its body")
}

func TestLargeMessage(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	m := testMail(t)
	e := newEnv(t, 0, Chunking)
	c, err := e.NewClient(Client{}, 1)
	require.NoError(t, err)
	defer closeClient(c)
	l, err := LargeOurs(ctx, c, e, m, 1<<20)
	require.NoError(t, err)
	assert.Equal(t, int64(1<<20), l.Size)
	assert.Positive(t, l.MiBps())
	l, err = LargeDirect(ctx, e.Direct(), e, m, 1<<20)
	require.NoError(t, err)
	assert.Positive(t, l.MiBps())
}

func TestMedianAndPercentile(t *testing.T) {
	assert.True(t, math.IsNaN(Median(nil)))
	assert.Equal(t, 2.0, Median([]float64{3, 1, 2}))
	assert.Equal(t, 2.5, Median([]float64{4, 1, 3, 2}))
	var ds []time.Duration
	for i := 100; i >= 1; i-- {
		ds = append(ds, time.Duration(i))
	}
	assert.Equal(t, time.Duration(50), Percentile(ds, 50))
	assert.Equal(t, time.Duration(99), Percentile(ds, 99))
	assert.Equal(t, time.Duration(100), Percentile(ds, 100))
	assert.Equal(t, time.Duration(7), Percentile([]time.Duration{7}, 99))
	assert.Zero(t, Percentile(nil, 50))
}

// testCtx bounds a test's sends.
func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// relayDial is a Dialer of channels on a WebSocket to e's relay, closed
// when the test ends.
func relayDial(t *testing.T, ctx context.Context, e *Env) Dialer {
	t.Helper()
	dial, end, err := relayDialer(ctx, e)
	require.NoError(t, err)
	t.Cleanup(end)
	return dial
}

// checkUsage: a run's figures are there and positive; their size is for
// the benchmarks.
func checkUsage(t *testing.T, u Usage) {
	t.Helper()
	if processCPU() >= 0 { // unix
		assert.Positive(t, u.CPU, "CPU time")
	}
	assert.Positive(t, u.Mallocs, "allocations")
	assert.Positive(t, u.Bytes, "bytes allocated")
}

// TestFloorDelivers sends more emails than the floor's window, to two
// recipients each, through the relay at an RTT, in binary frames.
func TestFloorDelivers(t *testing.T) {
	ctx := testCtx(t)
	m := testMail(t)
	e := newEnv(t, 2*time.Millisecond, Chunking)
	dial := relayDial(t, ctx, e)
	n := FloorWindow + 44
	s, err := RunFloor(ctx, dial, e.Sink, m, n)
	require.NoError(t, err)
	checkSample(t, s, n)
	checkUsage(t, s.Usage)
	s, err = RunFloor(ctx, dial, e.Sink, m, 3) // a second session on the same WebSocket
	require.NoError(t, err)
	checkSample(t, s, 3)
}

// TestFloorFailsOnARefusedEmail: a refusal of any of an email's commands
// by the relay fails the floor's run, which gives no figure, and so does
// an upstream without CHUNKING.
func TestFloorFailsOnARefusedEmail(t *testing.T) {
	ctx := testCtx(t)
	m := testMail(t)
	e := newEnv(t, 0, Chunking)
	dial := relayDial(t, ctx, e)
	for _, tc := range []struct {
		name  string
		fault relaytest.Fault
		want  string
	}{
		{"MAIL", relaytest.Fault{Command: "MAIL", Reply: "451 4.3.0 try later"}, "email 1: MAIL answered 451"},
		{"second RCPT", relaytest.Fault{Command: "RCPT", Recipient: m.To[1], Reply: "550 5.1.1 no such user"}, "email 1: RCPT answered 550"},
		{"end of data", relaytest.Fault{Command: ".", Reply: "554 5.7.1 rejected"}, "email 1: BDAT answered 554"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.fault.Kind = relaytest.ReplaceReply
			e.Relay.Inject(tc.fault)
			s, err := RunFloor(ctx, dial, e.Sink, m, 5)
			require.ErrorContains(t, err, tc.want)
			assert.Zero(t, s.N)
		})
	}
	_, err := RunFloor(ctx, dial, e.Sink, m, 1)
	require.NoError(t, err, "each fault fired once")

	p := newEnv(t, 0, PipeliningOnly)
	_, err = RunFloor(ctx, relayDial(t, ctx, p), p.Sink, m, 1)
	require.ErrorContains(t, err, "no CHUNKING")
}

// fakeSink is a scripted SMTP server for one session on loopback: it
// answers each command with answer(email, verb), "250 ok" when that
// returns "", and counts the BDAT chunks it read. It offers ehlo's
// extensions.
type fakeSink struct {
	ehlo   string
	answer func(email int, verb string) string
	msgs   atomic.Int64
	bytes  atomic.Int64
	done   chan struct{}
}

func (f *fakeSink) Stats() smtpsink.Stats {
	return smtpsink.Stats{Messages: f.msgs.Load(), Bytes: f.bytes.Load()}
}

// dial accepts one connection on a listener of its own and serves it until
// it ends; done closes then.
func (f *fakeSink) dial(ctx context.Context) (net.Conn, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	defer ln.Close()
	var d net.Dialer
	client, err := d.DialContext(ctx, "tcp", ln.Addr().String())
	if err != nil {
		return nil, err
	}
	server, err := ln.Accept()
	if err != nil {
		client.Close()
		return nil, err
	}
	f.done = make(chan struct{})
	go f.serve(server)
	return client, nil
}

func (f *fakeSink) serve(conn net.Conn) {
	defer close(f.done)
	defer conn.Close()
	r := bufio.NewReader(conn)
	say := func(s string) bool { _, err := io.WriteString(conn, s); return err == nil }
	if !say("220 fake\r\n") {
		return
	}
	for email := 0; ; {
		line, err := r.ReadString('\n')
		if err != nil {
			return
		}
		verb, arg, _ := strings.Cut(strings.TrimSuffix(line, "\r\n"), " ")
		reply := ""
		switch verb {
		case "EHLO":
			reply = "250-fake\r\n" + f.ehlo
		case "QUIT":
			say("221 bye\r\n")
			return
		case "BDAT":
			size, _, _ := strings.Cut(arg, " ")
			n, _ := strconv.ParseInt(size, 10, 64)
			if _, err := io.CopyN(io.Discard, r, n); err != nil {
				return
			}
			f.msgs.Add(1)
			f.bytes.Add(n)
			reply = f.answer(email, verb)
			email++
		default:
			reply = f.answer(email, verb)
		}
		if reply == "" {
			reply = "250 ok\r\n"
		}
		if !say(reply) {
			return
		}
	}
}

// TestFloorChecksEveryReply runs the floor against a scripted server:
// every reply of every email counts, a stray or malformed one fails the
// run.
func TestFloorChecksEveryReply(t *testing.T) {
	m := testMail(t)
	const full = "250-PIPELINING\r\n250 CHUNKING\r\n"
	for _, tc := range []struct {
		name   string
		ehlo   string
		answer func(email int, verb string) string
		want   string // "" the run succeeds
	}{
		{"every reply 250", full, func(int, string) string { return "" }, ""},
		{"multi-line replies", full, func(int, string) string { return "250-one\r\n250 two\r\n" }, ""},
		{"a RCPT refused in the middle", full, func(i int, v string) string {
			return map[bool]string{true: "550 no\r\n"}[i == 299 && v == "RCPT"]
		}, "email 300: RCPT answered 550"},
		{"a BDAT refused", full, func(i int, v string) string {
			return map[bool]string{true: "452 full\r\n"}[i == 7 && v == "BDAT"]
		}, "email 8: BDAT answered 452"},
		{"a duplicated reply", full, func(i int, v string) string {
			return map[bool]string{true: "250 ok\r\n250 ok\r\n"}[i == 2 && v == "MAIL"]
		}, "QUIT: reply 250, want 221"},
		{"a malformed reply", full, func(i int, v string) string {
			return map[bool]string{true: "25 ok\r\n"}[i == 5 && v == "MAIL"]
		}, `email 6: malformed reply "25 ok"`},
		{"a reply whose lines disagree", full, func(i int, v string) string {
			return map[bool]string{true: "250-a\r\n550 b\r\n"}[i == 1 && v == "BDAT"]
		}, "email 2: a reply's lines have codes 250 and 550"},
		{"no CHUNKING", "250 PIPELINING\r\n", nil, "no CHUNKING"},
		{"no PIPELINING", "250 CHUNKING\r\n", nil, "no PIPELINING"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := testCtx(t)
			f := &fakeSink{ehlo: tc.ehlo, answer: tc.answer}
			n := FloorWindow + 100
			s, err := RunFloor(ctx, f.dial, f, m, n)
			<-f.done
			if tc.want == "" {
				require.NoError(t, err)
				checkSample(t, s, n)
				return
			}
			require.ErrorContains(t, err, tc.want)
			assert.Zero(t, s.N)
		})
	}
}

// childStopped checks that an Env from StartEnv has ended: its process
// reaped, having exited by itself, and nothing listening where it did.
func childStopped(t *testing.T, e *Env) {
	t.Helper()
	c, ok := e.Sink.(*child)
	require.True(t, ok, "an Env of StartEnv")
	select {
	case <-c.done:
	default:
		t.Fatal("the servers' process was not reaped")
	}
	require.NotNil(t, c.cmd.ProcessState)
	assert.True(t, c.cmd.ProcessState.Exited(), "%v", c.cmd.ProcessState)
	assert.Zero(t, c.cmd.ProcessState.ExitCode())
	require.NotEmpty(t, e.Addrs)
	for _, a := range e.Addrs {
		conn, err := net.Dial("tcp", a)
		if err == nil {
			conn.Close()
		}
		assert.Error(t, err, "something still listens on %s", a)
	}
}

func startEnv(t *testing.T, rtt time.Duration, up Upstream) *Env {
	t.Helper()
	return startEnvFor(t, Setup{RTT: rtt, Upstream: up})
}

func startEnvFor(t *testing.T, s Setup) *Env {
	t.Helper()
	exe, err := os.Executable()
	require.NoError(t, err)
	e, err := StartEnvFor(exe, s)
	require.NoError(t, err)
	return e
}

// TestChildEnv starts the servers in a child process (this test binary,
// whose TestMain serves them), sends through every path, and stops it:
// the process is gone and nothing listens. The client's figures are there.
func TestChildEnv(t *testing.T) {
	ctx := testCtx(t)
	m := testMail(t)
	e := startEnv(t, 2*time.Millisecond, Chunking)
	assert.Nil(t, e.Relay)
	require.Len(t, e.Addrs, 3, "relay, sink, proxy")
	for _, a := range e.Addrs {
		conn, err := net.Dial("tcp", a)
		require.NoError(t, err, "the child listens on %s", a)
		conn.Close()
	}

	dial, end, err := relayDialer(ctx, e)
	require.NoError(t, err)
	s, err := RunFloor(ctx, dial, e.Sink, m, 50)
	end()
	require.NoError(t, err)
	checkSample(t, s, 50)
	checkUsage(t, s.Usage)

	c, err := e.NewClient(Client{}, 20)
	require.NoError(t, err)
	s, err = RunOurs(ctx, c, e.Sink, m, 20)
	closeClient(c)
	require.NoError(t, err)
	checkSample(t, s, 20)
	checkUsage(t, s.Usage)

	s, err = RunLockstep(ctx, e.Direct(), e.Sink, m, 3)
	require.NoError(t, err)
	checkSample(t, s, 3)
	checkUsage(t, s.Usage)

	st := e.Sink.Stats()
	assert.Equal(t, int64(50+20+3), st.Messages, "the child's sink counts")
	require.NoError(t, e.close())
	childStopped(t, e)
	assert.Equal(t, int64(-1), e.Sink.Stats().Messages, "a stopped child does not answer")
	require.NoError(t, e.close(), "a second close")
}

// TestChildThatDoesNotServe: a program that does not call ServeIfChild
// fails StartEnv, and is reaped.
func TestChildThatDoesNotServe(t *testing.T) {
	if _, err := os.Stat("/bin/true"); err != nil {
		t.Skip("no /bin/true")
	}
	_, err := StartEnv("/bin/true", 0, Chunking)
	require.ErrorContains(t, err, "ServeIfChild")
}

// TestServeChild is the child's side over pipes, in this process: its
// first line says where it listens, each request gets the sink's counts,
// and the end of its input stops it.
func TestServeChild(t *testing.T) {
	inR, inW := io.Pipe()
	outR, outW := io.Pipe()
	code := make(chan int, 1)
	go func() {
		code <- serveChild([]string{"-rtt", "0", "-pipelining-only"}, inR, outW, io.Discard)
		outW.Close()
	}()
	dec := json.NewDecoder(outR)
	var h childHello
	require.NoError(t, dec.Decode(&h))
	assert.True(t, strings.HasPrefix(h.RelayURL, "ws://127.0.0.1:"), h.RelayURL)
	assert.NotEmpty(t, h.APIKey)
	assert.Equal(t, h.Addrs[1], h.DirectAddr, "at 0 RTT, the sink itself")
	_, err := io.WriteString(inW, statsRequest)
	require.NoError(t, err)
	var st smtpsink.Stats
	require.NoError(t, dec.Decode(&st))
	assert.Zero(t, st.Messages)
	_, err = io.WriteString(inW, relayRequest)
	require.NoError(t, err)
	var rst relaytest.Stats
	require.NoError(t, dec.Decode(&rst))
	assert.Zero(t, rst.Channels)
	inW.Close()
	assert.Equal(t, 0, <-code)
	for _, a := range h.Addrs {
		_, err := net.Dial("tcp", a)
		assert.Error(t, err, "%s still listens", a)
	}

	inR, inW = io.Pipe()
	go func() { code <- serveChild(nil, inR, io.Discard, io.Discard) }()
	_, err = io.WriteString(inW, "what\n")
	require.NoError(t, err)
	assert.Equal(t, 2, <-code, "an unknown request")
	assert.Equal(t, 2, serveChild([]string{"-rtt", "soon"}, strings.NewReader(""), io.Discard, io.Discard))
	assert.Equal(t, 2, serveChild([]string{"-throttle", "{"}, strings.NewReader(""), io.Discard, io.Discard))
	var errOut strings.Builder
	assert.Equal(t, 1, serveChild([]string{"-fault", fmt.Sprintf(`{"Kind":%d,"Reply":"hello"}`, relaytest.ReplaceReply)}, strings.NewReader(""), io.Discard, &errOut),
		"a ReplaceReply whose reply has no code")
	assert.Contains(t, errOut.String(), "ReplaceReply")
}

// TestChildSetup: the throttle and the faults of a Setup reach the relay in
// the child, and RelayStats asks the child for the relay's counts.
func TestChildSetup(t *testing.T) {
	ctx := testCtx(t)
	m := testMail(t)
	e := startEnvFor(t, Setup{
		Throttle: &relaytest.Throttle{Limit: 1, Per: time.Hour},
		Faults:   []relaytest.Fault{{Kind: relaytest.ReplaceReply, Command: "RCPT", Recipient: m.To[1], Reply: "550 5.1.1 no such user"}},
	})
	defer e.Close()
	dial := relayDial(t, ctx, e)
	_, err := RunLockstep(ctx, dial, e.Sink, m, 1)
	require.ErrorContains(t, err, "550", "the fault")
	_, err = RunLockstep(ctx, dial, e.Sink, m, 1)
	require.ErrorContains(t, err, "451", "one transaction an hour")
	st, err := e.RelayStats()
	require.NoError(t, err)
	assert.Equal(t, 1, st.Throttled)
	assert.Equal(t, 2, st.Channels)
	require.NoError(t, e.close())
	_, err = e.RelayStats()
	assert.Error(t, err, "a stopped child does not answer")
}

func TestNewEnvForRefusesAMalformedSetup(t *testing.T) {
	_, err := NewEnvFor(Setup{Throttle: &relaytest.Throttle{Limit: 1, Reply: "250 fine"}})
	assert.ErrorContains(t, err, "Throttle.Reply")
	_, err = NewEnvFor(Setup{Faults: []relaytest.Fault{{Kind: relaytest.ReplaceReply, Reply: "nope"}}})
	assert.ErrorContains(t, err, "ReplaceReply")
}

// TestRunStopsItsChildren: whichever way Run ends (rows that failed, ctx
// ended, a panic), every child it started has ended, reaped, and nothing
// listens where it did.
func TestRunStopsItsChildren(t *testing.T) {
	cfg := Config{RTTs: []time.Duration{0}, N: 10, LockstepN: 2, Size: 1024, Rcpts: 1, Runs: 1, Timeout: 30 * time.Second, Tables: []Table{TableMain}}
	for _, tc := range []struct {
		name     string
		timeout  time.Duration
		progress func(cancel func(), line string)
		check    func(t *testing.T, rep *Report, err error, panicked any)
	}{
		{"every row measured", 0, func(func(), string) {}, func(t *testing.T, rep *Report, err error, _ any) {
			require.NoError(t, err)
			assert.Zero(t, rep.Failed())
			require.Len(t, rep.Rows, 7)
			for _, row := range rep.Rows {
				assert.Positive(t, row.Rate, row.Label)
				assert.Positive(t, row.AllocsPerEmail, row.Label)
				assert.Positive(t, row.BytesPerEmail, row.Label)
				if processCPU() >= 0 {
					assert.Positive(t, row.CPUPerEmail, row.Label)
				}
			}
			r, ok := rep.Ratio(rep.Rows[0], Floor)
			assert.True(t, ok)
			assert.Equal(t, 1.0, r, "the floor against itself")
		}},
		{"failed rows", time.Nanosecond, func(func(), string) {}, func(t *testing.T, rep *Report, err error, _ any) {
			require.NoError(t, err)
			assert.Equal(t, len(rep.Rows), rep.Failed())
		}},
		{"ctx ended", 0, func(cancel func(), _ string) { cancel() }, func(t *testing.T, _ *Report, err error, _ any) {
			require.ErrorIs(t, err, context.Canceled)
		}},
		{"a panic", 0, func(func(), string) { panic("progress") }, func(t *testing.T, _ *Report, _ error, p any) {
			assert.Equal(t, "progress", p)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			var envs []*Env
			c := cfg
			if tc.timeout > 0 {
				c.Timeout = tc.timeout
			}
			c.Start = func(s Setup) (*Env, error) {
				e := startEnvFor(t, s)
				envs = append(envs, e)
				return e, nil
			}
			var rep *Report
			var err error
			p := func() (p any) {
				defer func() { p = recover() }()
				rep, err = Run(ctx, c, func(s string) { tc.progress(cancel, s) })
				return nil
			}()
			tc.check(t, rep, err, p)
			require.NotEmpty(t, envs)
			for _, e := range envs {
				childStopped(t, e)
			}
		})
	}
}
