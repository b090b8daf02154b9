package mxrelay_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mxrelay/mxrelay"
	"github.com/mxrelay/mxrelay/internal/fakesmtp"
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

// selfSignedFor returns a server TLS config for host and a pool that
// trusts it.
func selfSignedFor(t *testing.T, host string) (*tls.Config, *x509.CertPool) {
	t.Helper()
	cert, pool, err := testcert.New(host)
	require.NoError(t, err)
	return &tls.Config{Certificates: []tls.Certificate{cert}}, pool
}

// selfSigned returns a server TLS config for mx.test and a pool trusting it.
func selfSigned(t *testing.T) (*tls.Config, *x509.CertPool) { return selfSignedFor(t, "mx.test") }

func TestStartTLS(t *testing.T) {
	serverTLS, pool := selfSigned(t)
	s := testkit.NewRelay(t, &relaytest.Options{TLSConfig: serverTLS, Users: map[string]string{"bob": "pw-over-tls"}})
	clientTLS := &tls.Config{RootCAs: pool, ServerName: "mx.test"}

	logs := &testkit.LogBuffer{}
	c := testkit.NewClient(t, s, &mxrelay.Options{StartTLS: mxrelay.StartTLSRequired, TLSConfig: clientTLS, Username: "bob", Password: "pw-over-tls", Logger: logs.Logger(), LocalName: "client.test"})
	_, err := c.Send(testkit.Ctx(t), testkit.Mail("encrypted"))
	require.NoError(t, err)
	require.Len(t, s.Mailbox(), 1)
	assert.Equal(t, "bob", s.Mailbox()[0].User)
	out := logs.String()
	assert.Contains(t, out, "STARTTLS")
	assert.Contains(t, out, "TLS started")
	assert.NotContains(t, out, "MAIL FROM", "nothing after STARTTLS is logged in clear")

	t.Run("opportunistic without STARTTLS offered goes on in clear", func(t *testing.T) {
		plain := testkit.NewRelay(t, nil)
		c := testkit.NewClient(t, plain, &mxrelay.Options{StartTLS: mxrelay.StartTLSOpportunistic, TLSConfig: &tls.Config{ServerName: "mx.test"}})
		_, err := c.Send(testkit.Ctx(t), testkit.Mail("clear"))
		require.NoError(t, err)
	})
	t.Run("opportunistic without STARTTLS offered sends no AUTH", func(t *testing.T) {
		var mu sync.Mutex
		var sent strings.Builder
		plain := testkit.NewRelay(t, &relaytest.Options{Users: map[string]string{"bob": "pw"}, OnSMTPData: func(d relaytest.SMTPData) {
			if !d.FromServer {
				mu.Lock()
				sent.Write(d.Data)
				mu.Unlock()
			}
		}})
		c := testkit.NewClient(t, plain, &mxrelay.Options{StartTLS: mxrelay.StartTLSOpportunistic, TLSConfig: &tls.Config{ServerName: "mx.test"}, Username: "bob", Password: "pw"})
		_, err := c.Send(testkit.Ctx(t), testkit.Mail("never in clear"))
		require.Error(t, err)
		assert.Empty(t, plain.Mailbox())
		mu.Lock()
		defer mu.Unlock()
		assert.Contains(t, sent.String(), "EHLO")
		assert.NotContains(t, sent.String(), "AUTH", "no password over a channel STARTTLS did not protect")
	})
	t.Run("required without STARTTLS offered sends nothing", func(t *testing.T) {
		plain := testkit.NewRelay(t, &relaytest.Options{Users: map[string]string{"bob": "pw"}})
		logs := &testkit.LogBuffer{}
		c := testkit.NewClient(t, plain, &mxrelay.Options{StartTLS: mxrelay.StartTLSRequired, TLSConfig: &tls.Config{ServerName: "mx.test"}, Username: "bob", Password: "pw", Logger: logs.Logger()})
		_, err := c.Send(testkit.Ctx(t), testkit.Mail("never"))
		require.Error(t, err)
		assert.Empty(t, plain.Mailbox())
		assert.NotContains(t, logs.String(), `dir=C line="AUTH`, "no AUTH over a channel that had to be encrypted")
	})
	t.Run("bad certificate is refused", func(t *testing.T) {
		c := testkit.NewClient(t, s, &mxrelay.Options{StartTLS: mxrelay.StartTLSRequired, TLSConfig: &tls.Config{ServerName: "mx.test"}})
		_, err := c.Send(testkit.Ctx(t), testkit.Mail("untrusted"))
		var x509err x509.UnknownAuthorityError
		require.ErrorAs(t, err, &x509err)
		assert.Equal(t, 0, testkit.CountSubject(s, "untrusted"))
	})
}

