package main

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"testing/iotest"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mxrelay/mxrelay"
	"github.com/mxrelay/mxrelay/relaytest"
)

// newRelay starts a test relay, closed when the test ends.
func newRelay(t *testing.T, o *relaytest.Options) *relaytest.Server {
	t.Helper()
	s := relaytest.NewServer(o)
	t.Cleanup(s.Close)
	return s
}

// relayEnv is the environment of a command that sends through s.
func relayEnv(s *relaytest.Server) map[string]string {
	return map[string]string{
		"MXRELAY_URL":     s.URL,
		"MXRELAY_API_KEY": s.APIKey,
		"MXRELAY_DOMAIN":  "host.test",
		"LOGNAME":         "tester",
		envConfig:         "/nonexistent/mxrelay-sendmail.conf", // not the machine's
	}
}

// sendmail runs the command in-process and returns its exit status and what
// it wrote on stderr.
func sendmail(t *testing.T, env map[string]string, stdin io.Reader, args ...string) (int, string) {
	t.Helper()
	var stderr bytes.Buffer
	code := run(context.Background(), args, func(k string) string { return env[k] }, stdin, &stderr)
	return code, stderr.String()
}

// only returns the one message in s's mailbox.
func only(t *testing.T, s *relaytest.Server) relaytest.Message {
	t.Helper()
	box := s.Mailbox()
	require.Len(t, box, 1)
	return box[0]
}

func TestExtractRecipients(t *testing.T) {
	s := newRelay(t, nil)
	in := "From: App <app@example.com>\n" +
		"To: Alice <alice@example.com>,\n \"Bob, Jr.\" <bob@example.com>\n" +
		"Cc: carol@example.com\n" +
		"Bcc: dave@example.com,\n\tErin <erin@example.com>\n" +
		"Subject: hello\n" +
		"\n" +
		"Line one.\n" +
		"Bcc: a body line, not a header\n"
	code, stderr := sendmail(t, relayEnv(s), strings.NewReader(in), "-t", "frank@example.com", "alice@example.com")
	require.Equal(t, exOK, code, stderr)
	assert.Empty(t, stderr, "silent on success, as sendmail (go-mail takes any stderr output for a failure)")

	m := only(t, s)
	assert.Equal(t, "app@example.com", m.From, "the envelope sender defaults to the From header")
	assert.Equal(t, []string{"frank@example.com", "alice@example.com", "bob@example.com", "carol@example.com", "dave@example.com", "erin@example.com"}, m.To,
		"the operands, then To, Cc and Bcc, each once")
	data := string(m.Data)
	assert.NotContains(t, data, "dave@", "the Bcc header and its continuation line are gone")
	assert.NotContains(t, data, "erin@")
	assert.Contains(t, data, "Bcc: a body line, not a header\r\n")
	assert.True(t, strings.HasPrefix(data, "From: App <app@example.com>\r\n"+
		"To: Alice <alice@example.com>,\r\n \"Bob, Jr.\" <bob@example.com>\r\n"+
		"Cc: carol@example.com\r\n"+
		"Subject: hello\r\n"+
		"Date: "), data)
	assert.True(t, strings.HasSuffix(data, "\r\n\r\nLine one.\r\nBcc: a body line, not a header\r\n"), data)
	assert.Equal(t, strings.Count(data, "\n"), strings.Count(data, "\r\n"), "every line ends with CRLF")
	assert.Equal(t, 1, strings.Count(data, "From:"), "the From header is not added twice")
}

