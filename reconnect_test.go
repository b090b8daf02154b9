package mxrelay_test

import (
	"bufio"
	"context"
	"crypto/sha1"
	"encoding/base64"
	"errors"
	"fmt"
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
	"github.com/mxrelay/mxrelay/relaytest"
)

func TestNoConnectionWithoutWork(t *testing.T) {
	testkit.Bubble(t, func(t *testing.T) {
		s := testkit.NewRelay(t, nil)
		c := testkit.NewClient(t, s, nil)
		time.Sleep(time.Hour) // on the bubble's clock: every timer of the client's has had its chance
		assert.Zero(t, s.Stats().Connections)
		assert.Equal(t, mxrelay.StateDisconnected, c.ConnState())
		assert.Equal(t, mxrelay.SessionIdle, c.SessionState())
	})
}

func TestIdleDisconnect(t *testing.T) {
	s := testkit.NewRelay(t, nil)
	rec := &testkit.Recorder{}
	c := testkit.NewClient(t, s, &mxrelay.Options{IdleTimeout: 30 * time.Millisecond, OnEvent: rec.On})
	_, err := c.Send(testkit.Ctx(t), testkit.Mail("one"))
	require.NoError(t, err)
	require.Eventually(t, func() bool { return c.ConnState() == mxrelay.StateDisconnected }, 5*time.Second, 5*time.Millisecond)
	_, err = c.Send(testkit.Ctx(t), testkit.Mail("two"))
	require.NoError(t, err)
	assert.Equal(t, 2, s.Stats().Connections, "it connected again for new work")
}

func TestReconnectAfterRelayRestart(t *testing.T) {
	s := testkit.NewRelay(t, nil)
	rec := &testkit.Recorder{}
	// The relay comes back once a set-up has failed while it was down.
	onEvent := func(e mxrelay.Event) {
		rec.On(e)
		if e.Type == mxrelay.EventReconnecting {
			s.SetDown(false)
		}
	}
	c := testkit.NewClient(t, s, &mxrelay.Options{OnEvent: onEvent, IdleTimeout: time.Minute})
	_, err := c.Send(testkit.Ctx(t), testkit.Mail("before"))
	require.NoError(t, err)
	s.CloseClientConnections()
	s.SetDown(true)
	_, err = c.Send(testkit.Ctx(t), testkit.Mail("after"))
	require.NoError(t, err)
	assert.Equal(t, []string{"before", "after"}, testkit.Subjects(s))
	assert.GreaterOrEqual(t, s.Stats().Connections, 2)
	assert.GreaterOrEqual(t, rec.Count(mxrelay.EventDisconnected), 1)
	assert.GreaterOrEqual(t, rec.Count(mxrelay.EventReconnecting), 1)
}

func TestReconnectAttemptsRunOut(t *testing.T) {
	s := testkit.NewRelay(t, nil)
	s.SetDown(true)
	rec := &testkit.Recorder{}
	c := testkit.NewClient(t, s, &mxrelay.Options{MaxReconnectAttempts: 3, OnEvent: rec.On})
	res, err := c.Send(testkit.Ctx(t), testkit.Mail("unreachable"))
	var ce *mxrelay.ConnectError
	require.ErrorAs(t, err, &ce)
	assert.Equal(t, 3, ce.Attempts)
	assert.NotNil(t, ce.Err, "the last cause is kept")
	assert.Equal(t, 0, res.Attempts, "no transaction was started")
	assert.Equal(t, mxrelay.StateFailed, c.ConnState())
	assert.Equal(t, 2, rec.Count(mxrelay.EventReconnecting))

	s.SetDown(false)
	_, err = c.Send(testkit.Ctx(t), testkit.Mail("new cycle"))
	require.NoError(t, err, "the next Send starts a new cycle")
}