func TestStartTLSOverJSONChannel(t *testing.T) {
	serverTLS, pool := selfSigned(t)
	s := testkit.NewRelay(t, &relaytest.Options{DisableBinary: true, TLSConfig: serverTLS})
	t.Run("opportunistic goes on in clear", func(t *testing.T) {
		c := testkit.NewClient(t, s, &mxrelay.Options{StartTLS: mxrelay.StartTLSOpportunistic, TLSConfig: &tls.Config{ServerName: "mx.test"}})
		_, err := c.Send(testkit.Ctx(t), testkit.Mail("clear over json"))
		require.NoError(t, err)
	})
	t.Run("required fails at once", func(t *testing.T) {
		before := s.Stats().Channels
		c := testkit.NewClient(t, s, &mxrelay.Options{StartTLS: mxrelay.StartTLSRequired, TLSConfig: &tls.Config{RootCAs: pool, ServerName: "mx.test"}, MaxReconnectAttempts: 5})
		_, err := c.Send(testkit.Ctx(t), testkit.Mail("never"))
		require.Error(t, err)
		var ce *mxrelay.ConnectError
		assert.False(t, errors.As(err, &ce), "permanent, not retried until the attempts run out")
		assert.Equal(t, before+1, s.Stats().Channels)
		assert.Equal(t, 0, testkit.CountSubject(s, "never"))
	})
}

// Regression (issue "Every reply accounted for"): STARTTLS checks the
// certificate against the name the caller gives, never the one in the
// greeting, which the relay writes: a relay answering "220 evil.example"
// with a valid certificate for evil.example gets no AUTH.
func TestStartTLSChecksTheCallersName(t *testing.T) {
	evilTLS, evilPool := selfSignedFor(t, "evil.example")
	u := fakesmtp.Listen(t, func(c *fakesmtp.Conn) {
		c.Say("220 evil.example ESMTP")
		c.Commands(func(verb, l string) bool {
			switch verb {
			case "EHLO":
				c.Say("250-evil.example\r\n250-AUTH PLAIN\r\n250 STARTTLS")
			case "STARTTLS":
				if !c.StartTLS(evilTLS) {
					return false
				}
			default:
				c.Say("250 ok")
			}

			return true
		})
	})
	s := testkit.NewRelay(t, &relaytest.Options{UpstreamAddr: u.Addr})
	c := testkit.NewClient(t, s, &mxrelay.Options{StartTLS: mxrelay.StartTLSRequired, TLSConfig: &tls.Config{ServerName: "mx.example.com", RootCAs: evilPool},
		Username: "u", Password: "secret-password", MaxReconnectAttempts: 1})
	_, err := c.Send(testkit.Ctx(t), testkit.Mail("x"))
	var cve *tls.CertificateVerificationError
	require.ErrorAs(t, err, &cve)
	assert.False(t, u.Saw("AUTH"), "%q", u.Transcript())

	// Without a ServerName there is no name of the caller's to check:
	// New refuses, where the greeting's evil.example was checked and the
	// password sent to it.
	c2, err := mxrelay.New(s.URL, s.APIKey, testkit.Fast(&mxrelay.Options{StartTLS: mxrelay.StartTLSRequired, TLSConfig: &tls.Config{RootCAs: evilPool},
		Username: "u", Password: "secret-password", MaxReconnectAttempts: 1}))
	if err == nil {
		c2.Send(testkit.Ctx(t), testkit.Mail("y"))
		c2.Close(testkit.Ctx(t))
	}
	require.Error(t, err, "STARTTLS with no TLSConfig.ServerName")
	assert.False(t, u.Saw("AUTH"), "%q", u.Transcript())
}

func TestSMTPAuth(t *testing.T) {
	s := testkit.NewRelay(t, &relaytest.Options{Users: map[string]string{"alice": "s3cret-pw"}})
	t.Run("good credentials", func(t *testing.T) {
		c := testkit.NewClient(t, s, &mxrelay.Options{Username: "alice", Password: "s3cret-pw", PasswordInClear: true})
		_, err := c.Send(testkit.Ctx(t), testkit.Mail("authed"))
		require.NoError(t, err)
		box := s.Mailbox()
		require.Len(t, box, 1)
		assert.Equal(t, "alice", box[0].User)
	})
	t.Run("bad credentials fail the waiting emails", func(t *testing.T) {
		c := testkit.NewClient(t, s, &mxrelay.Options{Username: "alice", Password: "wrong", PasswordInClear: true})
		_, err := c.Send(testkit.Ctx(t), testkit.Mail("refused"))
		var se *mxrelay.SMTPError
		require.ErrorAs(t, err, &se)
		assert.Equal(t, 5, se.Code/100)
		assert.Equal(t, 0, testkit.CountSubject(s, "refused"))
	})
	t.Run("no credentials, server requires them", func(t *testing.T) {
		c := testkit.NewClient(t, s, nil)
		_, err := c.Send(testkit.Ctx(t), testkit.Mail("anonymous"))
		var se *mxrelay.SMTPError
		require.ErrorAs(t, err, &se)
		assert.Equal(t, 0, testkit.CountSubject(s, "anonymous"))
	})
}

