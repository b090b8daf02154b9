package relaytest

import (
	"context"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/mxrelay/mxrelay/internal/wire"
)

func TestAuthenticate(t *testing.T) {
	s := NewServer(&Options{APIKeys: []string{"first-key-abcdef", "second-key-abcdef"}})
	defer s.Close()
	assert.Equal(t, "first-key-abcdef", s.APIKey)

	for _, key := range []string{"first-key-abcdef", "second-key-abcdef"} {
		c := dial(t, s)
		assert.Equal(t, wire.AuthenticateResponse{Success: true}, c.auth(key))
	}

	c := dial(t, s)
	r := c.auth(DefaultAPIKey) // not accepted: APIKeys is set
	assert.False(t, r.Success)
	assert.NotEmpty(t, r.Error)
	c.expectClose(wire.StatusAuthFailed)

	st := s.Stats()
	assert.Equal(t, 3, st.Connections)
	assert.Equal(t, 2, st.Authenticated)
	assert.Equal(t, 1, st.AuthFailures)
}

func TestDefaultKey(t *testing.T) {
	s := NewServer(nil)
	defer s.Close()
	require.Equal(t, DefaultAPIKey, s.APIKey)
	require.True(t, dial(t, s).auth(s.APIKey).Success)
}

func TestSubprotocol(t *testing.T) {
	tests := []struct {
		name    string
		opts    *Options
		offered []string
		want    string
	}{
		{"offered", nil, []string{wire.Subprotocol}, wire.Subprotocol},
		{"among others", nil, []string{"other", wire.Subprotocol}, wire.Subprotocol},
		{"other only", nil, []string{"other"}, ""},
		{"none offered", nil, nil, ""},
		{"NoSubprotocol", &Options{NoSubprotocol: true}, []string{wire.Subprotocol}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := NewServer(tt.opts)
			defer s.Close()
			c, _, err := dialOpts(t, s, &websocket.DialOptions{Subprotocols: tt.offered})
			require.NoError(t, err)
			assert.Equal(t, tt.want, c.ws.Subprotocol())
			assert.True(t, c.auth(s.APIKey).Success) // the protocol works either way
		})
	}
}

func TestAuthTimeout(t *testing.T) {
	s := NewServer(&Options{AuthTimeout: 50 * time.Millisecond})
	defer s.Close()
	c := dial(t, s)
	c.expectClose(wire.StatusAuthTimeout)
}

func TestProtocolErrors(t *testing.T) {
	tests := []struct {
		name string
		run  func(c *rawClient, s *Server)
	}{
		{"not JSON", func(c *rawClient, s *Server) {
			c.sendRaw(websocket.MessageText, []byte("hello"))
		}},
		{"no type", func(c *rawClient, s *Server) {
			c.sendRaw(websocket.MessageText, []byte(`{"data":{}}`))
		}},
		{"open before auth", func(c *rawClient, s *Server) {
			c.send(wire.TypeChannelOpen, wire.ChannelOpen{})
		}},
		{"unknown type before auth", func(c *rawClient, s *Server) {
			c.send("HELLO", nil)
		}},
		{"binary before auth", func(c *rawClient, s *Server) {
			c.sendRaw(websocket.MessageBinary, []byte("EHLO x\r\n"))
		}},
		{"second auth", func(c *rawClient, s *Server) {
			c.auth(s.APIKey)
			c.send(wire.TypeAuthenticate, wire.Authenticate{APIKey: s.APIKey})
		}},
		{"bad auth data", func(c *rawClient, s *Server) {
			c.sendRaw(websocket.MessageText, []byte(`{"type":"AUTHENTICATE","data":"key"}`))
		}},
		{"data without channel", func(c *rawClient, s *Server) {
			c.auth(s.APIKey)
			c.write("EHLO x\r\n")
		}},
		{"data not a string", func(c *rawClient, s *Server) {
			c.auth(s.APIKey)
			c.open(false)
			c.sendRaw(websocket.MessageText, []byte(`{"type":"SMTP_TO_SERVER","data":{"x":1}}`))
		}},
		{"binary frame on JSON channel", func(c *rawClient, s *Server) {
			c.auth(s.APIKey)
			c.open(false)
			c.sendRaw(websocket.MessageBinary, []byte("EHLO x\r\n"))
		}},
		{"JSON data on binary channel", func(c *rawClient, s *Server) {
			c.auth(s.APIKey)
			c.open(true)
			c.send(wire.TypeToServer, "EHLO x\r\n")
		}},
		{"second open", func(c *rawClient, s *Server) {
			c.auth(s.APIKey)
			c.open(false)
			c.send(wire.TypeChannelOpen, wire.ChannelOpen{})
		}},
		{"relay message from client", func(c *rawClient, s *Server) {
			c.auth(s.APIKey)
			c.send(wire.TypeChannelReady, nil)
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := NewServer(nil)
			defer s.Close()
			c := dial(t, s)
			tt.run(c, s)
			c.expectClose(websocket.StatusProtocolError)
		})
	}
}

