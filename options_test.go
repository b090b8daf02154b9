package mxrelay_test

import (
	"context"
	"crypto/tls"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mxrelay/mxrelay"
	"github.com/mxrelay/mxrelay/internal/testkit"
	"github.com/mxrelay/mxrelay/relaytest"
)

func TestNewValidatesOptions(t *testing.T) {
	for _, tc := range []struct {
		name, url, key string
		o              mxrelay.Options
	}{
		{name: "bad scheme", url: "http://x/smtp", key: "k"},
		{name: "no host", url: "ws:///smtp", key: "k"},
		{name: "key in URL", url: "wss://x/smtp?apiKey=k", key: "k"},
		{name: "userinfo in URL", url: "wss://u:p@x/smtp", key: "k"},
		{name: "empty key", url: "wss://x/smtp"},
		{name: "negative queue", url: "wss://x/smtp", key: "k", o: mxrelay.Options{MaxQueueSize: -1}},
		{name: "negative timeout", url: "wss://x/smtp", key: "k", o: mxrelay.Options{CommandTimeout: -time.Second}},
		{name: "user without password", url: "wss://x/smtp", key: "k", o: mxrelay.Options{Username: "u"}},
		{name: "bad local name", url: "wss://x/smtp", key: "k", o: mxrelay.Options{LocalName: "a b"}},
		{name: "bad starttls", url: "wss://x/smtp", key: "k", o: mxrelay.Options{StartTLS: 9}},
		{name: "ws:// to a remote host", url: "ws://relay.example.com/smtp", key: "k"},
		{name: "ws:// to a remote address", url: "ws://192.0.2.1:8080/smtp", key: "k"},
		{name: "STARTTLS without TLSConfig", url: "wss://x/smtp", key: "k", o: mxrelay.Options{StartTLS: mxrelay.StartTLSRequired}},
		{name: "STARTTLS without ServerName", url: "wss://x/smtp", key: "k", o: mxrelay.Options{StartTLS: mxrelay.StartTLSOpportunistic, TLSConfig: &tls.Config{}}},
		{name: "AUTH without STARTTLS", url: "wss://x/smtp", key: "k", o: mxrelay.Options{Username: "u", Password: "p"}},
		{name: "Store and SpoolDir", url: "wss://x/smtp", key: "k", o: mxrelay.Options{Store: fakeStore{}, SpoolDir: "/nonexistent"}},
		{name: "a lease too short to renew", url: "wss://x/smtp", key: "k", o: mxrelay.Options{Lease: time.Millisecond}},
		{name: "negative lease", url: "wss://x/smtp", key: "k", o: mxrelay.Options{Lease: -time.Second}},
		{name: "negative retention", url: "wss://x/smtp", key: "k", o: mxrelay.Options{ResultRetention: -time.Second}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := mxrelay.New(tc.url, tc.key, &tc.o)
			require.Error(t, err)
			assert.Nil(t, c)
			assert.True(t, strings.HasPrefix(err.Error(), "mxrelay: "), err.Error())
		})
	}
	for _, tc := range []struct {
		name, url string
		o         mxrelay.Options
	}{
		{name: "ws:// to localhost", url: "ws://localhost:8080/smtp"},
		{name: "ws:// to 127.0.0.1", url: "ws://127.0.0.1:8080/smtp"},
		{name: "ws:// to ::1", url: "ws://[::1]:8080/smtp"},
		{name: "ws:// to a remote host, allowed", url: "ws://relay.example.com/smtp", o: mxrelay.Options{APIKeyInClear: true}},
		{name: "STARTTLS with a name", url: "wss://x/smtp", o: mxrelay.Options{StartTLS: mxrelay.StartTLSRequired, TLSConfig: &tls.Config{ServerName: "mx.example.com"}}},
		{name: "AUTH under STARTTLS", url: "wss://x/smtp", o: mxrelay.Options{Username: "u", Password: "p", StartTLS: mxrelay.StartTLSRequired, TLSConfig: &tls.Config{ServerName: "mx.example.com"}}},
		{name: "AUTH in clear, allowed", url: "wss://x/smtp", o: mxrelay.Options{Username: "u", Password: "p", PasswordInClear: true}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := mxrelay.New(tc.url, "k", &tc.o)
			require.NoError(t, err)
			require.NoError(t, c.Close(context.Background()))
		})
	}
	o := mxrelay.Options{}
	c, err := mxrelay.New("wss://relay.example.com/smtp", "k", &o)
	require.NoError(t, err)
	assert.Equal(t, mxrelay.Options{}, o, "defaults are applied to a copy")
	require.NoError(t, c.Close(context.Background()))
	require.NoError(t, c.Close(context.Background()), "Close twice is safe")
	_, err = c.Enqueue(testkit.Mail("late"))
	require.ErrorIs(t, err, mxrelay.ErrClosed)
}

// fakeStore is a Store that New refuses before it uses it.
type fakeStore struct{ mxrelay.Store }

// recordingTransport records the upgrade requests it carries.
type recordingTransport struct {
	mu      sync.Mutex
	headers []http.Header
}

func (rt *recordingTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	rt.mu.Lock()
	rt.headers = append(rt.headers, r.Header.Clone())
	rt.mu.Unlock()
	return http.DefaultTransport.RoundTrip(r)
}

