package mxrelay_test

import (
	"crypto/tls"
	"encoding/base64"
	"fmt"
	"net/url"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mxrelay/mxrelay"
	"github.com/mxrelay/mxrelay/internal/fakesmtp"
	"github.com/mxrelay/mxrelay/internal/testkit"
	"github.com/mxrelay/mxrelay/relaytest"
)

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
