package mxrelay_test

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mxrelay/mxrelay"
	"github.com/mxrelay/mxrelay/internal/wire"
	"github.com/mxrelay/mxrelay/relaytest"
)

// TestHostileUpstream runs an SMTP server that breaks SMTP behind
// relaytest: each case ends with a *ProtocolError, the email classified by
// docs/protocol.md §11, nothing of it sent past the point of breakage, and the
// server's connection closed by the client after at most floodBound bytes.
func TestHostileUpstream(t *testing.T) {
	ehlo := func(c *upConn, ext ...string) bool {
		if !c.say("220 mx.hostile.test ESMTP") {
			return false
		}
		if _, ok := c.line(); !ok {
			return false
		}
		return c.say(strings.Join(append([]string{"250-mx.hostile.test"}, ext...), "\r\n250-") + "\r\n250 8BITMIME")
	}
	// toEnd answers the envelope, reads the body and returns at its ".".
	toEnd := func(c *upConn) bool {
		for {
			l, ok := c.line()
			if !ok {
				return false
			}
			if strings.HasPrefix(l, "DATA") {
				break
			}
			c.say("250 2.1.0 ok")
		}
		c.say("354 go ahead")
		for l, ok := c.line(); l != "."; l, ok = c.line() {
			if !ok {
				return false
			}
		}
		return true
	}
	drain := func(c *upConn) {
		for _, ok := c.line(); ok; _, ok = c.line() {
		}
	}
	type phase int
	const (
		setup   phase = iota // the session never starts: ConnectError
		notSent              // the end of data was never written: not delivered, not unknown
		unknown              // the end of data was written and not answered
	)
	for _, tc := range []struct {
		name  string
		serve func(c *upConn)
		phase phase
	}{
		{"greeting: a line with no CRLF, endless", func(c *upConn) {
			c.write([]byte("220 "))
			c.flood(chunk64("x"))
		}, setup},
		{"EHLO: an endless multi-line reply", func(c *upConn) {
			c.say("220 mx.hostile.test ESMTP")
			c.line()
			c.flood(chunk64("250-PIPELINING\r\n"))
		}, setup},
		{"greeting: reply code 099", func(c *upConn) {
			c.say("099 mx.hostile.test hello")
			drain(c)
		}, setup},
		{"EHLO: reply code abc", func(c *upConn) {
			c.say("220 mx.hostile.test ESMTP")
			c.line()
			c.say("abc mx.hostile.test")
			drain(c)
		}, setup},
		{"EHLO: a 3xx", func(c *upConn) {
			c.say("220 mx.hostile.test ESMTP")
			c.line()
			c.say("354 go ahead")
			drain(c)
		}, setup},
		{"354 to MAIL, lock-step", func(c *upConn) {
			ehlo(c)
			c.line() // MAIL
			c.say("354 go ahead")
			drain(c)
		}, notSent},
		{"354 to MAIL, pipelined", func(c *upConn) {
			ehlo(c, "PIPELINING")
			c.line() // MAIL
			c.say("354 go ahead")
			drain(c)
		}, notSent},
		{"RCPT: a line with no CRLF, endless", func(c *upConn) {
			ehlo(c)
			c.line()
			c.say("250 2.1.0 ok")
			c.line()
			c.write([]byte("250 "))
			c.flood(chunk64("x"))
		}, notSent},
		{"end of data: reply code 099", func(c *upConn) {
			ehlo(c)
			if toEnd(c) {
				c.say("099 queued, perhaps")
			}
			drain(c)
		}, unknown},
		{"end of data: a line with no CRLF, endless", func(c *upConn) {
			ehlo(c)
			if toEnd(c) {
				c.write([]byte("250 "))
				c.flood(chunk64("x"))
			}
		}, unknown},
		{"end of data: an endless multi-line reply", func(c *upConn) {
			ehlo(c, "PIPELINING")
			if toEnd(c) {
				c.flood(chunk64("250-queued\r\n"))
			}
		}, unknown},
	} {
		t.Run(tc.name, func(t *testing.T) {
			u := newUpstream(t, tc.serve)
			s := newRelay(t, &relaytest.Options{UpstreamAddr: u.addr})
			c := newClient(t, s, &mxrelay.Options{MaxReconnectAttempts: 1})
			res, err := c.Send(ctxT(t), mail("hostile"), mxrelay.WithRetries(0))
			require.Error(t, err)
			var pe *mxrelay.ProtocolError
			require.ErrorAs(t, err, &pe)
			var ce *mxrelay.ConnectError
			assert.Equal(t, tc.phase == setup, errors.As(err, &ce), "a session that never started: %v", err)
			assert.Equal(t, tc.phase == unknown, errors.Is(err, mxrelay.ErrUnknownOutcome), "%v", err)
			assert.Equal(t, tc.phase == unknown, res.MaybeDelivered)
			if tc.phase != unknown {
				assert.False(t, u.saw("Subject:"), "no byte of the body went out: %q", u.transcript())
			}
			if tc.phase == setup {
				assert.False(t, u.saw("MAIL"), "%q", u.transcript())
			}
			select {
			case n := <-u.ended:
				t.Logf("the upstream wrote %d bytes", n)
				assert.Less(t, n, int64(floodBound), "the client hung up on the flood")
			case <-ctxT(t).Done():
				t.Fatal("the client never made the relay hang up on the upstream")
			}
		})
	}
}