func TestUnknownTypeIgnored(t *testing.T) {
	s := NewServer(nil)
	defer s.Close()
	c := dial(t, s)
	c.auth(s.APIKey)
	c.send("SOMETHING_NEW", map[string]int{"x": 1})
	c.sendRaw(websocket.MessageText, []byte(`{"type":"SMTP_CHANNEL_OPEN","data":{},"extra":true}`))
	c.expect(wire.TypeChannelReady)
}

func TestMessageTooBig(t *testing.T) {
	s := NewServer(nil)
	defer s.Close()
	c := dial(t, s)
	c.auth(s.APIKey)
	c.open(true)
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	_ = c.ws.Write(ctx, websocket.MessageBinary, make([]byte, wire.MaxData+1))
	c.expectClose(websocket.StatusMessageTooBig)
}

func TestControlTooBig(t *testing.T) {
	s := NewServer(nil)
	defer s.Close()
	c := dial(t, s)
	c.send(wire.TypeAuthenticate, wire.Authenticate{APIKey: strings.Repeat("k", wire.MaxControl)})
	c.expectClose(websocket.StatusMessageTooBig)

	// A data message may be larger.
	c = dial(t, s)
	c.auth(s.APIKey)
	c.open(false)
	body := strings.Repeat(strings.Repeat("x", 998)+"\r\n", 2*wire.MaxControl/1000)
	sendMail(t, c, "a@example.com", []string{"b@example.com"}, body)
	require.Len(t, s.Mailbox(), 1)
	assert.Equal(t, body, string(s.Mailbox()[0].Data))
}

func TestConversation(t *testing.T) {
	for _, binary := range []bool{false, true} {
		name := "json"
		if binary {
			name = "binary"
		}
		t.Run(name, func(t *testing.T) {
			s := NewServer(nil)
			defer s.Close()
			c := dial(t, s)
			require.True(t, c.auth(s.APIKey).Success)
			assert.Equal(t, "220 relaytest.local ESMTP Service Ready\r\n", c.open(binary))

			ehlo := c.cmd("EHLO client.example")
			for _, ext := range []string{"PIPELINING", "8BITMIME", "SMTPUTF8", "CHUNKING", "BINARYMIME"} {
				assert.Contains(t, ehlo, ext)
			}
			assert.NotContains(t, ehlo, "AUTH")
			assert.NotContains(t, ehlo, "STARTTLS")
			assert.Equal(t, "250", code(c.cmd("MAIL FROM:<alice@example.com>")))
			assert.Equal(t, "250", code(c.cmd("RCPT TO:<bob@example.com>")))
			assert.Equal(t, "250", code(c.cmd("RCPT TO:<carol@example.com>")))
			assert.Equal(t, "354", code(c.cmd("DATA")))

			body := "Subject: héllo\r\n\r\n.leading dot\r\n..two dots\r\nlast line\r\n"
			if binary {
				body += "raw \xff\xfe bytes\r\n" // not UTF-8: only binary can carry it
			}
			c.write(dotStuff(body))
			assert.Equal(t, "250", code(c.reply()))
			assert.Equal(t, "221", code(c.cmd("QUIT")))

			var closed wire.ChannelClosed
			require.NoError(t, c.expect(wire.TypeChannelClosed).Unmarshal(&closed))
			assert.NotEmpty(t, closed.Reason)

			mb := s.Mailbox()
			require.Len(t, mb, 1)
			assert.Equal(t, "alice@example.com", mb[0].From)
			assert.Equal(t, []string{"bob@example.com", "carol@example.com"}, mb[0].To)
			assert.Equal(t, body, string(mb[0].Data))
			assert.Equal(t, 1, mb[0].Session)
			assert.Empty(t, mb[0].User)
			assert.False(t, mb[0].Received.IsZero())

			st := s.Stats()
			assert.Equal(t, Stats{Connections: 1, Authenticated: 1, Channels: 1, UpstreamSessions: 1, Messages: 1}, st)
		})
	}
}

