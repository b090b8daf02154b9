package mxrelay_test

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"os"
	"strings"
	"sync"
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

// silentRelay accepts TCP connections and never answers, not even the
// WebSocket upgrade. It returns a ws:// URL to it.
func silentRelay(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var conns []net.Conn
	wg.Go(func() {
		for {
			nc, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, nc)
			mu.Unlock()
		}
	})
	t.Cleanup(func() {
		ln.Close()
		wg.Wait()
		for _, nc := range conns {
			nc.Close()
		}
	})
	return "ws://" + ln.Addr().String() + "/smtp"
}

// silentUpstream is an SMTP server that greets (or not) and then reads
// commands and answers none.
func silentUpstream(t *testing.T, greet bool) string {
	return testkit.NewUpstream(t, func(c *fakesmtp.Conn) {
		if greet {
			c.Say("220 mx.test ESMTP")
		}
		c.Drain()
	}).Addr
}

// Every timeout the client imposes yields an error matching ErrTimeout,
// in Send's error, in Result.Err and in the events that carry it, and
// the error still matches what it matched before.
func TestEveryTimeoutMatchesErrTimeout(t *testing.T) {
	// waitForClient reads until the client hangs up, answering pings.
	waitForClient := func(ctx context.Context, ws *websocket.Conn) {
		for {
			if _, _, err := ws.Read(ctx); err != nil {
				return
			}
		}
	}
	for _, tc := range []struct {
		name string
		// url returns the relay's URL and API key.
		url  func(t *testing.T) (string, string)
		opts mxrelay.Options
		send []mxrelay.SendOption
		body func() io.Reader // nil: a short message
		// event is a type of event that must come, each with an Err
		// matching ErrTimeout; also is what the error matches besides.
		event mxrelay.EventType
		also  []error
	}{
		{name: "DialTimeout: a relay that never answers the upgrade",
			url:   func(t *testing.T) (string, string) { return silentRelay(t), "key" },
			opts:  mxrelay.Options{DialTimeout: 100 * time.Millisecond},
			event: mxrelay.EventSessionFailed, also: []error{context.DeadlineExceeded}},
		{name: "DialTimeout: a raw tunnel that never answers the upgrade",
			url:   func(t *testing.T) (string, string) { return silentRelay(t), "" },
			opts:  mxrelay.Options{DialTimeout: 100 * time.Millisecond, RawTunnel: true},
			event: mxrelay.EventSessionFailed, also: []error{context.DeadlineExceeded}},
		{name: "AuthTimeout: a relay that never answers AUTHENTICATE",
			url: func(t *testing.T) (string, string) {
				return testkit.NewFakeRelay(t, []string{wire.Subprotocol}, waitForClient).WSURL(), "key"
			},
			opts:  mxrelay.Options{AuthTimeout: 100 * time.Millisecond},
			event: mxrelay.EventDisconnected},
		{name: "ChannelTimeout: a relay that never opens the channel",
			url: func(t *testing.T) (string, string) {
				return testkit.NewFakeRelay(t, []string{wire.Subprotocol}, func(ctx context.Context, ws *websocket.Conn) {
					testkit.AuthOK(ctx, ws)
					waitForClient(ctx, ws) // SMTP_CHANNEL_OPEN, unanswered
				}).WSURL(), "key"
			},
			opts:  mxrelay.Options{ChannelTimeout: 100 * time.Millisecond},
			event: mxrelay.EventDisconnected},
		{name: "HeartbeatTimeout: a relay that never pongs",
			url: func(t *testing.T) (string, string) {
				release := make(chan struct{})
				f := testkit.NewFakeRelay(t, []string{wire.Subprotocol}, func(ctx context.Context, ws *websocket.Conn) {
					testkit.AuthOK(ctx, ws)
					ws.Read(ctx) // SMTP_CHANNEL_OPEN
					testkit.SendFrame(ctx, ws, wire.TypeChannelReady, nil)
					// Reads nothing more, so pings go unanswered.
					select {
					case <-release:
					case <-ctx.Done():
					}
				})
				t.Cleanup(func() { close(release) }) // before the relay's own
				return f.WSURL(), "key"
			},
			opts:  mxrelay.Options{DisableBinary: true, HeartbeatInterval: 50 * time.Millisecond, HeartbeatTimeout: 100 * time.Millisecond, CommandTimeout: time.Minute},
			event: mxrelay.EventSessionFailed},
		{name: "CommandTimeout: an SMTP server that never answers EHLO",
			url: func(t *testing.T) (string, string) {
				s := testkit.NewRelay(t, &relaytest.Options{UpstreamAddr: silentUpstream(t, true)})
				return s.URL, s.APIKey
			},
			opts:  mxrelay.Options{CommandTimeout: 100 * time.Millisecond},
			event: mxrelay.EventSessionFailed, also: []error{os.ErrDeadlineExceeded}},
		{name: "CommandTimeout: over a raw tunnel",
			url: func(t *testing.T) (string, string) {
				s := testkit.NewRelay(t, &relaytest.Options{RawTunnel: true, UpstreamAddr: silentUpstream(t, true)})
				return s.URL, s.APIKey
			},
			opts:  mxrelay.Options{CommandTimeout: 100 * time.Millisecond, RawTunnel: true},
			event: mxrelay.EventSessionFailed, also: []error{os.ErrDeadlineExceeded}},
		{name: "CommandTimeout: the end of data never answered",
			url: func(t *testing.T) (string, string) {
				u := testkit.NewUpstream(t, func(c *fakesmtp.Conn) {
					c.Say("220 mx.test ESMTP")
					c.Commands(func(verb, _ string) bool {
						if verb == "DATA" {
							c.Say("354 go ahead")
							// The body and its end are read, never answered.
							c.Drain()
							return false
						}
						return c.Say("250 ok")
					})
				})
				s := testkit.NewRelay(t, &relaytest.Options{UpstreamAddr: u.Addr})
				return s.URL, s.APIKey
			},
			opts:  mxrelay.Options{CommandTimeout: 100 * time.Millisecond},
			event: mxrelay.EventSessionFailed, also: []error{mxrelay.ErrUnknownOutcome, os.ErrDeadlineExceeded}},
		{name: "CommandTimeout: a write to a server that stopped reading",
			url: func(t *testing.T) (string, string) {
				u, _ := stallingUpstream(t)
				s := testkit.NewRelay(t, &relaytest.Options{UpstreamAddr: u.Addr})
				return s.URL, s.APIKey
			},
			opts:  mxrelay.Options{CommandTimeout: 300 * time.Millisecond},
			body:  bigBody,
			event: mxrelay.EventSessionFailed},
		{name: "SessionTimeout: an SMTP server that never greets",
			url: func(t *testing.T) (string, string) {
				s := testkit.NewRelay(t, &relaytest.Options{UpstreamAddr: silentUpstream(t, false)})
				return s.URL, s.APIKey
			},
			opts:  mxrelay.Options{SessionTimeout: 150 * time.Millisecond, CommandTimeout: time.Minute},
			event: mxrelay.EventSessionFailed, also: []error{context.DeadlineExceeded}},
		{name: "the email's own timeout, while the relay is down",
			url: func(t *testing.T) (string, string) {
				s := testkit.NewRelay(t, nil)
				s.SetDown(true)
				return s.URL, s.APIKey
			},
			opts:  mxrelay.Options{MaxReconnectAttempts: 1000},
			send:  []mxrelay.SendOption{mxrelay.WithTimeout(50 * time.Millisecond)},
			event: mxrelay.EventEmailFailed, also: []error{mxrelay.ErrCanceled, context.DeadlineExceeded}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			u, key := tc.url(t)
			rec := &testkit.Recorder{}
			o := tc.opts
			o.OnEvent = rec.On
			if o.MaxReconnectAttempts == 0 {
				o.MaxReconnectAttempts = 1
			}
			c, err := mxrelay.New(u, key, testkit.Fast(&o))
			require.NoError(t, err)
			e := testkit.Mail("timed out")
			if tc.body != nil {
				e.Body = tc.body()
			}
			res, err := c.Send(testkit.Ctx(t), e, append(tc.send, mxrelay.WithRetries(0))...)
			require.NoError(t, c.Close(testkit.Ctx(t)))

			require.ErrorIs(t, err, mxrelay.ErrTimeout)
			require.NotNil(t, res)
			assert.ErrorIs(t, res.Err, mxrelay.ErrTimeout)
			for _, also := range tc.also {
				assert.ErrorIs(t, err, also)
			}
			var ee *mxrelay.EmailError
			require.ErrorAs(t, err, &ee)
			assert.True(t, strings.HasPrefix(err.Error(), "mxrelay: "), err.Error())
			n := 0
			for _, e := range rec.Events() {
				if e.Type == tc.event && e.Err != nil {
					n++
					assert.ErrorIs(t, e.Err, mxrelay.ErrTimeout, "%v", e.Type)
				}
			}
			assert.Positive(t, n, "no %v event with an error", tc.event)
		})
	}
}

