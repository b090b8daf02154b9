package memnet

import (
	"context"
	"errors"
	"io"
	"net"
	"os"
	"sync/atomic"
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

// pair returns the two ends of a connection of a Network.
func pair(t *testing.T) (client, server net.Conn) {
	t.Helper()
	var n Network
	ln := listen(t, &n)
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err == nil {
			accepted <- c
		}
		close(accepted)
	}()
	c, err := n.DialContext(context.Background(), "tcp", ln.Addr().String())
	require.NoError(t, err)
	s := <-accepted
	require.NotNil(t, s)
	t.Cleanup(func() { c.Close(); s.Close() })
	return c, s
}

// A write returns once its bytes are in the buffer, and blocks while the
// buffer is full, until the reader makes room.
func TestWritesAreBuffered(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c, s := pair(t)
		n, err := c.Write(make([]byte, BufferSize))
		require.NoError(t, err, "a buffer's worth is written with nobody reading")
		assert.Equal(t, BufferSize, n)
		var done atomic.Bool
		go func() {
			c.Write([]byte("xy"))
			done.Store(true)
		}()
		synctest.Wait()
		assert.False(t, done.Load(), "the buffer is full: the write waits")
		_, err = io.ReadFull(s, make([]byte, 1))
		require.NoError(t, err)
		synctest.Wait()
		assert.False(t, done.Load(), "room for one byte of two")
		_, err = io.ReadFull(s, make([]byte, BufferSize-1))
		require.NoError(t, err)
		synctest.Wait()
		assert.True(t, done.Load())
		got := make([]byte, 2)
		_, err = io.ReadFull(s, got)
		require.NoError(t, err)
		assert.Equal(t, "xy", string(got))
	})
}

// After Close the peer reads what was written, then EOF, and its writes
// fail; the closing end's own reads and writes fail at once.
func TestClose(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c, s := pair(t)
		_, err := c.Write([]byte("abc"))
		require.NoError(t, err)
		readErr := make(chan error, 1)
		go func() {
			_, err := c.Read(make([]byte, 1))
			readErr <- err
		}()
		synctest.Wait()
		require.NoError(t, c.Close())
		require.ErrorIs(t, <-readErr, net.ErrClosed, "a read in progress ends with the close")
		got, err := io.ReadAll(s)
		require.NoError(t, err, "EOF after the data")
		assert.Equal(t, "abc", string(got))
		_, err = s.Write([]byte("late"))
		require.ErrorIs(t, err, io.ErrClosedPipe)
		_, err = c.Write([]byte("x"))
		require.ErrorIs(t, err, net.ErrClosed)
	})
}

// A deadline moved while a read waits takes effect; one in the past ends
// it at once.
func TestDeadlineMovedDuringARead(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c, _ := pair(t)
		start := time.Now()
		require.NoError(t, c.SetReadDeadline(start.Add(time.Hour)))
		readErr := make(chan error, 1)
		go func() {
			_, err := c.Read(make([]byte, 1))
			readErr <- err
		}()
		time.Sleep(time.Minute)
		require.NoError(t, c.SetReadDeadline(start.Add(2*time.Minute)))
		require.ErrorIs(t, <-readErr, os.ErrDeadlineExceeded)
		assert.Equal(t, 2*time.Minute, time.Since(start))
		require.NoError(t, c.SetReadDeadline(time.Time{}))
		require.NoError(t, c.SetWriteDeadline(start))
		_, err := c.Write(make([]byte, BufferSize+1))
		require.ErrorIs(t, err, os.ErrDeadlineExceeded, "a write that must wait, past its deadline")
	})
}