func TestSMTPAuthLogin(t *testing.T) {
	s := testkit.NewRelay(t, &relaytest.Options{Users: map[string]string{"dave": "pw-login"}, AuthMechanisms: []string{"LOGIN"}})
	logs := &testkit.LogBuffer{}
	c := testkit.NewClient(t, s, &mxrelay.Options{Username: "dave", Password: "pw-login", PasswordInClear: true, Logger: logs.Logger()})
	_, err := c.Send(testkit.Ctx(t), testkit.Mail("login"))
	require.NoError(t, err)
	require.Len(t, s.Mailbox(), 1)
	assert.Equal(t, "dave", s.Mailbox()[0].User)
	out := logs.String()
	assert.Contains(t, out, `dir=C line="AUTH LOGIN ****"`, "LOGIN (username as initial response, masked) when PLAIN is not offered")
	for _, secret := range []string{"pw-login", base64.StdEncoding.EncodeToString([]byte("pw-login")), base64.StdEncoding.EncodeToString([]byte("dave"))} {
		assert.NotContains(t, out, secret)
	}

	t.Run("no mechanism we speak", func(t *testing.T) {
		s := testkit.NewRelay(t, &relaytest.Options{Users: map[string]string{"dave": "pw"}, AuthMechanisms: []string{"CRAM-MD5"}})
		c := testkit.NewClient(t, s, &mxrelay.Options{Username: "dave", Password: "pw", PasswordInClear: true, MaxReconnectAttempts: 5})
		_, err := c.Send(testkit.Ctx(t), testkit.Mail("x"))
		require.Error(t, err)
		assert.Equal(t, 1, s.Stats().Channels, "permanent: not retried")
	})
}

// TestNoAuthWithoutRequiredTLS: with StartTLSRequired, credentials never
// travel when STARTTLS fails, whatever the way it fails; the server's
// transcript, in clear and under TLS, is checked for AUTH.
func TestNoAuthWithoutRequiredTLS(t *testing.T) {
	serverTLS, pool := selfSigned(t)
	for _, tc := range []struct {
		name      string
		offer     bool                        // STARTTLS in EHLO
		starttls  func(c *fakesmtp.Conn) bool // answers STARTTLS; true: TLS is up
		permanent bool                        // no reconnect attempts
		delivered bool                        // the control case
		clientTLS *tls.Config
	}{
		{name: "server lacks STARTTLS", permanent: true},
		{name: "454 to STARTTLS", offer: true, starttls: func(c *fakesmtp.Conn) bool {
			c.Say("454 4.7.0 TLS not available")
			return false
		}},
		{name: "handshake fails on the certificate", offer: true, permanent: true, starttls: func(c *fakesmtp.Conn) bool {
			return c.StartTLS(serverTLS)
		}, clientTLS: &tls.Config{ServerName: "mx.test"}},
		// Only a certificate that does not verify is permanent: a
		// connection that ends in the handshake is retried (and AUTH is
		// still never sent in clear).
		{name: "220 then the connection ends", offer: true, starttls: func(c *fakesmtp.Conn) bool {
			c.Say("220 2.0.0 go ahead")
			c.Close()
			return false
		}},
		{name: "control: TLS up, AUTH sent under it", offer: true, delivered: true, starttls: func(c *fakesmtp.Conn) bool {
			return c.StartTLS(serverTLS)
		}, clientTLS: &tls.Config{ServerName: "mx.test", RootCAs: pool}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			u := fakesmtp.Listen(t, func(c *fakesmtp.Conn) {
				c.Say("220 mx.test ESMTP")
				secure := false
				c.Commands(func(verb, l string) bool {
					switch {
					case verb == "EHLO" && tc.offer && !secure:
						c.Say("250-mx.test\r\n250-AUTH PLAIN LOGIN\r\n250 STARTTLS")
					case verb == "EHLO":
						c.Say("250-mx.test\r\n250 AUTH PLAIN LOGIN")
					case verb == "STARTTLS":
						if secure = tc.starttls(c); !secure {
							c.Drain()
							return false
						}
					case verb == "AUTH":
						c.Say("235 2.7.0 ok")
					case verb == "DATA":
						c.Say("354 go ahead")
						if _, ok := c.Body(); !ok {
							return false
						}
						c.Say("250 2.0.0 queued")
					default:
						c.Say("250 ok")
					}

					return true
				})
			})
			s := testkit.NewRelay(t, &relaytest.Options{UpstreamAddr: u.Addr})
			if tc.clientTLS == nil {
				tc.clientTLS = &tls.Config{ServerName: "mx.test"}
			}
			c := testkit.NewClient(t, s, &mxrelay.Options{StartTLS: mxrelay.StartTLSRequired, TLSConfig: tc.clientTLS, Username: "erin", Password: "pw-needs-tls", MaxReconnectAttempts: 2})
			_, err := c.Send(testkit.Ctx(t), testkit.Mail("over tls only"))
			if tc.delivered {
				require.NoError(t, err)
				assert.True(t, u.Saw("AUTH PLAIN"), "the transcript sees AUTH when it is sent: %q", u.Transcript())
				return
			}
			require.Error(t, err)
			assert.False(t, u.Saw("AUTH"), "no AUTH: %q", u.Transcript())
			assert.False(t, u.Saw("MAIL"), "nothing sent: %q", u.Transcript())
			var ce *mxrelay.ConnectError
			assert.Equal(t, !tc.permanent, errors.As(err, &ce), "%v", err)
		})
	}
}

