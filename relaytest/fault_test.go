package relaytest

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mxrelay/mxrelay/internal/wire"
)

// cutStatus is what CloseStatus says of a connection that ended without a
// close frame.
const cutStatus websocket.StatusCode = -1

func TestFaultRejectAuth(t *testing.T) {
	s := NewServer(nil)
	defer s.Close()
	s.Inject(Fault{Kind: RejectAuth, Error: "account suspended"})
	c := dial(t, s)
	assert.Equal(t, wire.AuthenticateResponse{Error: "account suspended"}, c.auth(s.APIKey))
	c.expectClose(wire.StatusAuthFailed)

	assert.True(t, dial(t, s).auth(s.APIKey).Success, "the fault fires once")
	assert.Equal(t, 1, s.Stats().AuthFailures)
	assert.Empty(t, s.Faults())
}

func TestFaultIgnoreAuth(t *testing.T) {
	s := NewServer(&Options{AuthTimeout: 100 * time.Millisecond})
	defer s.Close()
	s.Inject(Fault{Kind: IgnoreAuth})
	c := dial(t, s)
	c.send(wire.TypeAuthenticate, wire.Authenticate{APIKey: s.APIKey})
	_, ok := c.next()
	assert.False(t, ok, "no answer")
	c.expectClose(wire.StatusAuthTimeout)
}

func TestFaultDropAfterAuthenticate(t *testing.T) {
	s := NewServer(nil)
	defer s.Close()
	s.Inject(Fault{Kind: DropAfterAuthenticate})
	c := dial(t, s)
	c.send(wire.TypeAuthenticate, wire.Authenticate{APIKey: s.APIKey})
	_, ok := c.next()
	assert.False(t, ok)
	c.expectClose(cutStatus)
}

func TestFaultFailChannel(t *testing.T) {
	s := NewServer(nil)
	defer s.Close()
	s.Inject(Fault{Kind: FailChannel, Error: "no route to mx"})
	s.Inject(Fault{Kind: FailChannel})
	c := dial(t, s)
	c.auth(s.APIKey)
	var e wire.ChannelError
	c.send(wire.TypeChannelOpen, nil)
	require.NoError(t, c.expect(wire.TypeChannelError).Unmarshal(&e))
	assert.Equal(t, "no route to mx", e.Error)
	c.send(wire.TypeChannelOpen, nil)
	require.NoError(t, c.expect(wire.TypeChannelError).Unmarshal(&e))
	assert.NotEmpty(t, e.Error)
	c.send(wire.TypeChannelClose, nil) // nothing to close: ignored
	assert.Equal(t, "220", code(c.open(false)))
	st := s.Stats()
	assert.Equal(t, 1, st.Channels)
	assert.Equal(t, 1, st.UpstreamSessions)
}

func TestFaultIgnoreChannel(t *testing.T) {
	s := NewServer(nil)
	defer s.Close()
	s.Inject(Fault{Kind: IgnoreChannel})
	c := dial(t, s)
	c.auth(s.APIKey)
	c.send(wire.TypeChannelOpen, nil)
	// The first open got no answer: the next message answers the second.
	assert.Equal(t, "220", code(c.open(false)))
	assert.Equal(t, 1, s.Stats().Channels)
}

func TestFaultDropAfterRcpt(t *testing.T) {
	s := NewServer(nil)
	defer s.Close()
	s.Inject(Fault{Kind: DropAfterRcpt, Recipient: "Bob@Example.com"})
	c := dial(t, s)
	c.auth(s.APIKey)
	c.open(true)
	c.envelope("a@example.com", "x@example.com")
	c.write("RCPT TO:<bob@example.com>\r\n")
	data, _, ok := c.allData()
	assert.False(t, ok)
	assert.Empty(t, data, "no reply to the RCPT")
	c.expectClose(cutStatus)
	assert.Empty(t, s.Mailbox())
}

