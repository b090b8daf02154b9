package mxrelay_test

import (
	"crypto/tls"
	"errors"
	"net/smtp"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mxrelay/mxrelay"
	"github.com/mxrelay/mxrelay/internal/testkit"
	"github.com/mxrelay/mxrelay/relaytest"
)

// sendMailFunc is the type of net/smtp's SendMail.
type sendMailFunc = func(addr string, a smtp.Auth, from string, to []string, msg []byte) error

// Both drop-ins have net/smtp's type, so a variable that held smtp.SendMail
// can hold them.
var (
	_ sendMailFunc = smtp.SendMail
	_ sendMailFunc = mxrelay.SendMail
	_ sendMailFunc = (*mxrelay.Transport)(nil).SendMail
)

func TestTransportSendMailLineEnds(t *testing.T) {
	s := testkit.NewRelay(t, nil)
	tr := testkit.NewTransport(t, s, nil)
	var send sendMailFunc = tr.SendMail // the one line that changes

	require.NoError(t, send("smtp.example.com:25", nil, "a@example.com", []string{"b@example.com"}, []byte("Subject: lf\n\n.\nlast line without end")))
	require.Len(t, s.Mailbox(), 1)
	assert.Equal(t, "Subject: lf\r\n\r\n.\r\nlast line without end\r\n", string(s.Mailbox()[0].Data),
		"bare LF becomes CRLF as with net/smtp, whatever the engine sends (DATA or BDAT); the lone dot is stuffed, not an end of data")
}

// loginAuth is the LOGIN Auth that code written for net/smtp often carries.
type loginAuth struct{ user, pass string }

func (a loginAuth) Start(*smtp.ServerInfo) (string, []byte, error) { return "LOGIN", nil, nil }

func (a loginAuth) Next(fromServer []byte, more bool) ([]byte, error) {
	if !more {
		return nil, nil
	}
	switch string(fromServer) {
	case "Username:":
		return []byte(a.user), nil
	case "Password:":
		return []byte(a.pass), nil
	}
	return nil, errors.New("unexpected challenge " + string(fromServer))
}

func TestTransportSendMailAuth(t *testing.T) {
	serverTLS, pool := selfSigned(t)
	users := map[string]string{"alice": "pw-alice"}
	s := testkit.NewRelay(t, &relaytest.Options{TLSConfig: serverTLS, Users: users})
	tr := testkit.NewTransport(t, s, &mxrelay.Options{
		StartTLS: mxrelay.StartTLSRequired, TLSConfig: &tls.Config{RootCAs: pool, ServerName: "mx.test"},
		Username: "alice", Password: "pw-alice",
	})
	body := []byte(testkit.Msg("auth"))
	to := []string{"b@example.com"}

	for _, tc := range []struct {
		name    string
		addr    string
		auth    smtp.Auth
		wantErr string
	}{
		{name: "no Auth: the Transport's credentials", addr: "mx.test:587"},
		{name: "PlainAuth with the same credentials", addr: "mx.test:587", auth: smtp.PlainAuth("", "alice", "pw-alice", "mx.test")},
		{name: "PlainAuth with alice as identity", addr: "mx.test:587", auth: smtp.PlainAuth("alice", "alice", "pw-alice", "mx.test")},
		{name: "LOGIN Auth", addr: "mx.test:587", auth: loginAuth{"alice", "pw-alice"}},
		{name: "other credentials", addr: "mx.test:587", auth: smtp.PlainAuth("", "alice", "guess", "mx.test"), wantErr: "not the Transport's"},
		{name: "PlainAuth for another host", addr: "mx.test:587", auth: smtp.PlainAuth("", "alice", "pw-alice", "smtp.example.com"), wantErr: "wrong host name"},
		{name: "another identity", addr: "mx.test:587", auth: smtp.PlainAuth("admin", "alice", "pw-alice", "mx.test"), wantErr: "authorization identity"},
		{name: "CRAM-MD5", addr: "mx.test:587", auth: smtp.CRAMMD5Auth("alice", "pw-alice"), wantErr: "CRAM-MD5"},
		{name: "addr without a port", addr: "mx.test", auth: smtp.PlainAuth("", "alice", "pw-alice", "mx.test"), wantErr: "port"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := len(s.Mailbox())
			err := tr.SendMail(tc.addr, tc.auth, "a@example.com", to, body)
			if tc.wantErr != "" {
				require.ErrorContains(t, err, tc.wantErr)
				assert.Len(t, s.Mailbox(), before, "nothing sent")
				return
			}
			require.NoError(t, err)
			box := s.Mailbox()
			require.Len(t, box, before+1)
			assert.Equal(t, "alice", box[before].User)
		})
	}

	t.Run("no STARTTLS: PlainAuth refuses a clear connection but to localhost", func(t *testing.T) {
		clear := testkit.NewRelay(t, &relaytest.Options{Users: users})
		tr := testkit.NewTransport(t, clear, &mxrelay.Options{Username: "alice", Password: "pw-alice", PasswordInClear: true})
		err := tr.SendMail("smtp.example.com:587", smtp.PlainAuth("", "alice", "pw-alice", "smtp.example.com"), "a@example.com", to, body)
		require.ErrorContains(t, err, "unencrypted connection")
		assert.Empty(t, clear.Mailbox())

		require.NoError(t, tr.SendMail("localhost:25", smtp.PlainAuth("", "alice", "pw-alice", "localhost"), "a@example.com", to, body))
		assert.Len(t, clear.Mailbox(), 1)
	})
}