func TestReconnectBackoffFollowsTheCloseCode(t *testing.T) {
	for _, tc := range []struct {
		code    websocket.StatusCode
		backoff bool
	}{{websocket.StatusNormalClosure, false}, {websocket.StatusGoingAway, true}, {websocket.StatusTryAgainLater, true}} {
		t.Run(tc.code.String(), func(t *testing.T) {
			s := testkit.NewRelay(t, nil)
			s.Inject(relaytest.Fault{Kind: relaytest.CloseWebSocket, Command: "MAIL", Code: tc.code})
			rec := &testkit.Recorder{}
			c := testkit.NewClient(t, s, &mxrelay.Options{OnEvent: rec.On, DisablePipelining: true})
			res, err := c.Send(testkit.Ctx(t), testkit.Mail("closed under it"))
			require.NoError(t, err)
			assert.Equal(t, 2, res.Attempts)
			require.NoError(t, c.Close(testkit.Ctx(t)))
			assert.Equal(t, 2, s.Stats().Connections)
			if tc.backoff {
				assert.Equal(t, 1, rec.Count(mxrelay.EventReconnecting), "reconnect with backoff")
			} else {
				assert.Zero(t, rec.Count(mxrelay.EventReconnecting), "1000: reconnect at once, there is work")
			}
		})
	}
}

// Regression (issue "Every reply accounted for"): every lost connection
// cost at least ReconnectInterval before the next dial, the first one
// after a connection that worked included.
func TestFirstRedialAfterAWorkingConnectionGoesAtOnce(t *testing.T) {
	s := testkit.NewRelay(t, nil)
	c := testkit.NewClient(t, s, &mxrelay.Options{ReconnectInterval: 20 * time.Second, MaxReconnectInterval: 20 * time.Second, IdleTimeout: time.Minute})
	_, err := c.Send(testkit.Ctx(t), testkit.Mail("before"))
	require.NoError(t, err)
	s.CloseClientConnections()
	require.Eventually(t, func() bool { return c.ConnState() == mxrelay.StateDisconnected }, 10*time.Second, time.Millisecond)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err = c.Send(ctx, testkit.Mail("after"))
	require.NoError(t, err, "the redial after a connection that worked does not wait ReconnectInterval")
}

func TestChannelErrorIsRetried(t *testing.T) {
	s := testkit.NewRelay(t, nil)
	s.Inject(relaytest.Fault{Kind: relaytest.FailChannel, Error: "upstream unreachable"})
	rec := &testkit.Recorder{}
	c := testkit.NewClient(t, s, &mxrelay.Options{OnEvent: rec.On})
	res, err := c.Send(testkit.Ctx(t), testkit.Mail("after channel error"))
	require.NoError(t, err)
	assert.Equal(t, 1, res.Attempts, "a set-up failure costs the email no attempt")
	assert.Equal(t, 1, s.Stats().Connections, "a channel error does not cost the WebSocket")
	assert.Equal(t, []string{"after channel error"}, testkit.Subjects(s))
	require.NoError(t, c.Close(testkit.Ctx(t))) // the session's QUIT comes after the result
	st := c.Stats()
	assert.EqualValues(t, 1, st.SessionsFailed)
	assert.EqualValues(t, 1, st.SessionsCompleted)
}

// Regression (issue "Every reply accounted for"): a channel that failed on
// a live, authenticated WebSocket waited a whole ReconnectInterval before
// the next open.
func TestChannelFailureOnALiveConnectionIsRetriedAtOnce(t *testing.T) {
	s := testkit.NewRelay(t, nil)
	s.Inject(relaytest.Fault{Kind: relaytest.FailChannel, Error: "upstream busy"})
	c := testkit.NewClient(t, s, &mxrelay.Options{ReconnectInterval: 20 * time.Second, MaxReconnectInterval: 20 * time.Second})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err := c.Send(ctx, testkit.Mail("retried on the same WebSocket"))
	require.NoError(t, err)
	assert.Equal(t, 1, s.Stats().Connections, "on the same WebSocket")
}

func TestAuthRejectedIsPermanent(t *testing.T) {
	s := testkit.NewRelay(t, &relaytest.Options{APIKeys: []string{"right-key-0000000000"}})
	rec := &testkit.Recorder{}
	c, err := mxrelay.New(s.URL, "wrong-key-0000000000", testkit.Fast(&mxrelay.Options{OnEvent: rec.On, MaxReconnectAttempts: 5}))
	require.NoError(t, err)
	defer c.Close(context.Background())

	h1, err := c.Enqueue(testkit.Mail("one"))
	require.NoError(t, err)
	h2, err := c.Enqueue(testkit.Mail("two"))
	require.NoError(t, err)
	for _, h := range []*mxrelay.Handle{h1, h2} {
		res, err := h.Wait(testkit.Ctx(t))
		require.ErrorIs(t, err, mxrelay.ErrAuthFailed)
		assert.False(t, res.Delivered())
	}
	assert.Equal(t, 1, s.Stats().AuthFailures, "the same key is not tried again")
	assert.Equal(t, mxrelay.StateFailed, c.ConnState())
	_, err = c.Send(testkit.Ctx(t), testkit.Mail("three"))
	require.ErrorIs(t, err, mxrelay.ErrAuthFailed)
	assert.Equal(t, 1, s.Stats().Connections)
	assert.Empty(t, s.Mailbox())
}