func TestFaultDropAfterFinalDot(t *testing.T) {
	for _, bdat := range []bool{false, true} {
		t.Run(map[bool]string{false: "DATA", true: "BDAT"}[bdat], func(t *testing.T) {
			s := NewServer(nil)
			defer s.Close()
			s.Inject(Fault{Kind: DropAfterFinalDot})
			c := dial(t, s)
			c.auth(s.APIKey)
			c.open(true)
			c.envelope("a@example.com", "b@example.com")
			if bdat {
				c.write("BDAT 6 LAST\r\nbody\r\n")
			} else {
				require.Equal(t, "354", code(c.cmd("DATA")))
				c.write("body\r\n.\r\n")
			}
			data, _, ok := c.allData()
			assert.False(t, ok)
			assert.Empty(t, data, "the 250 is withheld")
			c.expectClose(cutStatus)
			// The upstream had answered before the cut: the mail is there.
			mb := s.Mailbox()
			require.Len(t, mb, 1)
			assert.Equal(t, "body\r\n", string(mb[0].Data))
		})
	}
}

func TestFaultDropAfterBytes(t *testing.T) {
	t.Run("from server", func(t *testing.T) {
		s := NewServer(nil)
		defer s.Close()
		s.Inject(Fault{Kind: DropAfterBytes, FromServer: true, Bytes: 10})
		c := dial(t, s)
		c.auth(s.APIKey)
		c.send(wire.TypeChannelOpen, nil)
		c.expect(wire.TypeChannelReady)
		data, _, ok := c.allData()
		assert.False(t, ok)
		assert.Equal(t, "220 relayt", string(data))
		c.expectClose(cutStatus)
	})
	t.Run("to server", func(t *testing.T) {
		s := NewServer(nil)
		defer s.Close()
		const first = "EHLO x\r\n"
		s.Inject(Fault{Kind: DropAfterBytes, Bytes: int64(len(first) + 5)})
		c := dial(t, s)
		c.auth(s.APIKey)
		c.open(false)
		assert.Equal(t, "250", code(c.cmd("EHLO x")))
		c.write("NOOP\r\n") // crosses the count: "NOOP\r" goes upstream, then the cut
		data, _, ok := c.allData()
		assert.False(t, ok)
		assert.Empty(t, data)
		c.expectClose(cutStatus)
	})
	t.Run("counted over the channel", func(t *testing.T) {
		s := NewServer(nil)
		defer s.Close()
		s.Inject(Fault{Kind: DropAfterBytes, FromServer: true, Bytes: 1 << 20})
		c := dial(t, s)
		c.auth(s.APIKey)
		c.open(false)
		assert.Equal(t, "250", code(c.cmd("NOOP")))
		assert.Empty(t, s.Faults(), "taken by the channel")
	})
}