// TestRelayAfterChannelClosed: a whole session with an unknown message in
// the middle (ignored, docs/protocol.md §4), then SMTP data after
// SMTP_CHANNEL_CLOSED. The email delivered stays delivered; the stray data
// is a protocol error that ends the connection with 1002.
func TestRelayAfterChannelClosed(t *testing.T) {
	f := newFakeRelay(t, []string{wire.Subprotocol}, func(ctx context.Context, ws *websocket.Conn) {
		if !authOK(ctx, ws) {
			return
		}
		ws.Read(ctx) // SMTP_CHANNEL_OPEN
		send(ctx, ws, wire.TypeChannelReady, nil)
		say := func(s string) { send(ctx, ws, wire.TypeFromServer, s+"\r\n") }
		say("220 mx ESMTP")
		var pending []byte
		inData := false
		for {
			_, p, err := ws.Read(ctx)
			if err != nil {
				return
			}
			m, err := wire.Decode(p)
			if err != nil {
				return
			}
			if m.Type == wire.TypeChannelClose {
				send(ctx, ws, wire.TypeChannelClosed, nil)
				say("250 2.0.0 stale")
				return
			}
			b, err := wire.DecodeData(m)
			if err != nil {
				return
			}
			pending = append(pending, b...)
			for {
				i := bytes.Index(pending, []byte("\r\n"))
				if i < 0 {
					break
				}
				line := string(pending[:i])
				pending = pending[i+2:]
				switch {
				case inData && line == ".":
					inData = false
					say("250 2.0.0 queued")
				case inData:
				case strings.HasPrefix(line, "EHLO"):
					send(ctx, ws, "RELAY_NOTICE", map[string]any{"text": "maintenance at noon"})
					say("250 mx")
				case line == "DATA":
					inData = true
					say("354 go ahead")
				case line == "QUIT":
					say("221 bye")
				default:
					say("250 ok")
				}
			}
		}
	})
	rec := &recorder{}
	c, err := mxrelay.New(f.url(), "key", fast(&mxrelay.Options{DisableBinary: true, IdleTimeout: time.Minute, OnEvent: rec.on}))
	require.NoError(t, err)
	defer c.Close(context.Background())
	res, err := c.Send(ctxT(t), mail("delivered"))
	require.NoError(t, err, "the unknown message was ignored")
	assert.False(t, res.MaybeDelivered)
	require.Eventually(t, func() bool { return len(f.closeCodes()) == 1 }, 10*time.Second, 5*time.Millisecond)
	assert.Equal(t, websocket.StatusProtocolError, f.closeCodes()[0])
	require.Eventually(t, func() bool { return rec.count(mxrelay.EventDisconnected) == 1 }, 10*time.Second, 5*time.Millisecond)
	rec.mu.Lock()
	events := append([]mxrelay.Event(nil), rec.events...)
	rec.mu.Unlock()
	for _, e := range events {
		if e.Type == mxrelay.EventDisconnected {
			var pe *mxrelay.ProtocolError
			assert.ErrorAs(t, e.Err, &pe)
		}
	}
}
