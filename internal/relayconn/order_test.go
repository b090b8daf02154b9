package relayconn_test

import (
	"bufio"
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mxrelay/mxrelay/internal/relayconn"
	"github.com/mxrelay/mxrelay/internal/wire"
)

// scriptRelay is a relay written by hand: it authenticates the client and
// then runs the test's script over the client's messages, which a reader
// delivers on in (so that the script can wait for a message with a bound
// without coder/websocket closing the connection).
type scriptRelay struct {
	t  *testing.T
	ws *websocket.Conn
	in chan wire.Message
}

func newScriptRelay(t *testing.T, script func(ctx context.Context, r *scriptRelay)) string {
	var wg sync.WaitGroup
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		ws, err := websocket.Accept(w, req, &websocket.AcceptOptions{Subprotocols: []string{wire.Subprotocol}})
		if err != nil {
			return
		}
		wg.Add(1)
		defer wg.Done()
		defer ws.CloseNow()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		r := &scriptRelay{t: t, ws: ws, in: make(chan wire.Message, 16)}
		go func() {
			defer close(r.in)
			for {
				_, p, err := ws.Read(ctx)
				if err != nil {
					return
				}
				m, err := wire.Decode(p)
				if err != nil {
					return
				}
				r.in <- m
			}
		}()
		if m := r.next(ctx); m.Type != wire.TypeAuthenticate {
			t.Errorf("first message %q, want AUTHENTICATE", m.Type)
			return
		}
		r.send(ctx, wire.TypeAuthenticateResponse, wire.AuthenticateResponse{Success: true})
		script(ctx, r)
		for range r.in { // until the client closes
		}
	}))
	t.Cleanup(func() { srv.CloseClientConnections(); srv.Close(); wg.Wait() })
	return "ws" + strings.TrimPrefix(srv.URL, "http") + "/smtp"
}

// next is the client's next message, or one of type "" if none comes.
func (r *scriptRelay) next(ctx context.Context) wire.Message {
	select {
	case m := <-r.in:
		return m
	case <-ctx.Done():
		return wire.Message{}
	}
}

func (r *scriptRelay) send(ctx context.Context, typ string, data any) {
	r.ws.Write(ctx, websocket.MessageText, wire.MustEncode(typ, data))
}

func (r *scriptRelay) greet(ctx context.Context, text string) {
	b, err := wire.EncodeData(wire.TypeFromServer, []byte(text+"\r\n"))
	if err == nil {
		r.ws.Write(ctx, websocket.MessageText, b)
	}
}

// expectOpen reads an SMTP_CHANNEL_OPEN and answers READY and a greeting.
func (r *scriptRelay) expectOpen(ctx context.Context, greeting string) bool {
	if m := r.next(ctx); m.Type != wire.TypeChannelOpen {
		r.t.Errorf("got %q, want SMTP_CHANNEL_OPEN", m.Type)
		return false
	}
	r.send(ctx, wire.TypeChannelReady, nil)
	r.greet(ctx, greeting)
	return true
}

func dialURL(t *testing.T, url string) *relayconn.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := relayconn.Dial(ctx, relayconn.Config{URL: url, APIKey: "k", AuthTimeout: 2 * time.Second, ChannelTimeout: 5 * time.Second})
	require.NoError(t, err)
	t.Cleanup(func() { c.Close(1000, "") })
	require.NoError(t, c.Authenticate(ctx))
	return c
}

func readGreeting(t *testing.T, ch *relayconn.Channel) string {
	t.Helper()
	line, err := bufio.NewReader(ch).ReadString('\n')
	require.NoError(t, err)
	return strings.TrimSpace(line)
}

// Messages carry no channel identifier: an SMTP_CHANNEL_OPEN written
// before the relay's SMTP_CHANNEL_CLOSED for the last channel could be
// taken for part of the old one, and a CLOSE written after it would close
// the new one (docs/protocol.md §6). The relay here holds its CLOSED back for a
// while after the CLOSE: nothing may come from the client meanwhile, and
// the OPEN that follows must open a working channel.
func TestNextOpenWaitsForTheLastChannelsClosed(t *testing.T) {
	early := make(chan string, 1)
	url := newScriptRelay(t, func(ctx context.Context, r *scriptRelay) {
		if !r.expectOpen(ctx, "220 first") {
			return
		}
		if m := r.next(ctx); m.Type != wire.TypeChannelClose {
			t.Errorf("got %q, want SMTP_CHANNEL_CLOSE", m.Type)
			return
		}
		hold, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
		m := r.next(hold)
		cancel()
		early <- m.Type // "" when the client waited, as it must
		r.send(ctx, wire.TypeChannelClosed, nil)
		if m.Type == "" {
			r.expectOpen(ctx, "220 second")
		}
	})
	c := dialURL(t, url)
	ch, err := c.OpenChannel(context.Background())
	require.NoError(t, err)
	assert.Equal(t, "220 first", readGreeting(t, ch))
	require.NoError(t, ch.Close())
	ch2, err := c.OpenChannel(context.Background())
	assert.Empty(t, <-early, "a message of the client's crossed the last channel's CLOSED")
	require.NoError(t, err)
	assert.Equal(t, "220 second", readGreeting(t, ch2))
}

// A relay that closed a channel on its own and answers a crossing CLOSE
// with a second CLOSED sends it while the next OPEN waits for READY: it
// belongs to the previous channel and is ignored (docs/protocol.md §6). And a
// channel the relay had already ended sends no CLOSE.
func TestClosedWhileOpeningIsTheLastChannels(t *testing.T) {
	extra := make(chan string, 1)
	url := newScriptRelay(t, func(ctx context.Context, r *scriptRelay) {
		if !r.expectOpen(ctx, "220 first") {
			return
		}
		r.send(ctx, wire.TypeChannelClosed, wire.ChannelClosed{Reason: "upstream hung up"})
		m := r.next(ctx)
		extra <- m.Type
		if m.Type != wire.TypeChannelOpen {
			return
		}
		r.send(ctx, wire.TypeChannelClosed, nil) // the stale answer
		r.send(ctx, wire.TypeChannelReady, nil)
		r.greet(ctx, "220 second")
	})
	c := dialURL(t, url)
	ch, err := c.OpenChannel(context.Background())
	require.NoError(t, err)
	assert.Equal(t, "220 first", readGreeting(t, ch))
	<-ch.Ended()
	require.NoError(t, ch.Close())
	ch2, err := c.OpenChannel(context.Background())
	assert.Equal(t, wire.TypeChannelOpen, <-extra, "after the relay's CLOSED, the next message is the OPEN")
	require.NoError(t, err)
	assert.Equal(t, "220 second", readGreeting(t, ch2))
	_, err = ch2.Write([]byte("NOOP\r\n"))
	assert.NoError(t, err, "the stale CLOSED did not end the new channel")
}