// Errors that are not timeouts do not match ErrTimeout: a refused key,
// a 5xx, a cancelled Send, a connection refused.
func TestOnlyTimeoutsMatchErrTimeout(t *testing.T) {
	t.Run("refused key", func(t *testing.T) {
		s := testkit.NewRelay(t, nil)
		c, err := mxrelay.New(s.URL, "wrong", testkit.Fast(nil))
		require.NoError(t, err)
		defer c.Close(testkit.Ctx(t))
		_, err = c.Send(testkit.Ctx(t), testkit.Mail("x"))
		require.ErrorIs(t, err, mxrelay.ErrAuthFailed)
		assert.False(t, errors.Is(err, mxrelay.ErrTimeout), "%v", err)
	})
	t.Run("5xx", func(t *testing.T) {
		s := testkit.NewRelay(t, nil)
		s.Inject(relaytest.Fault{Kind: relaytest.ReplaceReply, Command: "MAIL", Reply: "550 5.7.1 no"})
		c := testkit.NewClient(t, s, nil)
		_, err := c.Send(testkit.Ctx(t), testkit.Mail("x"))
		var se *mxrelay.SMTPError
		require.ErrorAs(t, err, &se)
		assert.False(t, errors.Is(err, mxrelay.ErrTimeout), "%v", err)
	})
	t.Run("the caller's own deadline", func(t *testing.T) {
		s := testkit.NewRelay(t, nil)
		s.SetDown(true)
		c := testkit.NewClient(t, s, &mxrelay.Options{MaxReconnectAttempts: 1000})
		ctx, cancel := context.WithTimeout(testkit.Ctx(t), 50*time.Millisecond)
		defer cancel()
		_, err := c.Send(ctx, testkit.Mail("x"))
		require.ErrorIs(t, err, context.DeadlineExceeded)
		assert.False(t, errors.Is(err, mxrelay.ErrTimeout), "%v", err)
	})
	t.Run("connection refused", func(t *testing.T) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		require.NoError(t, err)
		u := "ws://" + ln.Addr().String() + "/smtp"
		ln.Close()
		c, err := mxrelay.New(u, "key", testkit.Fast(&mxrelay.Options{MaxReconnectAttempts: 1}))
		require.NoError(t, err)
		defer c.Close(testkit.Ctx(t))
		_, err = c.Send(testkit.Ctx(t), testkit.Mail("x"))
		var ce *mxrelay.ConnectError
		require.ErrorAs(t, err, &ce)
		assert.False(t, errors.Is(err, mxrelay.ErrTimeout), "%v", err)
	})
}