func TestRejectAuthFault(t *testing.T) {
	s := testkit.NewRelay(t, nil)
	s.Inject(relaytest.Fault{Kind: relaytest.RejectAuth, Error: "key revoked"})
	c := testkit.NewClient(t, s, nil)
	_, err := c.Send(testkit.Ctx(t), testkit.Mail("x"))
	require.ErrorIs(t, err, mxrelay.ErrAuthFailed)
	assert.Contains(t, err.Error(), "key revoked")
}

func TestHeartbeatDetectsADeadRelay(t *testing.T) {
	release := make(chan struct{})
	f := testkit.NewFakeRelay(t, []string{wire.Subprotocol}, func(ctx context.Context, ws *websocket.Conn) {
		testkit.AuthOK(ctx, ws)
		ws.Read(ctx) // SMTP_CHANNEL_OPEN
		testkit.SendFrame(ctx, ws, wire.TypeChannelReady, nil)
		// Then neither reads (so pings go unanswered) nor sends a greeting.
		select {
		case <-release:
		case <-ctx.Done():
		}
	})
	defer close(release)
	c, err := mxrelay.New(f.WSURL(), "key", testkit.Fast(&mxrelay.Options{
		DisableBinary: true, MaxReconnectAttempts: 1,
		HeartbeatInterval: 50 * time.Millisecond, HeartbeatTimeout: 100 * time.Millisecond,
		CommandTimeout: time.Minute,
	}))
	require.NoError(t, err)
	defer c.Close(context.Background())
	_, err = c.Send(testkit.Ctx(t), testkit.Mail("x"))
	// Only the heartbeat can time out here: the relay answered AUTHENTICATE
	// and the channel open, and the command timeout is a minute.
	require.ErrorIs(t, err, mxrelay.ErrTimeout)
	assert.False(t, errors.Is(err, mxrelay.ErrAuthFailed))
}

// Raw tunnel mode: the same client (queue, pipelining, results) over a
// websockify-style tunnel, with the key as a bearer token.
func TestRawTunnel(t *testing.T) {
	s := testkit.NewRelay(t, &relaytest.Options{RawTunnel: true, Users: map[string]string{"app": "pw"}})
	c := testkit.NewClient(t, s, &mxrelay.Options{RawTunnel: true, Username: "app", Password: "pw", PasswordInClear: true, MaxEmailsPerSession: 50, BatchWait: time.Second})
	res := testkit.EnqueueBatch(t, c, 40)
	for i, r := range res {
		require.NoError(t, r.Err, "email %d", i)
		assert.Equal(t, 1, testkit.CountSubject(s, fmt.Sprint("p", i)))
	}
	assert.Equal(t, 1, s.Stats().Channels, "one tunnel, one session for the batch")
	assert.Equal(t, "app", s.Mailbox()[0].User)

	t.Run("a wrong key is refused for good", func(t *testing.T) {
		bad, err := mxrelay.New(s.URL, "wrong", testkit.Fast(&mxrelay.Options{RawTunnel: true}))
		require.NoError(t, err)
		defer bad.Close(testkit.Ctx(t))
		_, err = bad.Send(testkit.Ctx(t), testkit.Mail("never"))
		require.ErrorIs(t, err, mxrelay.ErrAuthFailed)
	})
	t.Run("a gateway that is down, then up", func(t *testing.T) {
		s2 := testkit.NewRelay(t, &relaytest.Options{RawTunnel: true})
		c2 := testkit.NewClient(t, s2, &mxrelay.Options{RawTunnel: true, MaxReconnectAttempts: 2})
		s2.SetDown(true)
		_, err := c2.Send(testkit.Ctx(t), testkit.Mail("while down"))
		var ce *mxrelay.ConnectError
		require.ErrorAs(t, err, &ce)
		s2.SetDown(false)
		_, err = c2.Send(testkit.Ctx(t), testkit.Mail("back up"))
		require.NoError(t, err)
		assert.Equal(t, []string{"back up"}, testkit.Subjects(s2))
	})

}

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
