package mxrelay_test

import (
	"bufio"
	"context"
	"crypto/sha1"
	"encoding/base64"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mxrelay/mxrelay"
	"github.com/mxrelay/mxrelay/internal/testkit"
	"github.com/mxrelay/mxrelay/internal/wire"
)

func TestRelayProtocolErrors(t *testing.T) {
	for _, tc := range []struct {
		name   string
		script func(ctx context.Context, ws *websocket.Conn)
		code   websocket.StatusCode // zero: 1002
	}{
		{"non-JSON text", func(ctx context.Context, ws *websocket.Conn) {
			testkit.AuthOK(ctx, ws)
			ws.Write(ctx, websocket.MessageText, []byte("hello"))
		}, 0},
		{"JSON without type", func(ctx context.Context, ws *websocket.Conn) {
			testkit.AuthOK(ctx, ws)
			ws.Write(ctx, websocket.MessageText, []byte(`{"data":{}}`))
		}, 0},
		{"type not a string", func(ctx context.Context, ws *websocket.Conn) {
			testkit.AuthOK(ctx, ws)
			ws.Write(ctx, websocket.MessageText, []byte(`{"type":7}`))
		}, 0},
		{"binary frame outside a binary channel", func(ctx context.Context, ws *websocket.Conn) {
			testkit.AuthOK(ctx, ws)
			ws.Read(ctx) // channel open
			testkit.SendFrame(ctx, ws, wire.TypeChannelReady, nil)
			ws.Write(ctx, websocket.MessageBinary, []byte("220 hi\r\n"))
		}, 0},
		{"binary agreed but not asked", func(ctx context.Context, ws *websocket.Conn) {
			testkit.AuthOK(ctx, ws)
			ws.Read(ctx)
			testkit.SendFrame(ctx, ws, wire.TypeChannelReady, wire.ChannelOpen{Binary: true})
		}, 0},
		{"control message over 64 KiB", func(ctx context.Context, ws *websocket.Conn) {
			testkit.AuthOK(ctx, ws)
			testkit.SendFrame(ctx, ws, "X_PADDING", strings.Repeat("x", 70<<10))
		}, websocket.StatusMessageTooBig},
		{"duplicate keys: a refusal followed by a success", func(ctx context.Context, ws *websocket.Conn) {
			ws.Read(ctx) // AUTHENTICATE
			ws.Write(ctx, websocket.MessageText, []byte(`{"type":"AUTHENTICATE_RESPONSE","data":{"success":false},"data":{"success":true}}`))
		}, 0},
		{"duplicate keys: two types", func(ctx context.Context, ws *websocket.Conn) {
			testkit.AuthOK(ctx, ws)
			ws.Read(ctx) // channel open
			ws.Write(ctx, websocket.MessageText, []byte(`{"type":"SMTP_CHANNEL_ERROR","type":"SMTP_CHANNEL_READY","data":{"error":"x"}}`))
		}, 0},
		{"frame over 1 MiB", func(ctx context.Context, ws *websocket.Conn) {
			testkit.AuthOK(ctx, ws)
			testkit.SendFrame(ctx, ws, wire.TypeFromServer, strings.Repeat("x", 1100<<10))
		}, websocket.StatusMessageTooBig},
		// The limits hold while a channel is open too (a client reading
		// the channel through coder/websocket's NetConn would have lifted
		// them for the whole connection).
		{"control message over 64 KiB in an open channel", func(ctx context.Context, ws *websocket.Conn) {
			testkit.AuthOK(ctx, ws)
			ws.Read(ctx) // channel open
			testkit.SendFrame(ctx, ws, wire.TypeChannelReady, nil)
			testkit.SendFrame(ctx, ws, wire.TypeFromServer, "220 mx ESMTP\r\n")
			ws.Read(ctx) // EHLO
			testkit.SendFrame(ctx, ws, "X_PADDING", strings.Repeat("x", 70<<10))
		}, websocket.StatusMessageTooBig},
		{"frame over 1 MiB in an open channel", func(ctx context.Context, ws *websocket.Conn) {
			testkit.AuthOK(ctx, ws)
			ws.Read(ctx)
			testkit.SendFrame(ctx, ws, wire.TypeChannelReady, nil)
			testkit.SendFrame(ctx, ws, wire.TypeFromServer, "220 mx ESMTP\r\n")
			ws.Read(ctx)
			testkit.SendFrame(ctx, ws, wire.TypeFromServer, "250-"+strings.Repeat("x", 1100<<10))
		}, websocket.StatusMessageTooBig},
		{"SMTP data with no channel", func(ctx context.Context, ws *websocket.Conn) {
			testkit.AuthOK(ctx, ws)
			testkit.SendFrame(ctx, ws, wire.TypeFromServer, "220 hi\r\n")
		}, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := testkit.NewFakeRelay(t, []string{wire.Subprotocol}, tc.script)
			c, err := mxrelay.New(f.WSURL(), "key", testkit.Fast(&mxrelay.Options{MaxReconnectAttempts: 2, DisableBinary: true}))
			require.NoError(t, err)
			defer c.Close(context.Background())
			_, err = c.Send(testkit.Ctx(t), testkit.Mail("x"))
			var ce *mxrelay.ConnectError
			require.ErrorAs(t, err, &ce)
			var pe *mxrelay.ProtocolError
			assert.ErrorAs(t, err, &pe, "%v", err)
			require.Eventually(t, func() bool { return len(f.CloseCodes()) == 2 }, 5*time.Second, 5*time.Millisecond)
			want := tc.code
			if want == 0 {
				want = websocket.StatusProtocolError
			}
			for _, code := range f.CloseCodes() {
				assert.Equal(t, want, code)
			}
		})
	}
}

