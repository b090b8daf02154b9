package relaytest

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"net"
	"strings"
	"testing"

	"github.com/coder/websocket"
	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mxrelay/mxrelay/internal/fakesmtp"
	"github.com/mxrelay/mxrelay/internal/testcert"
	"github.com/mxrelay/mxrelay/internal/wire"
)

func TestExternalUpstream(t *testing.T) {
	up := NewServer(nil) // only its in-process SMTP server is used
	defer up.Close()
	s := NewServer(&Options{UpstreamAddr: up.SMTPAddr})
	defer s.Close()
	assert.Equal(t, up.SMTPAddr, s.SMTPAddr)

	c := dial(t, s)
	c.auth(s.APIKey)
	c.open(false)
	sendMail(t, c, "a@example.com", []string{"b@example.com"}, "via external\r\n")
	assert.Empty(t, s.Mailbox())
	require.Len(t, up.Mailbox(), 1)
	assert.Equal(t, "via external\r\n", string(up.Mailbox()[0].Data))
	assert.Equal(t, 0, s.Stats().UpstreamSessions)
	assert.Equal(t, 1, up.Stats().UpstreamSessions)

	// With an external upstream, replacing the reply to the end of data
	// does not stop the delivery.
	s.Inject(Fault{Kind: ReplaceReply, Command: ".", Reply: "554 5.0.0 said no"})
	c.envelope("a@example.com", "c@example.com")
	c.cmd("DATA")
	c.write(dotStuff("replaced\r\n"))
	assert.Equal(t, "554 5.0.0 said no\r\n", c.reply())
	assert.Len(t, up.Mailbox(), 2)
	assert.Equal(t, "250", code(c.cmd("NOOP")))
}

func TestUpstreamUnreachable(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := ln.Addr().String()
	require.NoError(t, ln.Close())

	s := NewServer(&Options{UpstreamAddr: addr})
	defer s.Close()
	c := dial(t, s)
	c.auth(s.APIKey)
	c.send(wire.TypeChannelOpen, nil)
	var e wire.ChannelError
	require.NoError(t, c.expect(wire.TypeChannelError).Unmarshal(&e))
	assert.Contains(t, e.Error, "upstream unreachable")
	assert.Equal(t, 0, s.Stats().Channels)
}

func TestUpstreamNotUTF8(t *testing.T) {
	const greeting = "220 caf\xe9 ESMTP\r\n" // Latin-1
	addr := fakesmtp.Listen(t, func(c *fakesmtp.Conn) {
		c.Raw(greeting)
		c.Byte() // until the relay hangs up
	}).Addr
	s := NewServer(&Options{UpstreamAddr: addr})
	defer s.Close()

	c := dial(t, s)
	c.auth(s.APIKey)
	c.send(wire.TypeChannelOpen, nil)
	c.expect(wire.TypeChannelReady)
	var e wire.ChannelError
	require.NoError(t, c.expect(wire.TypeChannelError).Unmarshal(&e))
	assert.Contains(t, e.Error, "UTF-8")

	// A binary channel carries the bytes as they are.
	assert.Equal(t, greeting, c.open(true))
}

func TestUpstreamHangsUpMidReply(t *testing.T) {
	addr := fakesmtp.Listen(t, func(c *fakesmtp.Conn) {
		c.Raw("220 ok\r\n421-going")
	}).Addr
	s := NewServer(&Options{UpstreamAddr: addr})
	defer s.Close()
	c := dial(t, s)
	c.auth(s.APIKey)
	c.open(false)
	data, m, ok := c.allData()
	require.True(t, ok)
	assert.Equal(t, "421-going", string(data), "a partial last reply is still forwarded")
	var closed wire.ChannelClosed
	require.NoError(t, m.Unmarshal(&closed))
	assert.Equal(t, wire.TypeChannelClosed, m.Type)
	assert.NotEmpty(t, closed.Reason)
}

func TestLargeReplyChunked(t *testing.T) {
	// A reply larger than a JSON data message can hold, with multi-byte
	// characters across the chunk boundary.
	reply := strings.Repeat("220-"+strings.Repeat("é", 1000)+"\r\n", 300) + "220 end\r\n"
	addr := fakesmtp.Listen(t, func(c *fakesmtp.Conn) {
		c.Raw(reply)
		c.Byte()
	}).Addr
	for _, binary := range []bool{false, true} {
		s := NewServer(&Options{UpstreamAddr: addr})
		c := dial(t, s)
		c.auth(s.APIKey)
		c.send(wire.TypeChannelOpen, wire.ChannelOpen{Binary: binary})
		c.expect(wire.TypeChannelReady)
		c.binary = binary
		assert.Equal(t, reply, c.reply())
		s.Close()
	}
}

