package relaytest

import (
	"testing"

	"github.com/coder/websocket"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestLoneSurrogateFromTheClientIsRefused: a client's JSON data frame
// whose string holds an escape encoding/json would replace with U+FFFD.
// The relay must not forward the replaced bytes: it closes with 1002 and
// the upstream keeps nothing. An exact surrogate pair goes through as its
// UTF-8. (Found by the red team, round 7.)
func TestLoneSurrogateFromTheClientIsRefused(t *testing.T) {
	for _, tc := range []struct {
		name string
		data string // the JSON string of the frame that carries the body
	}{
		{"lone high in the body", `"Subject: x\r\n\r\nab\ud83d\r\n.\r\n"`},
		{"lone low in the body", `"Subject: x\r\n\r\n\ude00ab\r\n.\r\n"`},
		{"pair reversed", `"Subject: x\r\n\r\n\ude00\ud83d\r\n.\r\n"`},
		{"high then an escaped backslash", `"Subject: x\r\n\r\n\ud83d\\ude00\r\n.\r\n"`},
		{"high at the end of the frame", `"Subject: x\r\n\r\nab\r\n.\r\n\ud83d"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := NewServer(nil)
			defer s.Close()
			c := inData(t, s)
			c.sendRaw(websocket.MessageText, []byte(`{"type":"SMTP_TO_SERVER","data":`+tc.data+`}`))
			c.expectClose(websocket.StatusProtocolError)
			assert.Empty(t, s.Mailbox(), "a replaced byte reached the upstream")
		})
	}
	t.Run("exact pair", func(t *testing.T) {
		s := NewServer(nil)
		defer s.Close()
		c := inData(t, s)
		c.sendRaw(websocket.MessageText, []byte(`{"type":"SMTP_TO_SERVER","data":"Subject: x\r\n\r\n\ud83d\ude00 \u00e9\r\n.\r\n"}`))
		require.Equal(t, "250", code(c.reply()))
		mb := s.Mailbox()
		require.Len(t, mb, 1)
		assert.Equal(t, "Subject: x\r\n\r\n\U0001F600 é\r\n", string(mb[0].Data))
	})
}

// inData is a client on a JSON channel of s, past DATA's 354.
func inData(t *testing.T, s *Server) *rawClient {
	t.Helper()
	c := dial(t, s)
	require.True(t, c.auth(s.APIKey).Success)
	c.open(false)
	c.envelope("a@example.com", "b@example.com")
	require.Equal(t, "354", code(c.cmd("DATA")))
	return c
}
