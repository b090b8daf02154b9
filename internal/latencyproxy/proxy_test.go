package latencyproxy_test

import (
	"bytes"
	"io"
	"math/rand/v2"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mxrelay/mxrelay/internal/latencyproxy"
)

// echoServer echoes every connection until the client half-closes it, then
// closes it. It is closed, and waited for, at the end of the test.
func echoServer(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Go(func() {
				defer c.Close()
				_, _ = io.Copy(c, c)
			})
		}
	})
	t.Cleanup(func() {
		ln.Close()
		wg.Wait()
	})
	return ln.Addr().String()
}

func newProxy(t *testing.T, target string, oneWay time.Duration) *latencyproxy.Proxy {
	t.Helper()
	p, err := latencyproxy.New(target, oneWay)
	require.NoError(t, err)
	t.Cleanup(func() { p.Close() })
	return p
}

func dial(t *testing.T, addr string) *net.TCPConn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() })
	require.NoError(t, c.SetDeadline(time.Now().Add(20*time.Second)))
	return c.(*net.TCPConn)
}

func TestRoundTripTakesTwiceTheDelay(t *testing.T) {
	const oneWay = 20 * time.Millisecond
	p := newProxy(t, echoServer(t), oneWay)
	c := dial(t, p.Addr)
	buf := make([]byte, 4)
	for range 3 {
		start := time.Now()
		_, err := c.Write([]byte("ping"))
		require.NoError(t, err)
		_, err = io.ReadFull(c, buf)
		require.NoError(t, err)
		assert.Equal(t, "ping", string(buf))
		assert.GreaterOrEqual(t, time.Since(start), 2*oneWay)
	}
}

// TestBandwidthIsNotLimited sends 8 MiB through a 50 ms link both ways.
// A proxy that waited the delay for each piece in turn would need at least
// 2 × 128 × 50 ms = 12.8 s; this one needs the delay once per direction
// plus the copying.
func TestBandwidthIsNotLimited(t *testing.T) {
	const oneWay = 50 * time.Millisecond
	p := newProxy(t, echoServer(t), oneWay)
	c := dial(t, p.Addr)
	data := make([]byte, 8<<20)
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range data {
		data[i] = byte(rng.Uint32())
	}
	start := time.Now()
	var wg sync.WaitGroup
	wg.Go(func() {
		// Many small writes as well as big ones, to check the order.
		for off := 0; off < len(data); {
			n := min(len(data)-off, 1+rng.IntN(100<<10))
			if _, err := c.Write(data[off : off+n]); err != nil {
				t.Error(err)
				return
			}
			off += n
		}
		assert.NoError(t, c.CloseWrite())
	})
	got, err := io.ReadAll(c)
	wg.Wait()
	require.NoError(t, err)
	elapsed := time.Since(start)
	require.True(t, bytes.Equal(data, got), "bytes arrive intact and in order (%d of %d)", len(got), len(data))
	assert.GreaterOrEqual(t, elapsed, 2*oneWay)
	assert.Less(t, elapsed, 6*time.Second, "the delay is paid once per direction, not per piece")
}

// TestHalfClose: the end of one direction travels after its data, and the
// other direction keeps working until it ends too.
func TestHalfClose(t *testing.T) {
	p := newProxy(t, echoServer(t), 5*time.Millisecond)
	c := dial(t, p.Addr)
	_, err := c.Write([]byte("last words"))
	require.NoError(t, err)
	require.NoError(t, c.CloseWrite())
	got, err := io.ReadAll(c)
	require.NoError(t, err)
	assert.Equal(t, "last words", string(got))
}

func TestUnreachableTargetClosesTheClient(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	target := ln.Addr().String()
	ln.Close() // nothing listens there now
	p := newProxy(t, target, time.Millisecond)
	c := dial(t, p.Addr)
	_, err = c.Read(make([]byte, 1))
	assert.Error(t, err)
}

// TestCloseWithTrafficInFlight: Close returns with bytes still delayed and
// connections open, and leaves no goroutine behind (goleak).
func TestCloseWithTrafficInFlight(t *testing.T) {
	p, err := latencyproxy.New(echoServer(t), time.Hour)
	require.NoError(t, err)
	c := dial(t, p.Addr)
	_, err = c.Write([]byte("never delivered"))
	require.NoError(t, err)
	idle := dial(t, p.Addr)
	done := make(chan struct{})
	go func() {
		defer close(done)
		p.Close()
	}()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Close hangs")
	}
	_, err = idle.Read(make([]byte, 1))
	assert.Error(t, err)
	require.NoError(t, p.Close(), "twice is safe")
}