func TestMailboxIsACopy(t *testing.T) {
	s := NewServer(nil)
	defer s.Close()
	c := dial(t, s)
	c.auth(s.APIKey)
	c.open(false)
	sendMail(t, c, "a@example.com", []string{"b@example.com"}, "x\r\n")
	mb := s.Mailbox()
	mb[0].Data[0] = 'y'
	mb[0].To[0] = "z"
	assert.Equal(t, "x\r\n", string(s.Mailbox()[0].Data))
	assert.Equal(t, "b@example.com", s.Mailbox()[0].To[0])
}

// sendMail runs a whole transaction after the greeting and checks the 250.
func sendMail(t *testing.T, c *rawClient, from string, to []string, body string) {
	t.Helper()
	c.envelope(from, to...)
	require.Equal(t, "354", code(c.cmd("DATA")))
	c.write(dotStuff(body))
	require.Equal(t, "250", code(c.reply()))
}

func TestChannelCloseAndReopen(t *testing.T) {
	s := NewServer(nil)
	defer s.Close()
	c := dial(t, s)
	c.auth(s.APIKey)

	c.open(false)
	sendMail(t, c, "a@example.com", []string{"b@example.com"}, "one\r\n")
	c.send(wire.TypeChannelClose, nil)
	m := c.expect(wire.TypeChannelClosed)
	assert.Nil(t, m.Data)

	// Same WebSocket, no new AUTHENTICATE, binary this time.
	assert.Equal(t, "220", code(c.open(true)))
	sendMail(t, c, "a@example.com", []string{"c@example.com"}, "two\r\n")
	assert.Equal(t, "221", code(c.cmd("QUIT")))
	c.expect(wire.TypeChannelClosed)   // upstream hung up after 221
	c.send(wire.TypeChannelClose, nil) // crossing the relay's CLOSED: ignored

	assert.Equal(t, "220", code(c.open(false)))

	mb := s.Mailbox()
	require.Len(t, mb, 2)
	assert.Equal(t, 1, mb[0].Session)
	assert.Equal(t, 2, mb[1].Session)
	st := s.Stats()
	assert.Equal(t, 3, st.Channels)
	assert.Equal(t, 3, st.UpstreamSessions)
	assert.Equal(t, 1, st.Authenticated)
}

func TestOpenAfterRelayClosed(t *testing.T) {
	// The upstream hung up (QUIT); the client opens the next channel
	// without sending SMTP_CHANNEL_CLOSE, and late data for the old
	// channel is dropped, not a protocol error.
	s := NewServer(nil)
	defer s.Close()
	c := dial(t, s)
	c.auth(s.APIKey)
	c.open(false)
	assert.Equal(t, "221", code(c.cmd("QUIT")))
	c.expect(wire.TypeChannelClosed)
	c.write("NOOP\r\n")
	assert.Equal(t, "220", code(c.open(false)))
	assert.Equal(t, "250", code(c.cmd("NOOP")))
}

func TestSMTPAuth(t *testing.T) {
	s := NewServer(&Options{Users: map[string]string{"user": "secret"}})
	defer s.Close()
	c := dial(t, s)
	c.auth(s.APIKey)
	c.open(false)

	assert.Contains(t, c.cmd("EHLO client.example"), "AUTH PLAIN LOGIN")
	assert.Equal(t, "530", code(c.cmd("MAIL FROM:<a@example.com>")))
	// "\x00user\x00wrong" and "\x00user\x00secret"
	assert.Equal(t, "535", code(c.cmd("AUTH PLAIN AHVzZXIAd3Jvbmc=")))
	assert.Equal(t, "235", code(c.cmd("AUTH PLAIN AHVzZXIAc2VjcmV0")))
	sendMailAfterEHLO(t, c, "a@example.com", "b@example.com", "plain\r\n")
	assert.Equal(t, "221", code(c.cmd("QUIT")))
	c.expect(wire.TypeChannelClosed)

	c.open(false)
	assert.Equal(t, "250", code(c.cmd("EHLO client.example")))
	assert.Equal(t, "334 VXNlcm5hbWU6\r\n", c.cmd("AUTH LOGIN")) // "Username:"
	assert.Equal(t, "334 UGFzc3dvcmQ6\r\n", c.cmd("dXNlcg=="))   // "user"; "Password:"
	assert.Equal(t, "235", code(c.cmd("c2VjcmV0")))              // "secret"
	sendMailAfterEHLO(t, c, "a@example.com", "b@example.com", "login\r\n")

	mb := s.Mailbox()
	require.Len(t, mb, 2)
	assert.Equal(t, "user", mb[0].User)
	assert.Equal(t, "user", mb[1].User)
}

