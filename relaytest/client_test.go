package relaytest

import (
	"bytes"
	"context"
	"net/http"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/stretchr/testify/require"

	"github.com/mxrelay/mxrelay/internal/wire"
)

// testTimeout bounds every wait of the raw client, so that a broken relay
// fails a test instead of hanging it.
const testTimeout = 5 * time.Second

// rawClient speaks the protocol by hand over a coder/websocket connection.
// Its reads run in one goroutine (recvLoop) so that close frames and pings
// are always answered; the test takes frames from frames.
type rawClient struct {
	t      *testing.T
	ws     *websocket.Conn
	frames chan frame
	done   chan struct{}
	closed error // the read error that ended recvLoop, valid after done
	binary bool
	smtp   []byte // SMTP bytes received and not yet consumed by reply
}

type frame struct {
	typ  websocket.MessageType
	data []byte
}

func dialOpts(t *testing.T, s *Server, opts *websocket.DialOptions) (*rawClient, *http.Response, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	ws, resp, err := websocket.Dial(ctx, s.URL, opts)
	if err != nil {
		return nil, resp, err
	}
	ws.SetReadLimit(wire.ReadLimit)
	c := &rawClient{t: t, ws: ws, frames: make(chan frame, 1024), done: make(chan struct{})}
	go c.recvLoop()
	t.Cleanup(func() {
		_ = ws.CloseNow()
		<-c.done
	})
	return c, resp, nil
}

func dial(t *testing.T, s *Server) *rawClient {
	t.Helper()
	c, _, err := dialOpts(t, s, &websocket.DialOptions{Subprotocols: []string{wire.Subprotocol}})
	require.NoError(t, err)
	return c
}

func (c *rawClient) recvLoop() {
	defer close(c.done)
	for {
		typ, data, err := c.ws.Read(context.Background())
		if err != nil {
			c.closed = err
			return
		}
		c.frames <- frame{typ, data}
	}
}

// err returns the error that ended the connection, or nil while it is
// open.
func (c *rawClient) err() error {
	select {
	case <-c.done:
		return c.closed
	default:
		return nil
	}
}

// next returns the next frame; ok is false when the connection ended.
func (c *rawClient) next() (frame, bool) {
	c.t.Helper()
	select {
	case f := <-c.frames:
		return f, true
	default:
	}
	select {
	case f := <-c.frames:
		return f, true
	case <-c.done:
		select {
		case f := <-c.frames:
			return f, true
		default:
			return frame{}, false
		}
	case <-time.After(testTimeout):
		c.t.Fatal("timed out waiting for a frame")
		return frame{}, false
	}
}

// expect returns the next control message, which must be of type typ.
func (c *rawClient) expect(typ string) wire.Message {
	c.t.Helper()
	f, ok := c.next()
	require.True(c.t, ok, "connection ended (%v) while waiting for %s", c.err(), typ)
	require.Equal(c.t, websocket.MessageText, f.typ, "got a binary frame %q while waiting for %s", f.data, typ)
	m, err := wire.Decode(f.data)
	require.NoError(c.t, err)
	require.Equal(c.t, typ, m.Type, "message: %s", f.data)
	return m
}

// expectClose waits for the end of the connection and checks its status
// (-1: cut without a close frame). Frames still arriving are skipped.
func (c *rawClient) expectClose(code websocket.StatusCode) {
	c.t.Helper()
	select {
	case <-c.done:
	case <-time.After(testTimeout):
		c.t.Fatal("timed out waiting for the connection to end")
	}
	require.Equal(c.t, code, websocket.CloseStatus(c.closed), "read error: %v", c.closed)
}

func (c *rawClient) send(typ string, data any) {
	c.t.Helper()
	c.sendRaw(websocket.MessageText, wire.MustEncode(typ, data))
}

func (c *rawClient) sendRaw(typ websocket.MessageType, p []byte) {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	require.NoError(c.t, c.ws.Write(ctx, typ, p))
}

func (c *rawClient) auth(key string) wire.AuthenticateResponse {
	c.t.Helper()
	c.send(wire.TypeAuthenticate, wire.Authenticate{APIKey: key})
	var r wire.AuthenticateResponse
	require.NoError(c.t, c.expect(wire.TypeAuthenticateResponse).Unmarshal(&r))
	return r
}

