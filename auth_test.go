package mxrelay_test

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mxrelay/mxrelay"
	"github.com/mxrelay/mxrelay/internal/fakesmtp"
	"github.com/mxrelay/mxrelay/internal/testkit"
	"github.com/mxrelay/mxrelay/relaytest"
)

// selfSigned returns a server TLS config for mx.test and a pool trusting it.
func selfSigned(t *testing.T) (*tls.Config, *x509.CertPool) { return selfSignedFor(t, "mx.test") }

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