func TestSASLResponseIsNotACommand(t *testing.T) {
	// "NOOP" is valid base64: after a 334 it is a SASL response, and a
	// fault on NOOP must not fire on it.
	const user = "4\xe3\x8f" // base64 "NOOP"
	s := NewServer(&Options{Users: map[string]string{user: user}})
	defer s.Close()
	s.Inject(Fault{Kind: ReplaceReply, Command: "NOOP", Reply: "250 injected"})
	c := dial(t, s)
	c.auth(s.APIKey)
	c.open(false)
	c.cmd("EHLO client.example")
	assert.Equal(t, "334", code(c.cmd("AUTH LOGIN")))
	assert.Equal(t, "334", code(c.cmd("NOOP"))) // user name
	assert.Equal(t, "235", code(c.cmd("NOOP"))) // password
	assert.Len(t, s.Faults(), 1)
	assert.Equal(t, "250 injected\r\n", c.cmd("NOOP")) // a command at last
}

func sendMailAfterEHLO(t *testing.T, c *rawClient, from, to, body string) {
	t.Helper()
	require.Equal(t, "250", code(c.cmd("MAIL FROM:<"+from+">")))
	require.Equal(t, "250", code(c.cmd("RCPT TO:<"+to+">")))
	require.Equal(t, "354", code(c.cmd("DATA")))
	c.write(dotStuff(body))
	require.Equal(t, "250", code(c.reply()))
}

func TestPipelining(t *testing.T) {
	s := NewServer(nil)
	defer s.Close()
	s.Inject(Fault{Kind: ReplaceReply, Command: "RCPT", Recipient: "BOB@example.com",
		Reply: "550 5.1.1 <bob@example.com>: no such user"})
	c := dial(t, s)
	c.auth(s.APIKey)
	c.open(false)
	c.cmd("EHLO client.example")

	c.write("MAIL FROM:<a@example.com>\r\nRCPT TO:<x@example.com>\r\nRCPT TO:<bob@example.com>\r\nRCPT TO:<y@example.com>\r\nDATA\r\n")
	assert.Equal(t, "250", code(c.reply()))
	assert.Equal(t, "250", code(c.reply()))
	assert.Equal(t, "550 5.1.1 <bob@example.com>: no such user\r\n", c.reply())
	assert.Equal(t, "250", code(c.reply()))
	assert.Equal(t, "354", code(c.reply()))
	// Body, end of data and the next commands in one write.
	c.write("hello\r\n.\r\nRSET\r\nNOOP\r\n")
	assert.Equal(t, "250", code(c.reply()))
	assert.Equal(t, "250", code(c.reply()))
	assert.Equal(t, "250", code(c.reply()))

	mb := s.Mailbox()
	require.Len(t, mb, 1)
	assert.Equal(t, []string{"x@example.com", "y@example.com"}, mb[0].To)
	assert.Equal(t, "hello\r\n", string(mb[0].Data))
}

func TestSplitWrites(t *testing.T) {
	// Commands and the end of data split at every byte.
	s := NewServer(nil)
	defer s.Close()
	c := dial(t, s)
	c.auth(s.APIKey)
	c.open(true)
	stream := "EHLO x\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\nDATA\r\n"
	for i := range len(stream) {
		c.write(stream[i : i+1])
	}
	for range 3 {
		assert.Equal(t, "250", code(c.reply()))
	}
	assert.Equal(t, "354", code(c.reply()))
	body := "a\r\n..\r\n.\r\n"
	for i := range len(body) {
		c.write(body[i : i+1])
	}
	assert.Equal(t, "250", code(c.reply()))
	require.Len(t, s.Mailbox(), 1)
	assert.Equal(t, "a\r\n.\r\n", string(s.Mailbox()[0].Data))
}