func TestHTTPClientAndHeaderAreUsed(t *testing.T) {
	s := testkit.NewRelay(t, nil)
	rt := &recordingTransport{}
	c := testkit.NewClient(t, s, &mxrelay.Options{
		HTTPClient: &http.Client{Transport: rt},
		Header:     http.Header{"X-Tenant": []string{"acme"}},
	})
	_, err := c.Send(testkit.Ctx(t), testkit.Mail("via custom client"))
	require.NoError(t, err)
	rt.mu.Lock()
	defer rt.mu.Unlock()
	require.Len(t, rt.headers, 1)
	assert.Equal(t, "acme", rt.headers[0].Get("X-Tenant"))
	assert.Equal(t, "mxrelay.v1", rt.headers[0].Get("Sec-WebSocket-Protocol"))
	for k, v := range rt.headers[0] {
		assert.NotContains(t, strings.Join(v, " "), s.APIKey, "the key is not in header %s", k)
	}
}

func TestTimeouts(t *testing.T) {
	t.Run("AuthTimeout", func(t *testing.T) {
		s := testkit.NewRelay(t, nil)
		s.Inject(relaytest.Fault{Kind: relaytest.IgnoreAuth})
		c := testkit.NewClient(t, s, &mxrelay.Options{AuthTimeout: 100 * time.Millisecond})
		_, err := c.Send(testkit.Ctx(t), testkit.Mail("x"))
		require.NoError(t, err)
		assert.Equal(t, 2, s.Stats().Connections)
	})
	t.Run("ChannelTimeout", func(t *testing.T) {
		s := testkit.NewRelay(t, nil)
		s.Inject(relaytest.Fault{Kind: relaytest.IgnoreChannel})
		c := testkit.NewClient(t, s, &mxrelay.Options{ChannelTimeout: 100 * time.Millisecond})
		_, err := c.Send(testkit.Ctx(t), testkit.Mail("x"))
		require.NoError(t, err)
	})
	t.Run("CommandTimeout", func(t *testing.T) {
		s := testkit.NewRelay(t, nil)
		s.Inject(relaytest.Fault{Kind: relaytest.StallReply, Command: "RCPT"})
		c := testkit.NewClient(t, s, &mxrelay.Options{CommandTimeout: 200 * time.Millisecond, DisablePipelining: true})
		res, err := c.Send(testkit.Ctx(t), testkit.Mail("stalled once"))
		require.NoError(t, err)
		assert.Equal(t, 2, res.Attempts)
		assert.Equal(t, 1, testkit.CountSubject(s, "stalled once"))
	})
	t.Run("CommandTimeout in a pipelined transaction is unknown", func(t *testing.T) {
		s := testkit.NewRelay(t, nil)
		s.Inject(relaytest.Fault{Kind: relaytest.StallReply, Command: "RCPT"})
		c := testkit.NewClient(t, s, &mxrelay.Options{CommandTimeout: 200 * time.Millisecond})
		res, err := c.Send(testkit.Ctx(t), testkit.Mail("stalled in the pipe"))
		require.ErrorIs(t, err, mxrelay.ErrUnknownOutcome, "its end of data was written with the RCPT")
		assert.True(t, res.MaybeDelivered)
	})
	t.Run("CommandTimeout at end of data is unknown", func(t *testing.T) {
		s := testkit.NewRelay(t, nil)
		s.Inject(relaytest.Fault{Kind: relaytest.StallReply, Command: "."})
		c := testkit.NewClient(t, s, &mxrelay.Options{CommandTimeout: 200 * time.Millisecond})
		res, err := c.Send(testkit.Ctx(t), testkit.Mail("stalled dot"))
		require.ErrorIs(t, err, mxrelay.ErrUnknownOutcome)
		assert.True(t, res.MaybeDelivered)
	})
	t.Run("SessionTimeout", func(t *testing.T) {
		s := testkit.NewRelay(t, nil)
		s.Inject(relaytest.Fault{Kind: relaytest.StallReply, Command: "MAIL"})
		c := testkit.NewClient(t, s, &mxrelay.Options{SessionTimeout: 200 * time.Millisecond, CommandTimeout: time.Minute, DisablePipelining: true})
		res, err := c.Send(testkit.Ctx(t), testkit.Mail("slow session"))
		require.NoError(t, err)
		assert.Equal(t, 2, res.Attempts)
	})
	t.Run("email Timeout while queued", func(t *testing.T) {
		s := testkit.NewRelay(t, nil)
		s.SetDown(true)
		c := testkit.NewClient(t, s, &mxrelay.Options{MaxReconnectAttempts: 1000})
		res, err := c.Send(testkit.Ctx(t), testkit.Mail("late"), mxrelay.WithTimeout(50*time.Millisecond))
		require.ErrorIs(t, err, context.DeadlineExceeded)
		assert.False(t, res.Delivered())
		assert.Equal(t, 0, c.Stats().QueueSize, "withdrawn from the queue")
	})
	t.Run("Email.Timeout, and the Options' for an email without one", func(t *testing.T) {
		s := testkit.NewRelay(t, nil)
		s.SetDown(true)
		c := testkit.NewClient(t, s, &mxrelay.Options{MaxReconnectAttempts: 1000, EmailTimeout: 50 * time.Millisecond})
		e := testkit.Mail("late field")
		e.Timeout = 20 * time.Millisecond
		res, err := c.Send(testkit.Ctx(t), e)
		require.ErrorIs(t, err, context.DeadlineExceeded)
		require.ErrorIs(t, err, mxrelay.ErrCanceled)
		assert.Equal(t, mxrelay.OutcomeFailed, res.Outcome)
		_, err = c.Send(testkit.Ctx(t), testkit.Mail("late default"))
		require.ErrorIs(t, err, context.DeadlineExceeded)
	})
}