func TestDebugLogsHideSecrets(t *testing.T) {
	const apiKey = "relay-api-key-SECRET-0123456789"
	const password = "smtp-pass-SECRET"
	for _, tc := range []struct {
		hide []string
		body string
	}{{nil, "<chunk, "}, {[]string{"CHUNKING"}, "<message body"}} {
		t.Run(tc.body, func(t *testing.T) {
			s := testkit.NewRelay(t, &relaytest.Options{APIKeys: []string{apiKey}, Users: map[string]string{"carol": password}, HideExtensions: tc.hide})
			logs := &testkit.LogBuffer{}
			c, err := mxrelay.New(s.URL, apiKey, testkit.Fast(&mxrelay.Options{Username: "carol", Password: password, PasswordInClear: true, Logger: logs.Logger(), LocalName: "mx-client.example"}))
			require.NoError(t, err)
			_, err = c.Send(testkit.Ctx(t), mxrelay.Email{From: "a@example.com", To: []string{"b@example.com"}, Body: strings.NewReader(testkit.Msg("secret body text XYZZY"))})
			require.NoError(t, err)
			require.NoError(t, c.Close(testkit.Ctx(t)))

			out := logs.String()
			assert.Contains(t, out, "MAIL FROM:<a@example.com>", "the dialogue is logged")
			assert.Contains(t, out, `line="EHLO mx-client.example"`, "EHLO uses LocalName")
			assert.Contains(t, out, "AUTH PLAIN ****")
			assert.Contains(t, out, tc.body, "the body is summarised")
			plainPayload := base64.StdEncoding.EncodeToString([]byte("\x00carol\x00" + password))
			for _, secret := range []string{apiKey, password, plainPayload, base64.StdEncoding.EncodeToString([]byte(password)), "XYZZY"} {
				assert.NotContains(t, out, secret)
			}
			assert.Contains(t, out, "****6789", "the key appears masked at most")
		})
	}
}

