package smtplog

import (
	"bytes"
	"io"
	"log/slog"
	"net"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// script replays a dialogue through the logging conn: c lines are written
// by the client, s lines come from the server.
func TestTranscriptRedacts(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	var out bytes.Buffer
	log := slog.New(slog.NewTextHandler(&out, &slog.HandlerOptions{Level: slog.LevelDebug}))
	c := Wrap(a, log, "session", "s1")

	server, client := dialogue(t, c, b)
	server("220 mx ESMTP\r\n")
	client("EHLO me\r\n")
	server("250-mx\r\n250 AUTH PLAIN LOGIN\r\n")
	client("AUTH PLAIN AGFsaWNlAHNlY3JldA==\r\n")
	server("235 2.7.0 ok\r\n")
	client("AUTH LOGIN\r\n")
	server("334 VXNlcm5hbWU6\r\n")
	client("YWxpY2U=\r\n")
	server("334 UGFzc3dvcmQ6\r\n")
	client("c2VjcmV0\r\n")
	server("235 ok\r\n")
	client("MAIL FROM:<a@example.com>\r\n")
	server("250 ok\r\n")
	client("DATA\r\n")
	server("354 go\r\n")
	client("Subject: private\r\n\r\nsecret body\r\n")
	client(".\r\n")
	server("250 queued\r\n")
	client("BDAT 6 LAST\r\n")
	client("hidden")
	client("QUIT\r\n")

	got := out.String()
	for _, want := range []string{"EHLO me", "AUTH PLAIN ****", "AUTH LOGIN", "334 ****", "MAIL FROM:<a@example.com>", "<message body, 33 bytes>", "250 queued", "<chunk, 6 bytes>", "QUIT"} {
		assert.Contains(t, got, want)
	}
	for _, secret := range []string{"AGFsaWNlAHNlY3JldA==", "YWxpY2U=", "c2VjcmV0", "private", "secret body", "hidden", "VXNlcm5hbWU6"} {
		assert.NotContains(t, got, secret)
	}
	assert.Equal(t, 12, strings.Count(got, "dir=C"), got)
}

func TestWrapIsFreeWithoutDebug(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	log := slog.New(slog.NewTextHandler(io.Discard, &slog.HandlerOptions{Level: slog.LevelInfo}))
	assert.Same(t, a, Wrap(a, log))
	assert.Same(t, a, Wrap(a, nil))
}

// Pipelined, the replies to MAIL and RCPT arrive after DATA was written:
// the body starts at the reply to DATA, not at the next reply.
func TestPipelinedDataMasksTheBody(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	out := &strings.Builder{}
	c := Wrap(a, slog.New(slog.NewTextHandler(out, &slog.HandlerOptions{Level: slog.LevelDebug})))
	server, client := dialogue(t, c, b)
	server("220 mx ESMTP\r\n")
	client("MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\nDATA\r\n")
	server("250 ok\r\n250 ok\r\n354 go\r\n")
	client("secret body\r\n.\r\nRSET\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<c@example.com>\r\nDATA\r\n")
	server("250 queued\r\n250 reset\r\n250 ok\r\n550 no\r\n554 no valid recipients\r\n")
	client("not a body\r\n")

	got := out.String()
	assert.Contains(t, got, "<message body, 13 bytes>")
	assert.NotContains(t, got, "secret body")
	assert.Contains(t, got, "not a body", "no 354 came: the next line is a command")
}

// dialogue returns functions that play the server's replies into c
// through peer, and write the client's commands on c.
func dialogue(t *testing.T, c, peer net.Conn) (server, client func(string)) {
	server = func(reply string) {
		go func() { io.WriteString(peer, reply) }()
		_, err := io.ReadFull(c, make([]byte, len(reply)))
		require.NoError(t, err)
	}
	client = func(cmd string) {
		go func() { io.Copy(io.Discard, io.LimitReader(peer, int64(len(cmd)))) }()
		_, err := io.WriteString(c, cmd)
		require.NoError(t, err)
	}
	return server, client
}
