package smtpc

import (
	"encoding/base64"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mxrelay/mxrelay/internal/fakesmtp"
)

// An unexpected reply to a SASL response must not name the response in
// the error: with LOGIN that line is the base64 of the username or of the
// password.
func TestAuthErrorsNeverQuoteTheResponse(t *testing.T) {
	const user, pass = "dave@example.com", "pw-LOGIN-secret"
	for _, tc := range []struct {
		name  string
		reply string // to the password line
	}{
		{"2xx that is not 235", "250 2.0.0 fine, I guess"},
		{"3xx that is not a challenge", "354 go ahead"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			nc, _ := fakesmtp.Pipe(t, func(srv *fakesmtp.Conn) {
				srv.Hello("AUTH LOGIN")
				srv.Line() // AUTH LOGIN <user>
				srv.Say("334 UGFzc3dvcmQ6")
				srv.Line() // the password
				srv.Say(tc.reply)
				srv.Drain()
			})
			c := startClient(t, nc, Config{})
			var err error
			if within(t, 2*time.Second, "Auth", func() { err = c.Auth(sasl.NewLoginClient(user, pass)) }) {
				require.ErrorIs(t, err, ErrProtocol)
				for _, secret := range []string{pass, base64.StdEncoding.EncodeToString([]byte(pass)), base64.StdEncoding.EncodeToString([]byte(user))} {
					assert.NotContains(t, err.Error(), secret)
				}
				assert.Contains(t, err.Error(), "AUTH LOGIN", "the error names the exchange")
			}
			c.Close(nil)
		})
	}
}
