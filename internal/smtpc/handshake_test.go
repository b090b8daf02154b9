package smtpc

import (
	"context"
	"crypto/tls"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mxrelay/mxrelay/internal/fakesmtp"
	"github.com/mxrelay/mxrelay/internal/testcert"
)

// The handshake policy, against a scripted server: when STARTTLS runs,
// which AUTH mechanism is chosen, when AUTH is refused before anything
// is sent, and which failures are permanent.
func TestHandshakePolicy(t *testing.T) {
	cert, pool, err := testcert.New("mx.test")
	require.NoError(t, err)
	serverTLS := &tls.Config{Certificates: []tls.Certificate{cert}}
	trusted := &tls.Config{ServerName: "mx.test", RootCAs: pool}
	untrusted := &tls.Config{ServerName: "mx.test"}
	creds := func(p Policy) Policy { p.Username, p.Password = "user", "pw"; return p }

	for _, tc := range []struct {
		name     string
		ext      []string // offered in EHLO
		starttls string   // the reply to STARTTLS; "TLS": 220 and a handshake
		auth     string   // the reply to AUTH, once its exchange is done
		utf8Only bool
		policy   Policy
		// What is expected: the commands the server read after EHLO (by
		// their first word), whether the error is permanent, the code of
		// the SMTP reply it carries, and a skipped STARTTLS.
		want      []string
		permanent bool
		code      int
		certErr   bool
		skipped   bool
	}{
		{name: "never", ext: []string{"STARTTLS"}, policy: Policy{StartTLS: TLSNever}},
		{name: "if offered, not offered", policy: Policy{StartTLS: TLSIfOffered}},
		{name: "if offered, UTF-8 only", ext: []string{"STARTTLS"}, utf8Only: true, policy: Policy{StartTLS: TLSIfOffered}, skipped: true},
		{name: "required, not offered", policy: Policy{StartTLS: TLSRequired}, permanent: true},
		{name: "required, UTF-8 only", ext: []string{"STARTTLS"}, utf8Only: true, policy: Policy{StartTLS: TLSRequired}, permanent: true},
		{name: "required, 454", ext: []string{"STARTTLS"}, starttls: "454 4.7.0 not now", policy: Policy{StartTLS: TLSRequired},
			want: []string{"STARTTLS"}, code: 454},
		{name: "required, 554", ext: []string{"STARTTLS"}, starttls: "554 5.7.0 never", policy: Policy{StartTLS: TLSRequired},
			want: []string{"STARTTLS"}, permanent: true, code: 554},
		{name: "required, certificate not trusted", ext: []string{"STARTTLS"}, starttls: "TLS", policy: Policy{StartTLS: TLSRequired, TLSConfig: untrusted},
			want: []string{"STARTTLS"}, permanent: true, certErr: true},
		{name: "TLS up, then AUTH PLAIN under it", ext: []string{"STARTTLS", "AUTH LOGIN PLAIN"}, starttls: "TLS", auth: "235 2.7.0 ok",
			policy: creds(Policy{StartTLS: TLSRequired, TLSConfig: trusted}), want: []string{"STARTTLS", "EHLO", "AUTH PLAIN"}},
		{name: "AUTH in clear refused", ext: []string{"AUTH PLAIN"}, policy: creds(Policy{StartTLS: TLSIfOffered}), permanent: true},
		{name: "AUTH in clear allowed: PLAIN first", ext: []string{"AUTH LOGIN PLAIN"}, auth: "235 2.7.0 ok",
			policy: creds(Policy{PasswordInClear: true}), want: []string{"AUTH PLAIN"}},
		{name: "LOGIN without PLAIN", ext: []string{"AUTH LOGIN CRAM-MD5"}, auth: "235 2.7.0 ok",
			policy: creds(Policy{PasswordInClear: true}), want: []string{"AUTH LOGIN", "(password)"}},
		{name: "no mechanism we speak", ext: []string{"AUTH CRAM-MD5"}, policy: creds(Policy{PasswordInClear: true}), permanent: true},
		{name: "535 to AUTH", ext: []string{"AUTH PLAIN"}, auth: "535 5.7.8 bad credentials",
			policy: creds(Policy{PasswordInClear: true}), want: []string{"AUTH PLAIN"}, permanent: true, code: 535},
		{name: "454 to AUTH", ext: []string{"AUTH PLAIN"}, auth: "454 4.7.0 try later",
			policy: creds(Policy{PasswordInClear: true}), want: []string{"AUTH PLAIN"}, code: 454},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var mu sync.Mutex
			var got []string
			saw := func(l string) {
				mu.Lock()
				got = append(got, l)
				mu.Unlock()
			}
			nc, _ := fakesmtp.Pipe(t, func(srv *fakesmtp.Conn) {
				srv.Hello(tc.ext...)
				for {
					l, ok := srv.Line()
					switch {
					case !ok:
						return
					case l == "STARTTLS":
						saw("STARTTLS")
						if tc.starttls != "TLS" {
							srv.Say(tc.starttls)
							continue
						}
						if !srv.StartTLS(serverTLS) {
							return
						}
					case strings.HasPrefix(l, "EHLO"):
						saw("EHLO")
						srv.Say("250-mx.example\r\n250 AUTH LOGIN PLAIN")
					case strings.HasPrefix(l, "AUTH LOGIN"):
						saw("AUTH LOGIN")
						srv.Say("334 UGFzc3dvcmQ6")
						srv.Line()
						saw("(password)")
						srv.Say(tc.auth)
					case strings.HasPrefix(l, "AUTH PLAIN"):
						saw("AUTH PLAIN")
						srv.Say(tc.auth)
					default:
						saw(l)
						srv.Say("250 ok")
					}
				}
			})
			c := New(nc, Config{Timeout: 2 * time.Second, UTF8Only: tc.utf8Only})
			skipped := false
			p := tc.policy
			p.LocalName, p.TLSSkipped = "client.example", func() { skipped = true }
			var err error
			within(t, 5*time.Second, "Handshake", func() { err = c.Handshake(context.Background(), p) })
			c.Close(nil)

			mu.Lock()
			assert.Equal(t, tc.want, got, "commands after EHLO")
			mu.Unlock()
			assert.Equal(t, tc.skipped, skipped, "TLSSkipped")
			if !tc.permanent && tc.code == 0 {
				require.NoError(t, err)
				return
			}
			require.Error(t, err)
			assert.Equal(t, tc.permanent, errors.Is(err, ErrPermanent), "permanent: %v", err)
			var se *smtp.SMTPError
			if tc.code != 0 {
				require.ErrorAs(t, err, &se)
				assert.Equal(t, tc.code, se.Code)
			}
			var cve *tls.CertificateVerificationError
			assert.Equal(t, tc.certErr, errors.As(err, &cve), "a certificate error: %v", err)
			assert.NotContains(t, err.Error(), "pw", "no password in the error")
		})
	}
}
