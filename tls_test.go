package mxrelay_test

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mxrelay/mxrelay"
	"github.com/mxrelay/mxrelay/internal/testcert"
	"github.com/mxrelay/mxrelay/internal/testkit"
	"github.com/mxrelay/mxrelay/relaytest"
)

// wssRelay puts a TLS front with cert (nil: httptest's own, which no
// system trusts) before a relaytest relay, as a wss:// relay behind a
// proxy. It returns the relay, the wss:// URL and the count of TLS
// connections the front accepted.
func wssRelay(t *testing.T, o *relaytest.Options, cert *tls.Certificate) (*relaytest.Server, string, *atomic.Int32) {
	t.Helper()
	s := testkit.NewRelay(t, o)
	back, err := url.Parse("http" + strings.TrimPrefix(s.URL, "ws"))
	require.NoError(t, err)
	back.Path = ""
	front := httptest.NewUnstartedServer(httputil.NewSingleHostReverseProxy(back))
	var conns atomic.Int32
	front.Config.ConnState = func(_ net.Conn, st http.ConnState) {
		if st == http.StateNew {
			conns.Add(1)
		}
	}
	if cert != nil {
		front.TLS = &tls.Config{Certificates: []tls.Certificate{*cert}}
	}
	front.StartTLS()
	t.Cleanup(func() {
		front.CloseClientConnections()
		front.Close()
	})
	return s, "wss" + strings.TrimPrefix(front.URL, "https") + "/smtp", &conns
}

func TestRelayCertificate(t *testing.T) {
	wrongName, pool, err := testcert.New("relay.example.com")
	require.NoError(t, err)
	trusting := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	for _, tc := range []struct {
		name string
		cert *tls.Certificate
		opts mxrelay.Options
	}{
		{"self-signed", nil, mxrelay.Options{}},
		{"wrong name", &wrongName, mxrelay.Options{HTTPClient: trusting}},
		{"wrong name, raw tunnel", &wrongName, mxrelay.Options{HTTPClient: trusting, RawTunnel: true}},
	} {
		t.Run(tc.name+" is refused at once", func(t *testing.T) {
			s, u, conns := wssRelay(t, &relaytest.Options{RawTunnel: tc.opts.RawTunnel}, tc.cert)
			logs := &testkit.LogBuffer{}
			o := tc.opts
			o.Logger, o.MaxReconnectAttempts = logs.Logger(), 5
			c, err := mxrelay.New(u, s.APIKey, testkit.Fast(&o))
			require.NoError(t, err)
			defer c.Close(context.Background())
			res, err := c.Send(testkit.Ctx(t), testkit.Mail("untrusted relay"))
			var cve *tls.CertificateVerificationError
			require.ErrorAs(t, err, &cve)
			var ce *mxrelay.ConnectError
			assert.False(t, errors.As(err, &ce), "permanent: no reconnect attempts")
			assert.Equal(t, int32(1), conns.Load(), "one TLS handshake, not one per attempt")
			assert.Zero(t, res.Attempts, "no transaction was started")
			assert.Zero(t, s.Stats().Connections, "nothing reached the relay")
			assert.Empty(t, s.Mailbox())
			assert.NotContains(t, logs.String(), "not checked", "no insecure warning when checking")

			// The next Send tries again: the operator may have fixed it.
			_, err = c.Send(testkit.Ctx(t), testkit.Mail("again"))
			require.ErrorAs(t, err, &cve)
			assert.Equal(t, int32(2), conns.Load())
		})
	}

	t.Run("opting out warns once per client", func(t *testing.T) {
		s, u, _ := wssRelay(t, nil, nil)
		s2, u2, _ := wssRelay(t, &relaytest.Options{RawTunnel: true}, &wrongName)
		insecure := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}
		defer insecure.CloseIdleConnections()
		for _, tc := range []struct {
			name string
			url  string
			s    *relaytest.Server
			opts mxrelay.Options
		}{
			{"InsecureSkipVerify", u, s, mxrelay.Options{InsecureSkipVerify: true}},
			{"InsecureSkipVerify, raw tunnel", u2, s2, mxrelay.Options{InsecureSkipVerify: true, RawTunnel: true}},
			{"HTTPClient that skips the check", u, s, mxrelay.Options{HTTPClient: insecure}},
		} {
			t.Run(tc.name, func(t *testing.T) {
				logs := &testkit.LogBuffer{}
				o := tc.opts
				o.Logger = logs.Logger()
				c, err := mxrelay.New(tc.url, tc.s.APIKey, testkit.Fast(&o))
				require.NoError(t, err)
				for _, subject := range []string{"one", "two"} {
					_, err := c.Send(testkit.Ctx(t), testkit.Mail(subject))
					require.NoError(t, err)
				}
				require.NoError(t, c.Close(testkit.Ctx(t)))
				assert.Equal(t, 1, strings.Count(logs.String(), "certificates are not checked"), "one warning, not one per dial")
				assert.Contains(t, logs.String(), "level=WARN")
			})
		}
	})

	t.Run("STARTTLS TLSConfig that skips the check warns too", func(t *testing.T) {
		logs := &testkit.LogBuffer{}
		c, err := mxrelay.New("ws://127.0.0.1:1/smtp", "key", &mxrelay.Options{Logger: logs.Logger(), StartTLS: mxrelay.StartTLSRequired, TLSConfig: &tls.Config{InsecureSkipVerify: true, ServerName: "mx.test"}})
		require.NoError(t, err)
		require.NoError(t, c.Close(context.Background()))
		assert.Equal(t, 1, strings.Count(logs.String(), "certificates are not checked"))
		assert.Contains(t, logs.String(), "STARTTLS")
	})

	t.Run("InsecureSkipVerify with an HTTPClient is refused", func(t *testing.T) {
		_, err := mxrelay.New("wss://relay.example.com/smtp", "key", &mxrelay.Options{InsecureSkipVerify: true, HTTPClient: http.DefaultClient})
		require.Error(t, err)
	})
}
