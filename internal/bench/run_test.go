package bench

import (
	"context"
	"math"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

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
