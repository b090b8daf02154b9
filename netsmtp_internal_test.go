package mxrelay

import (
	"crypto/tls"
	"crypto/x509"
	"net/smtp"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mxrelay/mxrelay/internal/testcert"
	"github.com/mxrelay/mxrelay/relaytest"
)

func TestCRLF(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"", ""},
		{"a\r\nb\r\n", "a\r\nb\r\n"},
		{"a\nb\n", "a\r\nb\r\n"},
		{"\n", "\r\n"},
		{"a\r\nb\nc", "a\r\nb\r\nc"},
		{"lone\rcr\n", "lone\rcr\r\n"},
		{"\r\n\n\r\n", "\r\n\r\n\r\n"},
	} {
		assert.Equal(t, tc.want, string(crlf([]byte(tc.in))), "%q", tc.in)
	}
	in := []byte("no bare LF\r\n")
	assert.Same(t, &in[0], &crlf(in)[0], "a message without bare LF is not copied")
}

// envOf returns a getenv that reads m.
func envOf(m map[string]string) func(string) string {
	return func(k string) string { return m[k] }
}

func TestSendMailFunction(t *testing.T) {
	cert, pool, err := testcert.New("mx.test")
	require.NoError(t, err)
	roots := &tls.Config{RootCAs: pool}
	users := map[string]string{"alice": "pw-alice"}
	tlsRelay := relaytest.NewServer(&relaytest.Options{TLSConfig: &tls.Config{Certificates: []tls.Certificate{cert}}, Users: users})
	defer tlsRelay.Close()
	clearRelay := relaytest.NewServer(&relaytest.Options{Users: users})
	defer clearRelay.Close()
	anonRelay := relaytest.NewServer(nil)
	defer anonRelay.Close()
	env := func(s *relaytest.Server) func(string) string {
		return envOf(map[string]string{EnvURL: s.URL, EnvAPIKey: s.APIKey})
	}
	to := []string{"bob@example.com"}

	t.Run("no auth, LF line ends", func(t *testing.T) {
		err := sendMail(env(anonRelay), roots, "mx.test:25", nil, "app@example.com", to, []byte("Subject: lf\n\nbody\n"))
		require.NoError(t, err)
		box := anonRelay.Mailbox()
		require.Len(t, box, 1)
		assert.Equal(t, "Subject: lf\r\n\r\nbody\r\n", string(box[0].Data))
		assert.Equal(t, to, box[0].To)
	})
	t.Run("PlainAuth over STARTTLS", func(t *testing.T) {
		err := sendMail(env(tlsRelay), roots, "mx.test:587", smtp.PlainAuth("", "alice", "pw-alice", "mx.test"), "app@example.com", to, []byte("Subject: auth\r\n\r\nx\r\n"))
		require.NoError(t, err)
		box := tlsRelay.Mailbox()
		require.Len(t, box, 1)
		assert.Equal(t, "alice", box[0].User)
	})
	t.Run("the certificate is checked against addr's host", func(t *testing.T) {
		err := sendMail(env(tlsRelay), roots, "other.test:587", smtp.PlainAuth("", "alice", "pw-alice", "other.test"), "app@example.com", to, []byte("Subject: wrong host\r\n\r\nx\r\n"))
		var hostErr x509.HostnameError
		require.ErrorAs(t, err, &hostErr)
		assert.Len(t, tlsRelay.Mailbox(), 1, "nothing more delivered")
	})
	t.Run("auth needs STARTTLS: no credential in clear", func(t *testing.T) {
		err := sendMail(env(clearRelay), roots, "mx.test:587", smtp.PlainAuth("", "alice", "pw-alice", "mx.test"), "app@example.com", to, []byte("Subject: clear\r\n\r\nx\r\n"))
		require.Error(t, err)
		assert.Empty(t, clearRelay.Mailbox())
	})
	t.Run("PlainAuth made for another host", func(t *testing.T) {
		err := sendMail(env(tlsRelay), roots, "mx.test:587", smtp.PlainAuth("", "alice", "pw-alice", "smtp.example.com"), "app@example.com", to, []byte("x\r\n"))
		require.ErrorContains(t, err, "wrong host name") // net/smtp's own check
	})
	t.Run("CRAM-MD5 is refused before anything is sent", func(t *testing.T) {
		before := tlsRelay.Stats().Connections
		err := sendMail(env(tlsRelay), roots, "mx.test:587", smtp.CRAMMD5Auth("alice", "secret"), "app@example.com", to, []byte("x\r\n"))
		require.ErrorContains(t, err, "CRAM-MD5")
		assert.Equal(t, before, tlsRelay.Stats().Connections)
	})
	t.Run("a relay that is down fails at once", func(t *testing.T) {
		down := relaytest.NewServer(nil)
		defer down.Close()
		down.SetDown(true)
		err := sendMail(env(down), roots, "mx.test:25", nil, "app@example.com", to, []byte("x\r\n"))
		var ce *ConnectError
		require.ErrorAs(t, err, &ce)
		assert.Equal(t, 1, ce.Attempts, "one attempt, as net/smtp makes")
	})
	t.Run("bad addr", func(t *testing.T) {
		err := sendMail(env(anonRelay), roots, "no port", nil, "app@example.com", to, []byte("x\r\n"))
		require.Error(t, err)
	})
	t.Run("no relay in the environment", func(t *testing.T) {
		err := sendMail(envOf(nil), roots, "mx.test:25", nil, "app@example.com", to, []byte("x\r\n"))
		require.ErrorContains(t, err, EnvURL)
	})
}