func TestBDAT(t *testing.T) {
	s := NewServer(nil)
	defer s.Close()
	c := dial(t, s)
	c.auth(s.APIKey)
	c.open(true)
	c.cmd("EHLO client.example")

	chunk1 := "Subject: chunks\r\n\r\nnot the end:\r\n.\r\n"
	chunk2 := "QUIT\r\n\x00\xff binary\r\n"
	// All pipelined: RFC 3030 allows BDAT without waiting.
	c.write("MAIL FROM:<a@example.com> BODY=BINARYMIME\r\nRCPT TO:<b@example.com>\r\n" +
		"BDAT " + itoa(len(chunk1)) + "\r\n" + chunk1 +
		"BDAT " + itoa(len(chunk2)) + " LAST\r\n" + chunk2 + "NOOP\r\n")
	for range 4 {
		assert.Equal(t, "250", code(c.reply()))
	}
	assert.Equal(t, "250 2.0.0 I have successfully done nothing\r\n", c.reply())
	mb := s.Mailbox()
	require.Len(t, mb, 1)
	assert.Equal(t, chunk1+chunk2, string(mb[0].Data))

	// An empty last chunk ends the data too.
	c.write("MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\nBDAT 3\r\nabcBDAT 0 LAST\r\n")
	for range 4 {
		assert.Equal(t, "250", code(c.reply()))
	}
	require.Len(t, s.Mailbox(), 2)
	assert.Equal(t, "abc", string(s.Mailbox()[1].Data))
}

func itoa(n int) string { return strconv.Itoa(n) }

func TestMaxMessageBytes(t *testing.T) {
	s := NewServer(&Options{MaxMessageBytes: 10})
	defer s.Close()
	c := dial(t, s)
	c.auth(s.APIKey)
	c.open(false)
	assert.Contains(t, c.cmd("EHLO x"), "SIZE 10")
	c.cmd("MAIL FROM:<a@example.com>")
	c.cmd("RCPT TO:<b@example.com>")
	c.cmd("DATA")
	c.write(dotStuff("this is more than ten bytes\r\n"))
	assert.Equal(t, "552", code(c.reply()))
	assert.Empty(t, s.Mailbox())
}

func TestOnMessage(t *testing.T) {
	got := make(chan Message, 1)
	s := NewServer(&Options{OnMessage: func(m Message) { got <- m; panic("ignored") }})
	defer s.Close()
	c := dial(t, s)
	c.auth(s.APIKey)
	c.open(false)
	sendMail(t, c, "a@example.com", []string{"b@example.com"}, "hi\r\n")
	select {
	case m := <-got: // already there: it ran before the 250
		assert.Equal(t, "hi\r\n", string(m.Data))
	default:
		t.Fatal("OnMessage not called before the 250")
	}
	assert.Equal(t, "250", code(c.cmd("NOOP"))) // the panic did not kill the session
}

func TestLatency(t *testing.T) {
	const lat = 100 * time.Millisecond
	for _, l := range []Latency{{ToClient: lat}, {ToServer: lat}} {
		t.Run("", func(t *testing.T) {
			s := NewServer(&Options{Latency: l})
			defer s.Close()
			c := dial(t, s)
			start := time.Now()
			c.auth(s.APIKey)
			assert.GreaterOrEqual(t, time.Since(start), lat)
			c.open(false)

			// Several frames in flight at once keep their order and are
			// delayed once, not once each.
			start = time.Now()
			c.write("NOOP\r\n")
			c.write("RSET\r\n")
			c.write("NOOP\r\n")
			assert.Equal(t, "250 2.0.0 I have successfully done nothing\r\n", c.reply())
			assert.Equal(t, "250 2.0.0 Session reset\r\n", c.reply())
			assert.Equal(t, "250 2.0.0 I have successfully done nothing\r\n", c.reply())
			assert.GreaterOrEqual(t, time.Since(start), lat)
		})
	}
}

func TestCloseClientConnections(t *testing.T) {
	s := NewServer(nil)
	defer s.Close()
	c1 := dial(t, s)
	c1.auth(s.APIKey)
	c1.open(false)
	c2 := dial(t, s)

	s.CloseClientConnections()
	c1.expectClose(websocket.StatusServiceRestart)
	c2.expectClose(websocket.StatusServiceRestart)

	c3 := dial(t, s)
	assert.True(t, c3.auth(s.APIKey).Success)
	assert.Equal(t, "220", code(c3.open(false)))
}

func TestCloseClientConnectionsCutsSilentClients(t *testing.T) {
	// A client that never reads cannot answer the close frame: the relay
	// cuts it after the grace period instead of hanging.
	s := NewServer(nil)
	defer s.Close()
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	ws, _, err := websocket.Dial(ctx, s.URL, nil)
	require.NoError(t, err)
	defer ws.CloseNow()
	s.CloseClientConnections()
	s.mu.Lock()
	defer s.mu.Unlock()
	assert.Empty(t, s.conns)
}

