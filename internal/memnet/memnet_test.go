package memnet

import (
	"context"
	"errors"
	"io"
	"net"
	"os"
	"syscall"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestDialReachesTheListener(t *testing.T) {
	var n Network
	ln, err := n.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	accepted := make(chan net.Conn, 2)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				close(accepted)
				return
			}
			accepted <- c
		}
	}()
	c1, err := n.DialContext(context.Background(), "tcp", ln.Addr().String())
	require.NoError(t, err)
	s1 := <-accepted
	c2, err := n.DialContext(context.Background(), "tcp", ln.Addr().String())
	require.NoError(t, err)
	s2 := <-accepted

	go c1.Write([]byte("hello"))
	got := make([]byte, 5)
	_, err = io.ReadFull(s1, got)
	require.NoError(t, err)
	assert.Equal(t, "hello", string(got))

	assert.Equal(t, ln.Addr(), c1.RemoteAddr())
	assert.Equal(t, c1.LocalAddr(), s1.RemoteAddr())
	assert.Equal(t, s1.LocalAddr(), c1.RemoteAddr())
	assert.NotEqual(t, s1.RemoteAddr().String(), s2.RemoteAddr().String(), "each connection has an address of its own")
	host, _, err := net.SplitHostPort(c2.LocalAddr().String())
	require.NoError(t, err)
	assert.Equal(t, "127.0.0.1", host)

	require.NoError(t, ln.Close())
	_, ok := <-accepted
	assert.False(t, ok, "Accept returns once the listener is closed")
	for _, c := range []net.Conn{c1, c2, s1, s2} {
		c.Close()
	}
}

func TestDialWithoutListenerIsRefused(t *testing.T) {
	var n Network
	_, err := n.DialContext(context.Background(), "tcp", "127.0.0.1:9")
	require.ErrorIs(t, err, syscall.ECONNREFUSED)

	ln, err := n.Listen("tcp", "127.0.0.1:2525")
	require.NoError(t, err)
	assert.Equal(t, "127.0.0.1:2525", ln.Addr().String())
	_, err = n.Listen("tcp", "127.0.0.1:2525")
	require.ErrorIs(t, err, syscall.EADDRINUSE)
	ln.Close()
	_, err = n.DialContext(context.Background(), "tcp", "127.0.0.1:2525")
	require.ErrorIs(t, err, syscall.ECONNREFUSED, "a closed listener refuses")
	_, err = ln.Accept()
	require.ErrorIs(t, err, net.ErrClosed)
}

// A dial nobody accepts waits for its context.
func TestDialWaitsForAccept(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var n Network
		ln := listen(t, &n)
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		start := time.Now()
		_, err := n.DialContext(ctx, "tcp", ln.Addr().String())
		require.ErrorIs(t, err, context.DeadlineExceeded)
		assert.Equal(t, time.Second, time.Since(start))
	})
}

// In a bubble a read on a connection is durably blocked: its deadline
// passes on the fake clock.
func TestDeadlinesRunOnTheBubblesClock(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var n Network
		ln := listen(t, &n)
		go func() {
			c, err := ln.Accept()
			if err == nil {
				defer c.Close()
				io.Copy(io.Discard, c)
			}
		}()
		c, err := n.DialContext(context.Background(), "tcp", ln.Addr().String())
		require.NoError(t, err)
		defer c.Close()
		start := time.Now()
		require.NoError(t, c.SetReadDeadline(start.Add(time.Hour)))
		_, err = c.Read(make([]byte, 1))
		require.True(t, errors.Is(err, os.ErrDeadlineExceeded), "%v", err)
		assert.Equal(t, time.Hour, time.Since(start))
	})
}

// listen returns a listener of n at a free port, closed when the test ends.
func listen(t *testing.T, n *Network) net.Listener {
	t.Helper()
	ln, err := n.Listen("tcp", "")
	require.NoError(t, err)
	t.Cleanup(func() { ln.Close() })
	return ln
}