func TestRelayUnknownTypesAreIgnored(t *testing.T) {
	f := testkit.NewFakeRelay(t, []string{wire.Subprotocol}, func(ctx context.Context, ws *websocket.Conn) {
		_, _, err := ws.Read(ctx)
		if err != nil {
			return
		}
		testkit.SendFrame(ctx, ws, "RELAY_NEWS", map[string]any{"motd": "hi"})
		ws.Write(ctx, websocket.MessageText, []byte(`{"type":"AUTHENTICATE_RESPONSE","data":{"success":false,"error":"nope","extra":1},"more":true}`))
		ws.Close(wire.StatusAuthFailed, "bad key")
	})
	c, err := mxrelay.New(f.WSURL(), "key", testkit.Fast(nil))
	require.NoError(t, err)
	defer c.Close(context.Background())
	_, err = c.Send(testkit.Ctx(t), testkit.Mail("x"))
	require.ErrorIs(t, err, mxrelay.ErrAuthFailed, "the unknown message was skipped and the refusal understood")
	assert.Contains(t, err.Error(), "nope")
}

func TestRelayCloses4003(t *testing.T) {
	f := testkit.NewFakeRelay(t, nil, func(ctx context.Context, ws *websocket.Conn) {
		ws.Read(ctx)
		ws.Close(wire.StatusAuthFailed, "authentication failed")
	})
	c, err := mxrelay.New(f.WSURL(), "key", testkit.Fast(nil))
	require.NoError(t, err)
	defer c.Close(context.Background())
	_, err = c.Send(testkit.Ctx(t), testkit.Mail("x"))
	require.ErrorIs(t, err, mxrelay.ErrAuthFailed)
	assert.Equal(t, 1, f.Conns(), "4003 is permanent: no reconnect")
}

func TestRelayWithoutSubprotocolIsAccepted(t *testing.T) {
	f := testkit.NewFakeRelay(t, nil, func(ctx context.Context, ws *websocket.Conn) {
		testkit.AuthOK(ctx, ws)
		ws.Read(ctx)
		testkit.SendFrame(ctx, ws, wire.TypeChannelError, wire.ChannelError{Error: "no upstream"})
	})
	c, err := mxrelay.New(f.WSURL(), "key", testkit.Fast(&mxrelay.Options{MaxReconnectAttempts: 1}))
	require.NoError(t, err)
	defer c.Close(context.Background())
	_, err = c.Send(testkit.Ctx(t), testkit.Mail("x"))
	var re *mxrelay.RelayError
	require.ErrorAs(t, err, &re, "the relay was spoken to: the channel error came back")
	assert.Contains(t, err.Error(), "no upstream")
}

func TestRelayCloseCodes(t *testing.T) {
	for _, code := range []websocket.StatusCode{websocket.StatusGoingAway, websocket.StatusInternalError, websocket.StatusTryAgainLater, wire.StatusAuthTimeout} {
		t.Run(code.String(), func(t *testing.T) {
			f := testkit.NewFakeRelay(t, []string{wire.Subprotocol}, func(ctx context.Context, ws *websocket.Conn) {
				ws.Close(code, "bye")
			})
			c, err := mxrelay.New(f.WSURL(), "key", testkit.Fast(&mxrelay.Options{MaxReconnectAttempts: 3}))
			require.NoError(t, err)
			defer c.Close(context.Background())
			_, err = c.Send(testkit.Ctx(t), testkit.Mail("x"))
			var ce *mxrelay.ConnectError
			require.ErrorAs(t, err, &ce, "retried with backoff, then gave up")
			assert.Equal(t, 3, ce.Attempts)
			var re *mxrelay.RelayError
			require.ErrorAs(t, err, &re)
			assert.Equal(t, int(code), re.Code)
			assert.False(t, errors.Is(err, mxrelay.ErrAuthFailed))
		})
	}
}

func TestRelaySelectingAnotherSubprotocolIsRefused(t *testing.T) {
	var wg sync.WaitGroup
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		sum := sha1.Sum([]byte(r.Header.Get("Sec-WebSocket-Key") + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"))
		conn, rw, err := w.(http.Hijacker).Hijack()
		if err != nil {
			return
		}
		wg.Add(1)
		defer wg.Done()
		defer conn.Close()
		rw.WriteString("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
			"Sec-WebSocket-Accept: " + base64.StdEncoding.EncodeToString(sum[:]) + "\r\nSec-WebSocket-Protocol: other.v9\r\n\r\n")
		rw.Flush()
		bufio.NewReader(conn).ReadByte() // until the client hangs up
	}))
	defer func() {
		srv.CloseClientConnections()
		srv.Close()
		wg.Wait()
	}()
	c, err := mxrelay.New("ws"+strings.TrimPrefix(srv.URL, "http")+"/smtp", "key", testkit.Fast(&mxrelay.Options{MaxReconnectAttempts: 1}))
	require.NoError(t, err)
	defer c.Close(context.Background())
	_, err = c.Send(testkit.Ctx(t), testkit.Mail("x"))
	var pe *mxrelay.ProtocolError
	require.ErrorAs(t, err, &pe)
}