func TestSetDown(t *testing.T) {
	s := NewServer(nil)
	defer s.Close()
	c := dial(t, s)
	c.auth(s.APIKey)

	s.SetDown(true)
	_, resp, err := dialOpts(t, s, nil)
	require.Error(t, err)
	require.NotNil(t, resp)
	assert.Equal(t, http.StatusServiceUnavailable, resp.StatusCode)
	assert.Equal(t, "220", code(c.open(false))) // existing connections untouched

	s.SetDown(false)
	assert.True(t, dial(t, s).auth(s.APIKey).Success)
}

func TestWrongPath(t *testing.T) {
	s := NewServer(nil)
	defer s.Close()
	hc := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	resp, err := hc.Get("http" + s.URL[len("ws"):len(s.URL)-len(wire.DefaultPath)] + "/other")
	require.NoError(t, err)
	resp.Body.Close()
	assert.Equal(t, http.StatusNotFound, resp.StatusCode)
}

func TestCloseLeavesNothing(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	s := NewServer(nil)
	c := dial(t, s) // answers the close frame
	c.auth(s.APIKey)
	c.open(true)
	c.cmd("EHLO x")
	c.write("MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\nBDAT 100 LAST\r\nhalf")
	c2 := dial(t, s)
	c2.auth(s.APIKey)
	c2.open(false)
	c2.cmd("EHLO x")
	c2.cmd("MAIL FROM:<a@example.com>")
	c2.cmd("RCPT TO:<b@example.com>")
	c2.cmd("DATA")
	c2.write("in the middle of the body")

	s.Close()
	c.expectClose(websocket.StatusGoingAway)
	c2.expectClose(websocket.StatusGoingAway)
	s.Close() // twice is fine
	assert.Empty(t, s.Mailbox())
}

func TestCloseUnstarted(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	s := NewUnstartedServer(nil)
	assert.Empty(t, s.URL)
	s.Close()
}

func TestUnstartedThenStart(t *testing.T) {
	s := NewUnstartedServer(&Options{Domain: "mx.test"})
	s.Start()
	defer s.Close()
	assert.Panics(t, s.Start)
	c := dial(t, s)
	c.auth(s.APIKey)
	assert.Equal(t, "220 mx.test ESMTP Service Ready\r\n", c.open(false))
}

func TestDisableBinary(t *testing.T) {
	s := NewServer(&Options{DisableBinary: true})
	defer s.Close()
	c := dial(t, s)
	c.auth(s.APIKey)
	c.send(wire.TypeChannelOpen, wire.ChannelOpen{Binary: true})
	var r wire.ChannelOpen
	require.NoError(t, c.expect(wire.TypeChannelReady).Unmarshal(&r))
	assert.False(t, r.Binary)
	assert.Equal(t, "220", code(c.reply()))
}

// OnSMTPData reports each channel's SMTP stream in the unit DropAfterBytes
// counts: a cut after k bytes is seen as the first k bytes of the stream.
func TestOnSMTPData(t *testing.T) {
	var mu sync.Mutex
	got := map[bool][]byte{}
	var ids []SMTPData
	s := NewServer(&Options{OnSMTPData: func(d SMTPData) {
		mu.Lock()
		defer mu.Unlock()
		got[d.FromServer] = append(got[d.FromServer], d.Data...)
		ids = append(ids, SMTPData{Conn: d.Conn, Channel: d.Channel})
		if string(d.Data) == "NOOP\r\n" {
			panic("recovered and logged")
		}
	}})
	defer s.Close()
	s.Inject(Fault{Kind: DropAfterBytes, Bytes: int64(len("NOOP\r\nEHL"))})
	c := dial(t, s)
	c.auth(s.APIKey)
	greeting := c.open(true)
	noop := c.cmd("NOOP")
	assert.Equal(t, "250", code(noop))
	c.write("EHLO x\r\n")
	_, _, ok := c.allData()
	assert.False(t, ok, "cut")
	c.expectClose(cutStatus)

	mu.Lock()
	defer mu.Unlock()
	assert.Equal(t, "NOOP\r\nEHL", string(got[false]), "up to the cut")
	assert.Equal(t, greeting+noop, string(got[true]))
	for _, id := range ids {
		assert.Equal(t, SMTPData{Conn: 1, Channel: 1}, id)
	}
}