func TestEnvelopeSender(t *testing.T) {
	const withFrom = "From: Header <header@example.com>\nSubject: s\n\nbody\n"
	const withoutFrom = "Subject: s\n\nbody\n"
	for _, tc := range []struct {
		name       string
		args       []string
		in         string
		wantSender string
		wantFrom   string // the From header, when the command adds it
	}{
		{name: "-f", args: []string{"-f", "bounce@example.com"}, in: withFrom, wantSender: "bounce@example.com"},
		{name: "-f attached", args: []string{"-fbounce@example.com"}, in: withFrom, wantSender: "bounce@example.com"},
		{name: "-r", args: []string{"-r", "bounce@example.com"}, in: withFrom, wantSender: "bounce@example.com"},
		{name: "-f with brackets and name", args: []string{"-f", "Bounces <bounce@example.com>"}, in: withFrom, wantSender: "bounce@example.com"},
		{name: "-f <>: null sender", args: []string{"-f", "<>"}, in: withFrom, wantSender: ""},
		{name: "from the header", in: withFrom, wantSender: "header@example.com"},
		{name: "no From header: the user", in: withoutFrom, wantSender: "tester@host.test", wantFrom: "From: tester@host.test\r\n"},
		{name: "-F names the added From", args: []string{"-F", "Cron Daemon"}, in: withoutFrom, wantSender: "tester@host.test", wantFrom: "From: \"Cron Daemon\" <tester@host.test>\r\n"},
		{name: "-f and no From header", args: []string{"-f", "app@example.com"}, in: withoutFrom, wantSender: "app@example.com", wantFrom: "From: app@example.com\r\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := newRelay(t, nil)
			code, stderr := sendmail(t, relayEnv(s), strings.NewReader(tc.in), append(tc.args, "rcpt@example.com")...)
			require.Equal(t, exOK, code, stderr)
			m := only(t, s)
			assert.Equal(t, tc.wantSender, m.From)
			if tc.wantFrom != "" {
				assert.Contains(t, string(m.Data), tc.wantFrom)
			}
		})
	}
}

// An envelope sender that is not a full address is refused, saying what
// to give instead: bounces go there.
func TestBareSenderIsRefused(t *testing.T) {
	for _, f := range []string{"daemon", " daemon "} {
		s := newRelay(t, nil)
		code, stderr := sendmail(t, relayEnv(s), strings.NewReader("Subject: x\n\nx\n"), "-f", f, "rcpt@example.com")
		assert.Equal(t, exUsage, code, f)
		assert.Contains(t, stderr, "must be a full address (user@domain), such as daemon@host.test", f)
		assert.Empty(t, s.Mailbox())
	}
}

func TestDotLine(t *testing.T) {
	const in = "Subject: dots\n\nbefore\n..two dots\n.\nafter\n"
	for _, tc := range []struct {
		name string
		args []string
		body string
	}{
		{name: "a lone dot ends the input", body: "before\r\n..two dots\r\n"},
		{name: "-i", args: []string{"-i"}, body: "before\r\n..two dots\r\n.\r\nafter\r\n"},
		{name: "-oi", args: []string{"-oi"}, body: "before\r\n..two dots\r\n.\r\nafter\r\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := newRelay(t, nil)
			code, stderr := sendmail(t, relayEnv(s), strings.NewReader(in), append(tc.args, "rcpt@example.com")...)
			require.Equal(t, exOK, code, stderr)
			_, body, ok := strings.Cut(string(only(t, s).Data), "\r\n\r\n")
			require.True(t, ok)
			assert.Equal(t, tc.body, body)
		})
	}
}

func TestRecipientOperands(t *testing.T) {
	s := newRelay(t, nil)
	code, stderr := sendmail(t, relayEnv(s), strings.NewReader("hello without a header\n"),
		"a@example.com, B <b@example.com>", "root", "A@example.com")
	require.Equal(t, exOK, code, stderr)
	m := only(t, s)
	// A@example.com is not a@example.com: a local part is case-sensitive
	// (RFC 5321 §2.4); only a domain may be folded.
	assert.Equal(t, []string{"a@example.com", "b@example.com", "root@host.test", "A@example.com"}, m.To)
	assert.True(t, strings.HasPrefix(string(m.Data), "From: tester@host.test\r\nDate: "), string(m.Data))
	assert.True(t, strings.HasSuffix(string(m.Data), "\r\n\r\nhello without a header\r\n"), string(m.Data))
}

func TestVerbose(t *testing.T) {
	s := newRelay(t, nil)
	code, stderr := sendmail(t, relayEnv(s), strings.NewReader("Subject: v\n\nx\n"), "-v", "-oem", "rcpt@example.com")
	require.Equal(t, exOK, code, stderr)
	assert.Contains(t, stderr, "ignoring -oem")
	assert.Contains(t, stderr, "delivered to rcpt@example.com (250")
	assert.Contains(t, stderr, "MAIL FROM", "the SMTP dialogue")
	assert.NotContains(t, stderr, s.APIKey)
}

