package relayconn_test

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/mxrelay/mxrelay/internal/relayconn"
	"github.com/mxrelay/mxrelay/internal/wire"
	"github.com/mxrelay/mxrelay/relaytest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func dial(t *testing.T, s *relaytest.Server, binary bool) *relayconn.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := relayconn.Dial(ctx, relayconn.Config{URL: s.URL, APIKey: s.APIKey, Binary: binary, AuthTimeout: 2 * time.Second, ChannelTimeout: 2 * time.Second, HeartbeatInterval: 20 * time.Millisecond, HeartbeatTimeout: time.Second})
	require.NoError(t, err)
	t.Cleanup(func() { c.Close(1000, "") })
	require.NoError(t, c.Authenticate(ctx))
	return c
}

func open(t *testing.T, c *relayconn.Conn) *relayconn.Channel {
	ch, err := c.OpenChannel(context.Background())
	require.NoError(t, err)
	return ch
}

func TestChannelIsANetConn(t *testing.T) {
	s := relaytest.NewServer(nil)
	defer s.Close()
	for _, binary := range []bool{true, false} {
		c := dial(t, s, binary)
		for range 2 { // a second channel on the same authenticated WebSocket
			ch := open(t, c)
			assert.Equal(t, binary, ch.Binary())
			var nc net.Conn = ch
			r := bufio.NewReader(nc)
			line, err := r.ReadString('\n')
			require.NoError(t, err)
			assert.True(t, strings.HasPrefix(line, "220 "), line)

			// Read deadline: nothing comes, the read times out, and the
			// channel stays usable after the deadline is lifted.
			require.NoError(t, nc.SetReadDeadline(time.Now().Add(30*time.Millisecond)))
			_, err = r.ReadByte()
			require.ErrorIs(t, err, os.ErrDeadlineExceeded)
			require.NoError(t, nc.SetReadDeadline(time.Time{}))

			_, err = io.WriteString(nc, "NOOP\r\n")
			require.NoError(t, err)
			r = bufio.NewReader(nc)
			line, err = r.ReadString('\n')
			require.NoError(t, err)
			assert.True(t, strings.HasPrefix(line, "250"), line)
			assert.Greater(t, ch.Written(), int64(0))

			_, err = io.WriteString(nc, "QUIT\r\n")
			require.NoError(t, err)
			_, err = r.ReadString('\n')
			require.NoError(t, err)
			require.NoError(t, nc.Close())
			require.NoError(t, nc.Close(), "twice is safe")
			_, err = nc.Write([]byte("NOOP\r\n"))
			require.ErrorIs(t, err, net.ErrClosed)
			_, err = nc.Read(make([]byte, 1))
			require.ErrorIs(t, err, net.ErrClosed)
		}
	}
}

func TestJSONChannelHoldsSplitRunes(t *testing.T) {
	s := relaytest.NewServer(nil)
	defer s.Close()
	c := dial(t, s, false)
	ch := open(t, c)
	r := bufio.NewReader(ch)
	_, err := r.ReadString('\n')
	require.NoError(t, err)
	// "NOOP é" written with the two bytes of é in separate writes.
	cmd := []byte("NOOP \xc3\xa9\r\n")
	_, err = ch.Write(cmd[:6])
	require.NoError(t, err)
	_, err = ch.Write(cmd[6:])
	require.NoError(t, err)
	line, err := r.ReadString('\n')
	require.NoError(t, err)
	assert.True(t, strings.HasPrefix(line, "250"), line)

	_, err = ch.Write([]byte("NOOP \xff\r\n"))
	require.ErrorIs(t, err, wire.ErrInvalidUTF8)
}

func TestChannelEndsWithTheConnection(t *testing.T) {
	s := relaytest.NewServer(nil)
	defer s.Close()
	c := dial(t, s, true)
	ch := open(t, c)
	s.CloseClientConnections()
	<-c.Done()
	var ce *relayconn.ClosedError
	require.ErrorAs(t, c.Err(), &ce)
	assert.EqualValues(t, 1012, ce.Code)
	<-ch.Ended()
	buf := make([]byte, 512)
	for {
		if _, err := ch.Read(buf); err != nil {
			require.ErrorAs(t, err, &ce)
			break
		}
	}
	_, err := ch.Write([]byte("NOOP\r\n"))
	require.Error(t, err)
	_, err = c.OpenChannel(context.Background())
	require.Error(t, err)
}

func TestAuthRefused(t *testing.T) {
	s := relaytest.NewServer(nil)
	defer s.Close()
	ctx := context.Background()
	c, err := relayconn.Dial(ctx, relayconn.Config{URL: s.URL, APIKey: "not-the-key", AuthTimeout: time.Second})
	require.NoError(t, err)
	defer c.Close(1000, "")
	err = c.Authenticate(ctx)
	var ae *relayconn.AuthError
	require.ErrorAs(t, err, &ae)
	<-c.Done()
	assert.True(t, errors.As(c.Err(), &ae))
}