// open opens a channel and returns the greeting.
func (c *rawClient) open(binary bool) string {
	c.t.Helper()
	c.send(wire.TypeChannelOpen, wire.ChannelOpen{Binary: binary})
	var r wire.ChannelOpen
	require.NoError(c.t, c.expect(wire.TypeChannelReady).Unmarshal(&r))
	require.Equal(c.t, binary, r.Binary)
	c.binary = binary
	c.smtp = nil
	return c.reply()
}

// write sends SMTP bytes in the channel's encoding.
func (c *rawClient) write(s string) {
	c.t.Helper()
	if c.binary {
		c.sendRaw(websocket.MessageBinary, []byte(s))
		return
	}
	b, err := wire.EncodeData(wire.TypeToServer, []byte(s))
	require.NoError(c.t, err)
	c.sendRaw(websocket.MessageText, b)
}

// reply returns the next complete SMTP reply (all its lines, CRLFs
// included), reading data frames as needed.
func (c *rawClient) reply() string {
	c.t.Helper()
	for {
		if n := replyEnd(c.smtp); n >= 0 {
			r := string(c.smtp[:n])
			c.smtp = c.smtp[n:]
			return r
		}
		f, ok := c.next()
		require.True(c.t, ok, "connection ended (%v) while waiting for a reply; have %q", c.err(), c.smtp)
		c.smtp = append(c.smtp, c.dataOf(f)...)
	}
}

// dataOf returns the SMTP bytes of a data frame, failing on anything else.
func (c *rawClient) dataOf(f frame) []byte {
	c.t.Helper()
	if f.typ == websocket.MessageBinary {
		require.True(c.t, c.binary, "binary frame on a JSON channel")
		return f.data
	}
	m, err := wire.Decode(f.data)
	require.NoError(c.t, err)
	require.Equal(c.t, wire.TypeFromServer, m.Type, "expected SMTP data, got %s", f.data)
	require.False(c.t, c.binary, "JSON data on a binary channel")
	p, err := wire.DecodeData(m)
	require.NoError(c.t, err)
	return p
}

// cmd sends a command line and returns its reply.
func (c *rawClient) cmd(line string) string {
	c.t.Helper()
	c.write(line + "\r\n")
	return c.reply()
}

// code returns the code of a reply as a string, for short assertions.
func code(reply string) string {
	if len(reply) < 3 {
		return reply
	}
	return reply[:3]
}

// allData reads data frames until the next control message, which it
// returns, with the SMTP bytes before it.
func (c *rawClient) allData() ([]byte, wire.Message, bool) {
	c.t.Helper()
	var out []byte
	out = append(out, c.smtp...)
	c.smtp = nil
	for {
		f, ok := c.next()
		if !ok {
			return out, wire.Message{}, false
		}
		if f.typ == websocket.MessageText {
			m, err := wire.Decode(f.data)
			require.NoError(c.t, err)
			if m.Type != wire.TypeFromServer {
				return out, m, true
			}
		}
		out = append(out, c.dataOf(f)...)
	}
}

// session runs EHLO, MAIL, RCPTs and returns after the 250s.
func (c *rawClient) envelope(from string, to ...string) {
	c.t.Helper()
	require.Equal(c.t, "250", code(c.cmd("EHLO client.example")))
	require.Equal(c.t, "250", code(c.cmd("MAIL FROM:<"+from+">")))
	for _, r := range to {
		require.Equal(c.t, "250", code(c.cmd("RCPT TO:<"+r+">")))
	}
}

// dotStuff returns body (CRLF lines) dot-stuffed and terminated.
// sendAt sends, in a fresh transaction, the command cmd names ("MAIL", or
// "." for the end of data) without reading its reply, followed by after.
func (c *rawClient) sendAt(cmd, after string) {
	c.t.Helper()
	if cmd == "." {
		c.envelope("a@example.com", "b@example.com")
		c.cmd("DATA")
		c.write("x\r\n.\r\n" + after)
		return
	}
	c.cmd("EHLO x")
	c.write("MAIL FROM:<a@example.com>\r\n" + after)
}

func dotStuff(body string) string {
	var b bytes.Buffer
	for _, l := range bytes.SplitAfter([]byte(body), []byte("\r\n")) {
		if len(l) > 0 && l[0] == '.' {
			b.WriteByte('.')
		}
		b.Write(l)
	}
	b.WriteString(".\r\n")
	return b.String()
}
