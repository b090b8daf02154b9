package test

import (
	"crypto/tls"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mxrelay/mxrelay"
	"github.com/mxrelay/mxrelay/internal/fakesmtp"
	"github.com/mxrelay/mxrelay/internal/testkit"
	"github.com/mxrelay/mxrelay/relaytest"
)

// With StartTLSOpportunistic and credentials, an upstream (or a relay
// rewriting its EHLO) that hides STARTTLS, refuses it with 454, or answers
// 220 and then sends cleartext instead of a TLS handshake, never gets AUTH
// in clear. Held at the time of writing.
func TestRedTeamNoAuthInClearWhenSTARTTLSFails(t *testing.T) {
	for _, tc := range []struct {
		name     string
		ext      string
		starttls func(c *fakesmtp.Conn) bool
	}{
		{name: "STARTTLS stripped from EHLO", ext: "250-mx.test\r\n250-AUTH PLAIN LOGIN\r\n250 PIPELINING"},
		{name: "STARTTLS refused 454", ext: "250-mx.test\r\n250-AUTH PLAIN LOGIN\r\n250 STARTTLS",
			starttls: func(c *fakesmtp.Conn) bool { return c.Say("454 4.7.0 TLS not available") }},
		{name: "220 then cleartext", ext: "250-mx.test\r\n250-AUTH PLAIN LOGIN\r\n250 STARTTLS",
			starttls: func(c *fakesmtp.Conn) bool { return c.Say("220 go ahead\r\n250 injected") }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			u := fakesmtp.Listen(t, func(c *fakesmtp.Conn) {
				c.Say("220 mx.test ESMTP")
				c.Commands(func(verb, l string) bool {
					switch verb {
					case "EHLO":
						c.Say(tc.ext)
					case "STARTTLS":
						if tc.starttls == nil {
							c.Say("502 no")
							return true
						}
						return tc.starttls(c)
					case "AUTH":
						c.Say("235 ok")
					default:
						c.Say("250 ok")
					}
					return true
				})
			})
			s := testkit.NewRelay(t, &relaytest.Options{UpstreamAddr: u.Addr})
			c := testkit.NewClient(t, s, &mxrelay.Options{StartTLS: mxrelay.StartTLSOpportunistic,
				TLSConfig: &tls.Config{ServerName: "mx.example.com"}, Username: "u", Password: "pw", MaxReconnectAttempts: 1})
			_, err := c.Send(testkit.Ctx(t), testkit.Mail("x"), mxrelay.WithRetries(0))
			require.Error(t, err)
			assert.False(t, u.Saw("AUTH"), "AUTH sent in clear: %q", u.Transcript())
		})
	}
}
