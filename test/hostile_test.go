package test

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
	"github.com/mxrelay/mxrelay/internal/fakesmtp"
	"github.com/mxrelay/mxrelay/internal/testkit"
	"github.com/mxrelay/mxrelay/internal/wire"
	"github.com/mxrelay/mxrelay/relaytest"
)

// TestHostileUpstream runs an SMTP server that breaks SMTP behind
// relaytest: each case ends with a *ProtocolError, the email classified by
// docs/protocol.md §11, nothing of it sent past the point of breakage, and the
// server's connection closed by the client after at most floodBound bytes.
func TestHostileUpstream(t *testing.T) {
	ehlo := func(c *fakesmtp.Conn, ext ...string) bool { return c.Hello(append(ext, "8BITMIME")...) }
	// toEnd answers the envelope, reads the body and returns at its ".".
	toEnd := func(c *fakesmtp.Conn) bool {
		for {
			l, ok := c.Line()
			if !ok {
				return false
			}
			if strings.HasPrefix(l, "DATA") {
				break
			}
			c.Say("250 2.1.0 ok")
		}
		c.Say("354 go ahead")
		_, ok := c.Body()
		return ok
	}
	type phase int
	const (
		setup   phase = iota // the session never starts: ConnectError
		notSent              // the end of data was never written: not delivered, not unknown
		unknown              // the end of data was written and not answered
	)
	for _, tc := range []struct {
		name  string
		serve func(c *fakesmtp.Conn)
		phase phase
	}{
		{"greeting: a line with no CRLF, endless", func(c *fakesmtp.Conn) {
			c.Raw("220 ")
			c.Flood(chunk64("x"))
		}, setup},
		{"EHLO: an endless multi-line reply", func(c *fakesmtp.Conn) {
			c.Say("220 mx.hostile.test ESMTP")
			c.Line()
			c.Flood(chunk64("250-PIPELINING\r\n"))
		}, setup},
		{"greeting: reply code 099", func(c *fakesmtp.Conn) {
			c.Say("099 mx.hostile.test hello")
			c.Drain()
		}, setup},
		{"EHLO: reply code abc", func(c *fakesmtp.Conn) {
			c.Say("220 mx.hostile.test ESMTP")
			c.Line()
			c.Say("abc mx.hostile.test")
			c.Drain()
		}, setup},
		{"EHLO: a 3xx", func(c *fakesmtp.Conn) {
			c.Say("220 mx.hostile.test ESMTP")
			c.Line()
			c.Say("354 go ahead")
			c.Drain()
		}, setup},
		{"354 to MAIL, lock-step", func(c *fakesmtp.Conn) {
			ehlo(c)
			c.Line() // MAIL
			c.Say("354 go ahead")
			c.Drain()
		}, notSent},
		{"354 to MAIL, pipelined", func(c *fakesmtp.Conn) {
			ehlo(c, "PIPELINING")
			c.Line() // MAIL
			c.Say("354 go ahead")
			c.Drain()
		}, notSent},
		{"RCPT: a line with no CRLF, endless", func(c *fakesmtp.Conn) {
			ehlo(c)
			c.Line()
			c.Say("250 2.1.0 ok")
			c.Line()
			c.Raw("250 ")
			c.Flood(chunk64("x"))
		}, notSent},
		{"end of data: reply code 099", func(c *fakesmtp.Conn) {
			ehlo(c)
			if toEnd(c) {
				c.Say("099 queued, perhaps")
			}
			c.Drain()
		}, unknown},
		{"end of data: a line with no CRLF, endless", func(c *fakesmtp.Conn) {
			ehlo(c)
			if toEnd(c) {
				c.Raw("250 ")
				c.Flood(chunk64("x"))
			}
		}, unknown},
		{"end of data: an endless multi-line reply", func(c *fakesmtp.Conn) {
			ehlo(c, "PIPELINING")
			if toEnd(c) {
				c.Flood(chunk64("250-queued\r\n"))
			}
		}, unknown},
	} {
		t.Run(tc.name, func(t *testing.T) {
			u := fakesmtp.Listen(t, tc.serve)
			s := testkit.NewRelay(t, &relaytest.Options{UpstreamAddr: u.Addr})
			c := testkit.NewClient(t, s, &mxrelay.Options{MaxReconnectAttempts: 1})
			res, err := c.Send(testkit.Ctx(t), testkit.Mail("hostile"), mxrelay.WithRetries(0))
			require.Error(t, err)
			var pe *mxrelay.ProtocolError
			require.ErrorAs(t, err, &pe)
			var ce *mxrelay.ConnectError
			assert.Equal(t, tc.phase == setup, errors.As(err, &ce), "a session that never started: %v", err)
			assert.Equal(t, tc.phase == unknown, errors.Is(err, mxrelay.ErrUnknownOutcome), "%v", err)
			assert.Equal(t, tc.phase == unknown, res.MaybeDelivered)
			if tc.phase != unknown {
				assert.False(t, u.Saw("Subject:"), "no byte of the body went out: %q", u.Transcript())
			}
			if tc.phase == setup {
				assert.False(t, u.Saw("MAIL"), "%q", u.Transcript())
			}
			select {
			case n := <-u.Ended():
				t.Logf("the upstream wrote %d bytes", n)
				assert.Less(t, n, int64(floodBound), "the client hung up on the flood")
			case <-testkit.Ctx(t).Done():
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
	f := testkit.NewFakeRelay(t, []string{wire.Subprotocol}, func(ctx context.Context, ws *websocket.Conn) {
		if !testkit.AuthOK(ctx, ws) {
			return
		}
		ws.Read(ctx) // SMTP_CHANNEL_OPEN
		testkit.SendFrame(ctx, ws, wire.TypeChannelReady, nil)
		say := func(s string) { testkit.SendFrame(ctx, ws, wire.TypeFromServer, s+"\r\n") }
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
				testkit.SendFrame(ctx, ws, wire.TypeChannelClosed, nil)
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
					testkit.SendFrame(ctx, ws, "RELAY_NOTICE", map[string]any{"text": "maintenance at noon"})
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
	rec := &testkit.Recorder{}
	c, err := mxrelay.New(f.WSURL(), "key", testkit.Fast(&mxrelay.Options{DisableBinary: true, IdleTimeout: time.Minute, OnEvent: rec.On}))
	require.NoError(t, err)
	defer c.Close(context.Background())
	res, err := c.Send(testkit.Ctx(t), testkit.Mail("delivered"))
	require.NoError(t, err, "the unknown message was ignored")
	assert.False(t, res.MaybeDelivered)
	require.Eventually(t, func() bool { return len(f.CloseCodes()) == 1 }, 10*time.Second, 5*time.Millisecond)
	assert.Equal(t, websocket.StatusProtocolError, f.CloseCodes()[0])
	require.Eventually(t, func() bool { return rec.Count(mxrelay.EventDisconnected) == 1 }, 10*time.Second, 5*time.Millisecond)
	events := rec.Events()
	for _, e := range events {
		if e.Type == mxrelay.EventDisconnected {
			var pe *mxrelay.ProtocolError
			assert.ErrorAs(t, e.Err, &pe)
		}
	}
}