func TestSendMailFromEnvironment(t *testing.T) {
	s := testkit.NewRelay(t, nil)
	t.Setenv(mxrelay.EnvURL, s.URL)
	t.Setenv(mxrelay.EnvAPIKey, s.APIKey)
	require.NoError(t, mxrelay.SendMail("smtp.example.com:25", nil, "a@example.com", []string{"b@example.com", "c@example.com"}, []byte(testkit.Msg("env"))))
	box := s.Mailbox()
	require.Len(t, box, 1)
	assert.Equal(t, []string{"b@example.com", "c@example.com"}, box[0].To)
	assert.Equal(t, testkit.Msg("env"), string(box[0].Data))

	s.Inject(relaytest.Fault{Kind: relaytest.ReplaceReply, Command: "RCPT", Reply: "550 5.1.1 no such user"})
	err := mxrelay.SendMail("smtp.example.com:25", nil, "a@example.com", []string{"nobody@example.com"}, []byte(testkit.Msg("refused")))
	var se *mxrelay.SMTPError
	require.ErrorAs(t, err, &se)
	assert.Equal(t, 550, se.Code)
}

// A recipient refused and another accepted: net/smtp and gomail fail
// such a send, so the drop-ins return a *PartialError, which says who got
// it and unwraps to the refusal.
func TestDropInsReportAPartialRefusal(t *testing.T) {
	check := func(t *testing.T, err error, s *relaytest.Server) {
		t.Helper()
		var pe *mxrelay.PartialError
		require.ErrorAs(t, err, &pe)
		assert.Equal(t, []string{"b@example.com"}, pe.Result.Accepted)
		require.Len(t, pe.Result.Rejected, 1)
		assert.Equal(t, "nobody@example.com", pe.Result.Rejected[0].Address)
		var se *mxrelay.SMTPError
		require.ErrorAs(t, err, &se)
		assert.Equal(t, 550, se.Code)
		assert.Contains(t, err.Error(), "nobody@example.com")
		assert.Len(t, s.Mailbox(), 1, "delivered to the one accepted")
	}
	refusing := func(t *testing.T) *relaytest.Server {
		s := testkit.NewRelay(t, nil)
		s.Inject(relaytest.Fault{Kind: relaytest.ReplaceReply, Command: "RCPT", Recipient: "nobody@example.com", Reply: "550 5.1.1 no such user"})
		return s
	}
	to := []string{"b@example.com", "nobody@example.com"}
	t.Run("SendMail", func(t *testing.T) {
		s := refusing(t)
		t.Setenv(mxrelay.EnvURL, s.URL)
		t.Setenv(mxrelay.EnvAPIKey, s.APIKey)
		check(t, mxrelay.SendMail("smtp.example.com:25", nil, "a@example.com", to, []byte(testkit.Msg("partial"))), s)
	})
	t.Run("Transport", func(t *testing.T) {
		s := refusing(t)
		tr := testkit.NewTransport(t, s, nil)
		check(t, tr.SendMail("smtp.example.com:25", nil, "a@example.com", to, []byte(testkit.Msg("partial"))), s)
	})
	t.Run("Sender", func(t *testing.T) {
		s := refusing(t)
		c := testkit.NewClient(t, s, nil)
		check(t, mxrelay.NewSender(c).Send("a@example.com", to, strings.NewReader(testkit.Msg("partial"))), s)
	})
	t.Run("Sender, a message that writes itself out", func(t *testing.T) {
		s := refusing(t)
		c := testkit.NewClient(t, s, nil)
		msg := &writerTo{chunks: []string{testkit.Msg("partial")}} // go-mail's Msg is such a one
		check(t, mxrelay.NewSender(c).Send("a@example.com", to, msg), s)
		require.NoError(t, msg.err)
	})
}