func TestFaultReplaceReply(t *testing.T) {
	tests := []struct {
		name      string
		fault     Fault
		run       func(t *testing.T, c *rawClient) string // returns the replaced reply
		want      string
		delivered int
	}{
		{
			name:  "multi-line EHLO",
			fault: Fault{Command: "ehlo", Reply: "250 mx.example\r\n250 SIZE 100"},
			run:   func(t *testing.T, c *rawClient) string { return c.cmd("EHLO x") },
			want:  "250-mx.example\r\n250 SIZE 100\r\n",
		},
		{
			name:  "MAIL rejected",
			fault: Fault{Command: "MAIL", Reply: "550 5.7.1 sender refused"},
			run: func(t *testing.T, c *rawClient) string {
				c.cmd("EHLO x")
				r := c.cmd("MAIL FROM:<a@example.com>")
				// The upstream never saw the MAIL: RCPT is out of sequence.
				assert.Equal(t, "502", code(c.cmd("RCPT TO:<b@example.com>")))
				return r
			},
			want: "550 5.7.1 sender refused\r\n",
		},
		{
			name:  "end of data rejected",
			fault: Fault{Command: ".", Reply: "554 5.7.1 rejected as spam"},
			run: func(t *testing.T, c *rawClient) string {
				c.envelope("a@example.com", "b@example.com")
				c.cmd("DATA")
				c.write(dotStuff("spam\r\n"))
				r := c.reply()
				sendMail(t, c, "a@example.com", []string{"b@example.com"}, "ham\r\n") // not affected
				return r
			},
			want:      "554 5.7.1 rejected as spam\r\n",
			delivered: 1,
		},
		{
			name:  "end of data temporary multi-line",
			fault: Fault{Command: ".", Reply: "451-4.3.0 try\r\n451 4.3.0 later"},
			run: func(t *testing.T, c *rawClient) string {
				c.envelope("a@example.com", "b@example.com")
				c.cmd("DATA")
				c.write(dotStuff("x\r\n"))
				return c.reply()
			},
			want: "451-4.3.0 try\r\n451 4.3.0 later\r\n",
		},
		{
			name:  "end of data accepted",
			fault: Fault{Command: ".", Reply: "250 2.0.0 queued as 42"},
			run: func(t *testing.T, c *rawClient) string {
				c.envelope("a@example.com", "b@example.com")
				c.cmd("DATA")
				c.write(dotStuff("x\r\n"))
				return c.reply()
			},
			want:      "250 2.0.0 queued as 42\r\n",
			delivered: 1,
		},
		{
			name:  "BDAT LAST rejected",
			fault: Fault{Command: ".", Reply: "552 5.3.4 too big"},
			run: func(t *testing.T, c *rawClient) string {
				c.envelope("a@example.com", "b@example.com")
				c.write("BDAT 3\r\nabc")
				assert.Equal(t, "250", code(c.reply()))
				c.write("BDAT 3 LAST\r\ndef")
				return c.reply()
			},
			want: "552 5.3.4 too big\r\n",
		},
		{
			name:  "BDAT chunk swallowed",
			fault: Fault{Command: "BDAT", Reply: "554 5.0.0 no"},
			run: func(t *testing.T, c *rawClient) string {
				c.envelope("a@example.com", "b@example.com")
				c.write("BDAT 6 LAST\r\nNOOP\r\n") // the chunk is not parsed as a command
				r := c.reply()
				assert.Equal(t, "250 2.0.0 Session reset\r\n", c.cmd("RSET"))
				return r
			},
			want: "554 5.0.0 no\r\n",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := NewServer(nil)
			defer s.Close()
			tt.fault.Kind = ReplaceReply
			s.Inject(tt.fault)
			c := dial(t, s)
			c.auth(s.APIKey)
			c.open(true)
			assert.Equal(t, tt.want, tt.run(t, c))
			assert.Len(t, s.Mailbox(), tt.delivered)
			assert.Empty(t, s.Faults())
		})
	}
}

func TestFaultReplaceReply421(t *testing.T) {
	for _, cmd := range []string{"MAIL", "."} {
		t.Run(cmd, func(t *testing.T) {
			s := NewServer(nil)
			defer s.Close()
			s.Inject(Fault{Kind: ReplaceReply, Command: cmd, Reply: "421 4.3.2 shutting down"})
			c := dial(t, s)
			c.auth(s.APIKey)
			c.open(false)
			c.sendAt(cmd, "")
			data, m, ok := c.allData()
			require.True(t, ok)
			assert.Equal(t, "421 4.3.2 shutting down\r\n", string(data))
			assert.Equal(t, wire.TypeChannelClosed, m.Type)
			assert.Empty(t, s.Mailbox())
			assert.Equal(t, "220", code(c.open(false)), "the WebSocket stays usable")
		})
	}
}

func TestFaultStallReply(t *testing.T) {
	for _, cmd := range []string{"MAIL", "."} {
		t.Run(cmd, func(t *testing.T) {
			s := NewServer(nil)
			defer s.Close()
			s.Inject(Fault{Kind: StallReply, Command: cmd})
			c := dial(t, s)
			c.auth(s.APIKey)
			c.open(false)
			c.sendAt(cmd, "NOOP\r\n")
			c.send(wire.TypeChannelClose, nil)
			data, m, ok := c.allData()
			require.True(t, ok)
			assert.Empty(t, string(data), "nothing answered")
			assert.Equal(t, wire.TypeChannelClosed, m.Type)
			assert.Empty(t, s.Mailbox())
		})
	}
}

