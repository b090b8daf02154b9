package mxrelay_test

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mxrelay/mxrelay"
	"github.com/mxrelay/mxrelay/internal/testkit"
	"github.com/mxrelay/mxrelay/relaytest"
)

func TestRelayURL(t *testing.T) {
	for _, tc := range []struct {
		host   string
		port   int
		secure bool
		path   string
		want   string
		bad    bool
	}{
		{host: "relay.example.com", secure: true, want: "wss://relay.example.com:443/smtp"},
		{host: "relay.example.com", want: "ws://relay.example.com:80/smtp"},
		{host: "relay.example.com", port: 8443, secure: true, path: "ws", want: "wss://relay.example.com:8443/ws"},
		{host: "::1", port: 9000, want: "ws://[::1]:9000/smtp"},
		{host: "[::1]", port: 9000, want: "ws://[::1]:9000/smtp"},
		{host: "", bad: true},
		{host: "evil.com/path", bad: true},
		{host: "user@host", bad: true},
		{host: "h", port: 70000, bad: true},
	} {
		got, err := mxrelay.RelayURL(tc.host, tc.port, tc.secure, tc.path)
		if tc.bad {
			assert.Error(t, err, tc.host)
			continue
		}
		require.NoError(t, err)
		assert.Equal(t, tc.want, got)
	}
}

func TestTransportSendMail(t *testing.T) {
	s := testkit.NewRelay(t, nil)
	tr := testkit.NewTransport(t, s, nil)

	require.NoError(t, tr.SendMail("smtp.example.com:25", nil, "a@example.com", []string{"b@example.com"}, []byte(testkit.Msg("transport"))))
	require.Len(t, s.Mailbox(), 1)
	assert.Equal(t, testkit.Msg("transport"), string(s.Mailbox()[0].Data))

	s.Inject(relaytest.Fault{Kind: relaytest.ReplaceReply, Command: "MAIL", Reply: "554 5.7.1 no"})
	err := tr.SendMail("smtp.example.com:25", nil, "a@example.com", []string{"b@example.com"}, []byte(testkit.Msg("refused")))
	var se *mxrelay.SMTPError
	require.ErrorAs(t, err, &se)
	assert.Equal(t, 554, se.Code)

	_, err = mxrelay.NewTransport("k", mxrelay.TransportOptions{})
	require.Error(t, err, "there is no default relay")
}