// TestSecretsNeverLeakOnFailure: along failure paths, with debug logging
// on, no API key, SMTP password or AUTH payload appears, in any encoding,
// in a log line, an error, a Result or an event.
func TestSecretsNeverLeakOnFailure(t *testing.T) {
	const apiKey = "relay+KEY/s3cret=0123abcd"
	const user, password = "carol@example.com", "p@ss w0rd/SECRET+="
	var secrets []string
	for _, s := range []string{apiKey, password, "\x00" + user + "\x00" + password, user, "Bearer " + apiKey} {
		for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.RawStdEncoding, base64.URLEncoding} {
			secrets = append(secrets, enc.EncodeToString([]byte(s)))
		}
	}
	secrets = append(secrets, apiKey, password, url.QueryEscape(apiKey), url.PathEscape(apiKey), url.QueryEscape(password), url.PathEscape(password))

	serverTLS, _ := selfSigned(t)
	// cutAt ends the connection when the client sends a line starting
	// with prefix, after answering what comes before like a server
	// offering AUTH mech; reply, if set, answers that line instead.
	cutAt := func(mech, prefix, reply string) func(c *fakesmtp.Conn) {
		return func(c *fakesmtp.Conn) {
			c.Say("220 mx.test ESMTP")
			for {
				l, ok := c.Line()
				if !ok {
					return
				}
				switch {
				case strings.HasPrefix(l, prefix) && reply != "":
					c.Say(reply)
				case strings.HasPrefix(l, prefix):
					return
				case strings.HasPrefix(l, "EHLO"):
					c.Say("250-mx.test\r\n250 AUTH " + mech)
				case strings.HasPrefix(l, "AUTH LOGIN"):
					c.Say("334 UGFzc3dvcmQ6")
				default:
					c.Say("250 ok")
				}
			}
		}
	}
	passwordLine := base64.StdEncoding.EncodeToString([]byte(password))
	for _, tc := range []struct {
		name     string
		relay    relaytest.Options
		upstream func(c *fakesmtp.Conn)
		opts     mxrelay.Options
	}{
		{name: "relay refuses the key", relay: relaytest.Options{APIKeys: []string{"another-key"}}},
		{name: "raw tunnel answers 401", relay: relaytest.Options{APIKeys: []string{"another-key"}, RawTunnel: true}, opts: mxrelay.Options{RawTunnel: true}},
		{name: "SMTP AUTH PLAIN refused with 535", relay: relaytest.Options{APIKeys: []string{apiKey}, Users: map[string]string{user: "other"}}},
		{name: "SMTP AUTH LOGIN refused with 535", relay: relaytest.Options{APIKeys: []string{apiKey}, Users: map[string]string{user: "other"}, AuthMechanisms: []string{"LOGIN"}}},
		{name: "cut during AUTH PLAIN", relay: relaytest.Options{APIKeys: []string{apiKey}}, upstream: cutAt("PLAIN", "AUTH PLAIN", "")},
		{name: "cut during AUTH LOGIN", relay: relaytest.Options{APIKeys: []string{apiKey}}, upstream: cutAt("LOGIN", passwordLine, "")},
		{name: "AUTH LOGIN: 250 to the password", relay: relaytest.Options{APIKeys: []string{apiKey}}, upstream: cutAt("LOGIN", passwordLine, "250 fine")},
		{name: "AUTH PLAIN: malformed reply", relay: relaytest.Options{APIKeys: []string{apiKey}}, upstream: cutAt("PLAIN", "AUTH PLAIN", "2x5 what")},
		{name: "STARTTLS required, untrusted certificate", relay: relaytest.Options{APIKeys: []string{apiKey}, Users: map[string]string{user: password}, TLSConfig: serverTLS}, opts: mxrelay.Options{StartTLS: mxrelay.StartTLSRequired, TLSConfig: &tls.Config{ServerName: "mx.test"}}},
		{name: "STARTTLS required, not offered", relay: relaytest.Options{APIKeys: []string{apiKey}, Users: map[string]string{user: password}}, opts: mxrelay.Options{StartTLS: mxrelay.StartTLSRequired, TLSConfig: &tls.Config{ServerName: "mx.test"}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ro := tc.relay
			if tc.upstream != nil {
				ro.UpstreamAddr = fakesmtp.Listen(t, tc.upstream).Addr
			}
			s := testkit.NewRelay(t, &ro)
			logs := &testkit.LogBuffer{}
			rec := &testkit.Recorder{}
			o := tc.opts
			o.Username, o.Password, o.Logger, o.OnEvent, o.MaxReconnectAttempts = user, password, logs.Logger(), rec.On, 2
			o.PasswordInClear = o.StartTLS == mxrelay.StartTLSNever
			c, err := mxrelay.New(s.URL, apiKey, testkit.Fast(&o))
			require.NoError(t, err)
			res, err := c.Send(testkit.Ctx(t), mxrelay.Email{From: "a@example.com", To: []string{"b@example.com"}, Body: strings.NewReader(testkit.Msg("x"))})
			require.Error(t, err)
			c.Close(testkit.Ctx(t)) // all events delivered

			seen := []string{logs.String(), err.Error(), fmt.Sprintf("%+v", err)}
			if res != nil {
				seen = append(seen, res.Err.Error())
			}
			for _, e := range rec.Events() {
				if e.Err != nil {
					seen = append(seen, e.Err.Error())
				}
				if e.Result != nil && e.Result.Err != nil {
					seen = append(seen, e.Result.Err.Error())
				}
			}
			all := strings.Join(seen, "\n")
			for _, secret := range secrets {
				assert.NotContains(t, all, secret)
			}
			assert.Contains(t, logs.String(), "level=DEBUG", "debug logging was on")
		})
	}
}