func TestFaultCloseWebSocket(t *testing.T) {
	tests := []struct {
		name  string
		fault Fault
		want  websocket.StatusCode
	}{
		{"RCPT", Fault{Command: "RCPT", Recipient: "b@example.com", Code: websocket.StatusInternalError}, websocket.StatusInternalError},
		{"default code", Fault{Command: "RCPT"}, websocket.StatusGoingAway},
		{"end of data", Fault{Command: ".", Code: wire.StatusAuthFailed}, wire.StatusAuthFailed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := NewServer(nil)
			defer s.Close()
			tt.fault.Kind = CloseWebSocket
			s.Inject(tt.fault)
			c := dial(t, s)
			c.auth(s.APIKey)
			c.open(false)
			c.cmd("EHLO x")
			c.cmd("MAIL FROM:<a@example.com>")
			c.write("RCPT TO:<b@example.com>\r\n")
			if tt.fault.Command == "." {
				assert.Equal(t, "250", code(c.reply()))
				c.cmd("DATA")
				c.write("x\r\n.\r\n")
			}
			c.expectClose(tt.want)
			assert.Empty(t, s.Mailbox())
		})
	}
}

func TestFaultTimesAndOrder(t *testing.T) {
	s := NewServer(nil)
	defer s.Close()
	s.Inject(Fault{Kind: ReplaceReply, Command: "NOOP", Reply: "250 first", Times: 2})
	s.Inject(Fault{Kind: ReplaceReply, Command: "NOOP", Reply: "250 second", Times: -1})
	s.Inject(Fault{Kind: ReplaceReply, Reply: "250 any"})
	c := dial(t, s)
	c.auth(s.APIKey)
	c.open(false)
	assert.Equal(t, "250 any\r\n", c.cmd("EHLO x"))
	assert.Equal(t, "250 first\r\n", c.cmd("NOOP"))
	assert.Equal(t, "250 first\r\n", c.cmd("NOOP"))
	for range 3 {
		assert.Equal(t, "250 second\r\n", c.cmd("NOOP"))
	}
	assert.Equal(t, []Fault{{Kind: ReplaceReply, Command: "NOOP", Reply: "250 second", Times: -1}}, s.Faults())
	s.ClearFaults()
	assert.Equal(t, "250 2.0.0 I have successfully done nothing\r\n", c.cmd("NOOP"))
}

func TestInjectPanics(t *testing.T) {
	s := NewUnstartedServer(nil)
	defer s.Close()
	for _, f := range []Fault{
		{},
		{Kind: 99},
		{Kind: ReplaceReply},
		{Kind: ReplaceReply, Reply: "hello"},
		{Kind: ReplaceReply, Reply: "250 a\r\n251 b"},
		{Kind: ReplaceReply, Reply: "100 too low"},
		{Kind: ReplaceReply, Command: "DATA", Reply: "354 go ahead"},
		{Kind: ReplaceReply, Reply: "600 too high"},
		{Kind: ReplaceReply, Reply: "250 bare\rCR"},
		{Kind: DropAfterBytes, Bytes: -1},
	} {
		assert.Panics(t, func() { s.Inject(f) }, "%+v", f)
	}
}

// Options.Throttle refuses MAIL past its limit, the transaction goes
// nowhere, and the relay counts it.
func TestThrottle(t *testing.T) {
	s := NewServer(&Options{Throttle: &Throttle{Limit: 2, Per: time.Hour}})
	defer s.Close()
	c := dial(t, s)
	c.auth(s.APIKey)
	c.open(false)
	c.cmd("EHLO client.test")
	for i := range 2 {
		sendMail(t, c, "a@example.com", []string{"b@example.com"}, fmt.Sprint("accepted ", i, "\r\n"))
	}
	assert.Equal(t, "451 4.7.0 Throttling: too many messages, slow down", strings.TrimRight(c.cmd("MAIL FROM:<a@example.com>"), "\r\n"))
	assert.NotEqual(t, "250", code(c.cmd("RCPT TO:<b@example.com>")), "no transaction after the throttled MAIL")
	assert.Len(t, s.Mailbox(), 2)
	assert.Equal(t, 1, s.Stats().Throttled)
	assert.Panics(t, func() { NewServer(&Options{Throttle: &Throttle{Limit: 1, Reply: "250 ok"}}) })
}