// TestGoSMTPClientThroughRelay runs go-smtp's own client over a binary
// channel: STARTTLS, AUTH and a message, with byte-exact delivery.
func TestGoSMTPClientThroughRelay(t *testing.T) {
	cert, pool := selfSigned(t, DefaultDomain)
	s := NewServer(&Options{
		TLSConfig: &tls.Config{Certificates: []tls.Certificate{cert}},
		Users:     map[string]string{"user": "secret"},
	})
	defer s.Close()

	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	ws, _, err := websocket.Dial(ctx, s.URL, &websocket.DialOptions{Subprotocols: []string{wire.Subprotocol}})
	require.NoError(t, err)
	defer ws.CloseNow()
	require.NoError(t, ws.Write(ctx, websocket.MessageText, wire.MustEncode(wire.TypeAuthenticate, wire.Authenticate{APIKey: s.APIKey})))
	_, _, err = ws.Read(ctx)
	require.NoError(t, err)
	require.NoError(t, ws.Write(ctx, websocket.MessageText, wire.MustEncode(wire.TypeChannelOpen, wire.ChannelOpen{Binary: true})))
	_, ready, err := ws.Read(ctx)
	require.NoError(t, err)
	require.JSONEq(t, `{"type":"SMTP_CHANNEL_READY","data":{"binary":true}}`, string(ready))

	nc := websocket.NetConn(ctx, ws, websocket.MessageBinary)
	sc, err := smtp.NewClientStartTLS(nc, &tls.Config{RootCAs: pool, ServerName: DefaultDomain})
	require.NoError(t, err)
	_, isTLS := sc.TLSConnectionState()
	require.True(t, isTLS)
	require.NoError(t, sc.Auth(sasl.NewPlainClient("", "user", "secret")))
	body := "Subject: over TLS\r\n\r\n.dot\r\n\x00\xff\r\n"
	require.NoError(t, sc.SendMail("a@example.com", []string{"b@example.com"}, strings.NewReader(body)))
	require.NoError(t, sc.Quit())

	mb := s.Mailbox()
	require.Len(t, mb, 1)
	assert.Equal(t, body, string(mb[0].Data))
	assert.Equal(t, "user", mb[0].User)
}

func selfSigned(t *testing.T, host string) (tls.Certificate, *x509.CertPool) {
	t.Helper()
	cert, pool, err := testcert.New(host)
	require.NoError(t, err)
	return cert, pool
}

// TestPairingSurvivesAReusedPort: the relay pairs a reply to an end of
// data with the message stored through its upstream connection, which it
// knows by the connection's local address. go-smtp may store a BDAT
// message after the relay closed that connection, when the kernel may
// already have given the port to the next one (on loopback, at once). The
// late message must not be paired with the new connection's first reply:
// a fault replacing that reply would withdraw the wrong message, and the
// mailbox would keep one the client was told was refused (TestChaos saw
// such a duplicate about once in twenty runs).
func TestPairingSurvivesAReusedPort(t *testing.T) {
	s := NewUnstartedServer(nil)
	const addr = "127.0.0.1:40000"
	s.sessionStarted(addr, 1)
	s.deliver(addr, 1, Message{From: "first"})
	id1, ok := s.takeStored(addr)
	require.True(t, ok)

	// The relay closes connection 1; connection 2 gets the same port
	// before go-smtp's goroutine for 1 stores its last message.
	s.sessionStarted(addr, 2)
	s.deliver(addr, 1, Message{From: "late"})
	s.sessionEnded(addr, 1) // Logout of 1 must not undo 2
	_, ok = s.takeStored(addr)
	assert.False(t, ok, "the late message of connection 1 is not connection 2's")

	s.deliver(addr, 2, Message{From: "second"})
	id2, ok := s.takeStored(addr)
	require.True(t, ok)
	assert.Greater(t, id2, id1)
	s.withdraw(id2)
	var from []string
	for _, m := range s.Mailbox() {
		from = append(from, m.From)
	}
	assert.Equal(t, []string{"first", "late"}, from, "the withdrawn message is connection 2's")
}
