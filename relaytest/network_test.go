package relaytest

import (
	"testing"
	"testing/synctest"
	"time"

	"github.com/coder/websocket"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mxrelay/mxrelay/internal/memnet"
	"github.com/mxrelay/mxrelay/internal/wire"
)

// On a network in memory the whole Server runs in a synctest bubble: a
// message goes through its in-process upstream, and its AuthTimeout
// passes on the bubble's clock, to the nanosecond.
func TestServerOnANetworkInMemory(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		n := &memnet.Network{}
		s := NewServer(&Options{Network: n, AuthTimeout: 3 * time.Second})
		defer s.Close()
		hc := n.HTTPClient()
		c, _, err := dialOpts(t, s, &websocket.DialOptions{HTTPClient: hc, Subprotocols: []string{wire.Subprotocol}})
		require.NoError(t, err)
		require.True(t, c.auth(s.APIKey).Success)
		c.open(false)
		c.cmd("EHLO client.test")
		c.envelope("a@example.com", "b@example.com")
		c.cmd("DATA")
		c.write("Subject: in memory\r\n\r\nhello\r\n.\r\n")
		assert.Equal(t, "250", c.reply()[:3])
		require.Len(t, s.Mailbox(), 1)
		assert.Equal(t, []string{"b@example.com"}, s.Mailbox()[0].To)

		idle, _, err := dialOpts(t, s, &websocket.DialOptions{HTTPClient: hc, Subprotocols: []string{wire.Subprotocol}})
		require.NoError(t, err)
		start := time.Now()
		idle.expectClose(wire.StatusAuthTimeout)
		assert.Equal(t, 3*time.Second, time.Since(start))
	})
}