// failingReader returns data, then err.
func failingReader(data string, err error) io.Reader {
	return io.MultiReader(strings.NewReader(data), iotest.ErrReader(err))
}

var errStdin = errors.New("stdin broke")

// TestExitCodes reaches each exit status through a relay, or through the
// command line and the environment.
func TestExitCodes(t *testing.T) {
	const good = "Subject: x\n\nbody\n"
	keyFile := filepath.Join(t.TempDir(), "key")
	require.NoError(t, os.WriteFile(keyFile, []byte(relaytest.DefaultAPIKey+"\n"), 0o600))

	for _, tc := range []struct {
		name     string
		relay    *relaytest.Options
		setup    func(*relaytest.Server)
		env      func(map[string]string)
		byHand   bool // no MXRELAY_URL: --url names the relay, as a user running the command by hand does
		stdin    io.Reader
		args     []string
		want     int
		stderr   string
		received int  // messages the upstream should have
		unsent   bool // refused before connecting to the relay
	}{
		{name: "key from a file", env: func(e map[string]string) { delete(e, "MXRELAY_API_KEY"); e["MXRELAY_API_KEY_FILE"] = keyFile },
			args: []string{"a@example.com"}, want: exOK, received: 1},
		{name: "key file on the command line", env: func(e map[string]string) { delete(e, "MXRELAY_API_KEY") }, byHand: true,
			args: []string{"--api-key-file", keyFile, "a@example.com"}, want: exOK, received: 1},
		{name: "EX_USAGE: a key file contradicting MXRELAY_API_KEY", env: func(e map[string]string) { e["MXRELAY_API_KEY"] = "other" }, byHand: true,
			args: []string{"--api-key-file", keyFile, "a@example.com"}, want: exUsage, stderr: "MXRELAY_API_KEY"},
		{name: "EX_USAGE: a key file under the administrator's MXRELAY_URL", env: func(e map[string]string) { delete(e, "MXRELAY_API_KEY") },
			args: []string{"--api-key-file", keyFile, "a@example.com"}, want: exUsage, stderr: "cannot change what the administrator configured"},
		{name: "EX_USAGE: --starttls under the administrator's MXRELAY_URL", args: []string{"--starttls=never", "a@example.com"}, want: exUsage, stderr: envStartTLS},
		{name: "the administrator's --starttls repeated", env: func(e map[string]string) { e[envStartTLS] = "never" },
			args: []string{"--starttls=never", "a@example.com"}, want: exOK, received: 1},

		{name: "EX_USAGE: unknown option", args: []string{"-Z", "a@example.com"}, want: exUsage, stderr: "unknown option -Z"},
		{name: "EX_USAGE: no recipient", args: []string{}, want: exUsage, stderr: "no recipient"},
		{name: "EX_USAGE: -t and no recipient header", args: []string{"-t"}, want: exUsage, stderr: "none in the To, Cc or Bcc headers"},
		{name: "EX_USAGE: --starttls without --tls-server-name", byHand: true, args: []string{"--starttls=required", "a@example.com"}, want: exUsage, stderr: "--tls-server-name"},
		{name: "EX_USAGE: the key on the command line", args: []string{"--api-key", "secret", "a@example.com"}, want: exUsage, stderr: "never taken from the command line"},

		{name: "EX_DATAERR: bad To header", stdin: strings.NewReader("To: <broken\n\nx\n"), args: []string{"-t"}, want: exDataErr, stderr: "To header"},
		{name: "EX_DATAERR: bad recipient", args: []string{"two words"}, want: exDataErr, stderr: "recipient"},
		{name: "EX_DATAERR: line over 998 octets", stdin: strings.NewReader("Subject: long\n\n" + strings.Repeat("x", 999) + "\n"),
			args: []string{"a@example.com"}, want: exDataErr, stderr: "line too long", unsent: true},
		{name: "EX_DATAERR: bare CR", stdin: strings.NewReader("Subject: cr\n\na\r.\rRSET\n"),
			args: []string{"a@example.com"}, want: exDataErr, stderr: "bare CR", unsent: true},
		{name: "EX_DATAERR: parameter in the sender", args: []string{"-f", "a@b.c> SIZE=1", "a@example.com"}, want: exDataErr, stderr: "sender", unsent: true},
		{name: "EX_DATAERR: parameter in a recipient", args: []string{"<a@b.c> NOTIFY=NEVER"}, want: exDataErr, stderr: "recipient", unsent: true},
		{name: "EX_DATAERR: a recipient that cannot be written as an SMTP path", args: []string{"\"a\tb\"@example.com"}, want: exDataErr, stderr: "cannot be written", unsent: true},
		{name: "EX_DATAERR: recipient header with CR", stdin: strings.NewReader("To: a@example.com\r> SIZE=1\n\nx\n"), args: []string{"-t"}, want: exDataErr, unsent: true},
		{name: "EX_DATAERR: 8-bit body, JSON-only relay", relay: &relaytest.Options{DisableBinary: true},
			stdin: strings.NewReader("Subject: latin1\n\ncaf\xe9\n"), args: []string{"a@example.com"}, want: exDataErr, stderr: "UTF-8"},

		{name: "EX_NOUSER: the recipient refused",
			setup: func(s *relaytest.Server) {
				s.Inject(relaytest.Fault{Kind: relaytest.ReplaceReply, Command: "RCPT", Reply: "550 5.1.1 no such user"})
			},
			args: []string{"nobody@example.com"}, want: exNoUser, stderr: "not delivered to nobody@example.com"},
		{name: "EX_NOUSER: one of two refused, the other delivered",
			setup: func(s *relaytest.Server) {
				s.Inject(relaytest.Fault{Kind: relaytest.ReplaceReply, Command: "RCPT", Recipient: "nobody@example.com", Reply: "550 5.1.1 no such user"})
			},
			args: []string{"a@example.com", "nobody@example.com"}, want: exNoUser, stderr: "delivered to a@example.com", received: 1},

		{name: "EX_UNAVAILABLE: MAIL refused for good",
			setup: func(s *relaytest.Server) {
				s.Inject(relaytest.Fault{Kind: relaytest.ReplaceReply, Command: "MAIL", Reply: "554 5.7.1 sender blocked"})
			},
			args: []string{"a@example.com"}, want: exUnavailable, stderr: "sender blocked"},

		{name: "EX_UNAVAILABLE: STARTTLS required and not offered",
			env:  func(e map[string]string) { e[envStartTLS], e[envTLSServerName] = "required", "mx.test" },
			args: []string{"a@example.com"}, want: exUnavailable, stderr: "STARTTLS"},

		{name: "EX_IOERR: stdin fails in the header", stdin: failingReader("Subject: x\n", errStdin), args: []string{"a@example.com"}, want: exIOErr, stderr: "stdin broke"},
		{name: "EX_IOERR: stdin fails in the body", stdin: failingReader("Subject: x\n\nbody\n", errStdin), args: []string{"a@example.com"}, want: exIOErr, stderr: "nothing was sent"},

		{name: "EX_TEMPFAIL: 451 to MAIL",
			setup: func(s *relaytest.Server) {
				s.Inject(relaytest.Fault{Kind: relaytest.ReplaceReply, Command: "MAIL", Reply: "451 4.3.0 try later"})
			},
			args: []string{"--retries=0", "a@example.com"}, want: exTempFail, stderr: "try later"},
		{name: "--retries: 451, then delivered on the retry",
			setup: func(s *relaytest.Server) {
				s.Inject(relaytest.Fault{Kind: relaytest.ReplaceReply, Command: "MAIL", Reply: "451 4.3.0 try later"})
			},
			args: []string{"--retries=1", "a@example.com"}, want: exOK, received: 1},
		{name: "EX_TEMPFAIL: relay down", setup: func(s *relaytest.Server) { s.SetDown(true) },
			args: []string{"--retries=0", "a@example.com"}, want: exTempFail, stderr: "unreachable"},
		{name: "EX_TEMPFAIL: unknown outcome",
			setup: func(s *relaytest.Server) { s.Inject(relaytest.Fault{Kind: relaytest.DropAfterFinalDot}) },
			args:  []string{"a@example.com"}, want: exTempFail, stderr: "may have been delivered", received: 1},
		{name: "EX_TEMPFAIL: time out",
			setup: func(s *relaytest.Server) {
				s.Inject(relaytest.Fault{Kind: relaytest.StallReply, Command: "MAIL"})
			},
			args: []string{"--timeout=300ms", "a@example.com"}, want: exTempFail, stderr: "timed out after 300ms: the message was not sent"},

		{name: "EX_CONFIG: no relay URL", env: func(e map[string]string) { delete(e, "MXRELAY_URL") }, args: []string{"a@example.com"}, want: exConfig, stderr: "MXRELAY_URL"},
		{name: "EX_CONFIG: no key", env: func(e map[string]string) { delete(e, "MXRELAY_API_KEY") }, args: []string{"a@example.com"}, want: exConfig, stderr: "MXRELAY_API_KEY"},
		{name: "EX_CONFIG: not a WebSocket URL", env: func(e map[string]string) { e["MXRELAY_URL"] = "http://relay.example.com/smtp" }, args: []string{"a@example.com"}, want: exConfig, stderr: "scheme"},
		{name: "EX_CONFIG: API key refused", env: func(e map[string]string) { e["MXRELAY_API_KEY"] = "wrong-key" }, args: []string{"a@example.com"}, want: exConfig, stderr: "refused the API key"},
		{name: "EX_CONFIG: MXRELAY_STARTTLS not a mode", env: func(e map[string]string) { e[envStartTLS] = "maybe" }, args: []string{"a@example.com"}, want: exConfig, stderr: envStartTLS, unsent: true},
		{name: "EX_CONFIG: MXRELAY_STARTTLS without a TLS name", env: func(e map[string]string) { e[envStartTLS] = "required" }, args: []string{"a@example.com"}, want: exConfig, stderr: envTLSServerName, unsent: true},
		{name: "EX_CONFIG: SMTP credentials without STARTTLS", relay: &relaytest.Options{Users: map[string]string{"app": "right"}},
			env:  func(e map[string]string) { e["MXRELAY_SMTP_USERNAME"], e["MXRELAY_SMTP_PASSWORD"] = "app", "right" },
			args: []string{"a@example.com"}, want: exConfig, stderr: "password in clear"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := newRelay(t, tc.relay)
			if tc.setup != nil {
				tc.setup(s)
			}
			env := relayEnv(s)
			if tc.env != nil {
				tc.env(env)
			}
			args := tc.args
			if tc.byHand {
				args = append([]string{"--url=" + env["MXRELAY_URL"]}, args...)
				delete(env, "MXRELAY_URL")
			}
			stdin := tc.stdin
			if stdin == nil {
				stdin = strings.NewReader(good)
			}
			code, stderr := sendmail(t, env, stdin, args...)
			assert.Equal(t, tc.want, code, stderr)
			assert.Contains(t, stderr, tc.stderr)
			assert.Len(t, s.Mailbox(), tc.received)
			if tc.unsent {
				assert.Zero(t, s.Stats().Connections, "refused before connecting")
			}
		})
	}
}

// TestSendGivesUpAfterTheTimeOut: when the time out passes after the end
// of data and the library, whose CommandTimeout is longer, is still
// waiting for its reply, send stops waiting after signalGrace: the
// outcome is unknown (errNoReply), and the command does not hang.
func TestSendGivesUpAfterTheTimeOut(t *testing.T) {
	s := newRelay(t, nil)
	s.Inject(relaytest.Fault{Kind: relaytest.StallReply, Command: ".", Times: -1})
	c, err := mxrelay.New(s.URL, s.APIKey, &mxrelay.Options{DisablePipelining: true, Retries: -1})
	require.NoError(t, err)
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
		defer cancel()
		c.Close(ctx)
	}()
	ctx, cancel := context.WithTimeoutCause(context.Background(), 300*time.Millisecond, errTimedOut)
	defer cancel()
	start := time.Now()
	_, err = send(ctx, c, mxrelay.Email{From: "a@example.com", To: []string{"b@example.com"}, Body: strings.NewReader("Subject: s\r\n\r\nx\r\n")}, newProgress())
	require.ErrorIs(t, err, errNoReply)
	assert.Less(t, time.Since(start), 300*time.Millisecond+signalGrace+time.Second)
}