func TestErrorsAreTyped(t *testing.T) {
	s := testkit.NewRelay(t, nil)
	s.Inject(relaytest.Fault{Kind: relaytest.ReplaceReply, Command: "MAIL", Reply: "553 5.1.8 bad sender"})
	c := testkit.NewClient(t, s, nil)
	_, err := c.Send(testkit.Ctx(t), testkit.Mail("x"))
	var ee *mxrelay.EmailError
	require.ErrorAs(t, err, &ee)
	assert.NotEmpty(t, ee.EmailID)
	assert.Equal(t, 1, ee.Attempts)
	assert.False(t, ee.Temporary())
	var se *mxrelay.SMTPError
	require.ErrorAs(t, err, &se)
	assert.Equal(t, 553, se.Code)
	assert.Equal(t, [3]int{5, 1, 8}, [3]int(se.EnhancedCode))
	assert.Equal(t, "bad sender", se.Message)
	assert.True(t, strings.HasPrefix(err.Error(), "mxrelay: "))
	assert.Equal(t, 1, strings.Count(err.Error(), "mxrelay: "), err.Error())
	assert.False(t, errors.Is(err, mxrelay.ErrUnknownOutcome))
}

// TestPermanentSetupIsNotTemporary: a session set-up that the client does
// not retry (here STARTTLS required and not offered) is not reported as
// temporary either, so that a caller does not resend in vain.
func TestPermanentSetupIsNotTemporary(t *testing.T) {
	s := testkit.NewRelay(t, nil)
	c := testkit.NewClient(t, s, &mxrelay.Options{StartTLS: mxrelay.StartTLSRequired, TLSConfig: &tls.Config{ServerName: "mx.test"}, MaxReconnectAttempts: 5})
	_, err := c.Send(testkit.Ctx(t), testkit.Mail("never"))
	var ee *mxrelay.EmailError
	require.ErrorAs(t, err, &ee)
	assert.False(t, ee.Temporary(), "%v", err)
	assert.Equal(t, 1, s.Stats().Channels, "not retried")
}
