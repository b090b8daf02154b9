package bench

import (
	"context"
	"encoding/json"
	"io"
	"math"
	"net"
	"os"
	"strings"
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
	exe, err := os.Executable()
	require.NoError(t, err)
	e, err := StartEnv(exe, rtt, up)
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

	c, err := e.NewClient(Client{}, 20)
	require.NoError(t, err)
	s, err := RunOurs(ctx, c, e.Sink, m, 20)
	closeClient(c)
	require.NoError(t, err)
	checkSample(t, s, 20)
	checkUsage(t, s.Usage)

	s, err = RunLockstep(ctx, e.Direct(), e.Sink, m, 3)
	require.NoError(t, err)
	checkSample(t, s, 3)
	checkUsage(t, s.Usage)

	st := e.Sink.Stats()
	assert.Equal(t, int64(20+3), st.Messages, "the child's sink counts")
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
}

// TestRunStopsItsChildren: whichever way Run ends (rows that failed, ctx
// ended, a panic), every child it started has ended, reaped, and nothing
// listens where it did.
func TestRunStopsItsChildren(t *testing.T) {
	cfg := Config{RTTs: []time.Duration{0}, N: 10, LockstepN: 2, Size: 1024, Rcpts: 1, Runs: 1, Timeout: 30 * time.Second}
	for _, tc := range []struct {
		name     string
		timeout  time.Duration
		progress func(cancel func(), line string)
		check    func(t *testing.T, rep *Report, err error, panicked any)
	}{
		{"every row measured", 0, func(func(), string) {}, func(t *testing.T, rep *Report, err error, _ any) {
			require.NoError(t, err)
			assert.Zero(t, rep.Failed())
			require.Len(t, rep.Rows, 6)
			for _, row := range rep.Rows {
				assert.Positive(t, row.Rate, row.Label)
				assert.Positive(t, row.AllocsPerEmail, row.Label)
				assert.Positive(t, row.BytesPerEmail, row.Label)
				if processCPU() >= 0 {
					assert.Positive(t, row.CPUPerEmail, row.Label)
				}
			}
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
			c.Start = func(rtt time.Duration, up Upstream) (*Env, error) {
				e := startEnv(t, rtt, up)
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
