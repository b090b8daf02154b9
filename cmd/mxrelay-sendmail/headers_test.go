package main

import (
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mxrelay/mxrelay/relaytest"
)

// recordingRelay starts a test relay and returns it with a function that
// returns what clients sent it over SMTP, so far.
func recordingRelay(t *testing.T) (*relaytest.Server, func() string) {
	var mu sync.Mutex
	var sent strings.Builder
	s := newRelay(t, &relaytest.Options{OnSMTPData: func(d relaytest.SMTPData) {
		if !d.FromServer {
			mu.Lock()
			sent.Write(d.Data)
			mu.Unlock()
		}
	}})
	return s, func() string {
		mu.Lock()
		defer mu.Unlock()
		return sent.String()
	}
}

// rcptPaths returns the paths of the RCPT commands in an SMTP stream.
func rcptPaths(stream string) []string {
	var out []string
	for _, line := range strings.Split(stream, "\r\n") {
		if p, ok := strings.CutPrefix(line, "RCPT TO:<"); ok {
			out = append(out, strings.TrimSuffix(p, ">"))
		}
	}
	return out
}

// sendOneT sends in with -t through a new relay, requires exit 0 and
// returns the one message the relay got.
func sendOneT(t *testing.T, in string) relaytest.Message {
	t.Helper()
	s := newRelay(t, nil)
	code, stderr := sendmail(t, relayEnv(s), strings.NewReader(in), "-t")
	require.Equal(t, exOK, code, stderr)
	return only(t, s)
}

func TestObsoleteBccLeaksNothing(t *testing.T) {
	in := "From: app@example.com\n" +
		"To: to@example.com\n" +
		"Bcc : secret@example.com\n" +
		"Subject: payroll\n" +
		"\n" +
		"body\n"
	m := sendOneT(t, in)
	assert.Equal(t, []string{"to@example.com", "secret@example.com"}, m.To, "the Bcc recipient gets a copy")
	assert.NotContains(t, string(m.Data), "secret", "the Bcc field is not sent")
	assert.Contains(t, string(m.Data), "Subject: payroll\r\n", "the header after it is a header, not body")
	assert.True(t, strings.HasSuffix(string(m.Data), "\r\n\r\nbody\r\n"), string(m.Data))
}

func TestResentRecipients(t *testing.T) {
	in := "Resent-From: forwarder@example.com\n" +
		"Resent-To: new@example.com\n" +
		"Resent-Cc: copy@example.com\n" +
		"Resent-Bcc: hidden@example.com\n" +
		"From: author@example.com\n" +
		"To: old@example.com\n" +
		"Bcc: old-hidden@example.com\n" +
		"Subject: resent\n" +
		"\n" +
		"body\n"
	m := sendOneT(t, in)
	assert.Equal(t, []string{"new@example.com", "copy@example.com", "hidden@example.com"}, m.To,
		"a resent message goes to its Resent-To, Resent-Cc and Resent-Bcc, as with sendmail")
	data := string(m.Data)
	assert.NotContains(t, data, "hidden@", "Resent-Bcc and Bcc are removed")
	assert.Contains(t, data, "Resent-To: new@example.com\r\n")
	assert.Contains(t, data, "To: old@example.com\r\n")
}

func TestQuotedLocalPartsKeepTheirQuotes(t *testing.T) {
	s, sent := recordingRelay(t)
	in := "From: app@example.com\n" +
		"To: \"alice@evil.example\"@example.com, \"john doe\"@example.com\n" +
		"Subject: q\n" +
		"\n" +
		"body\n"
	code, stderr := sendmail(t, relayEnv(s), strings.NewReader(in), "-t", `"bob@evil.example"@example.com`)
	require.Equal(t, exOK, code, stderr)
	only(t, s)
	assert.Equal(t, []string{`"bob@evil.example"@example.com`, `"alice@evil.example"@example.com`, `"john doe"@example.com`}, rcptPaths(sent()),
		"one mailbox each at example.com, never alice@evil.example@example.com")

	s, sent = recordingRelay(t)
	code, stderr = sendmail(t, relayEnv(s), strings.NewReader("Subject: s\n\nx\n"), "-f", `"app sender"@example.com`, "a@example.com")
	require.Equal(t, exOK, code, stderr)
	assert.Contains(t, sent(), "MAIL FROM:<\"app sender\"@example.com>")
	only(t, s)
}

// refusal is a run of the command that must fail: its environment
// (added to a base), its arguments, its exit status and a part of what it
// says on stderr.
type refusal struct {
	name   string
	env    map[string]string
	args   []string
	want   int
	stderr string
}

// withEnv returns base with extra added.
func withEnv(base, extra map[string]string) map[string]string {
	env := map[string]string{}
	for k, v := range base {
		env[k] = v
	}
	for k, v := range extra {
		env[k] = v
	}
	return env
}

// TestNoHeaderInjection: what goes into a generated From line or the
// envelope from the environment or the command line is refused when it
// holds CR, LF or another character that has no place there.
func TestNoHeaderInjection(t *testing.T) {
	const noFrom = "Subject: s\n\nbody\n"
	for _, tc := range []refusal{
		{name: "LOGNAME", env: map[string]string{"LOGNAME": "tester\r\nBcc: spy@evil.example"}, want: exConfig, stderr: "LOGNAME"},
		{name: "LOGNAME with LF only", env: map[string]string{"LOGNAME": "tester\nX-Injected: 1"}, want: exConfig, stderr: "LOGNAME"},
		{name: "USER", env: map[string]string{"LOGNAME": "", "USER": "tester\r\nX-Injected: 1"}, want: exConfig, stderr: "USER"},
		{name: "LOGNAME with a space", env: map[string]string{"LOGNAME": "a b"}, want: exConfig, stderr: "LOGNAME"},
		{name: "MXRELAY_DOMAIN", env: map[string]string{"MXRELAY_DOMAIN": "host.test\r\nX-Injected: 1"}, want: exConfig, stderr: "MXRELAY_DOMAIN"},
		{name: "MXRELAY_DOMAIN with an @", env: map[string]string{"MXRELAY_DOMAIN": "evil.example@host.test"}, want: exConfig, stderr: "MXRELAY_DOMAIN"},
		{name: "--domain", args: []string{"--domain=host.test\r\nX-Injected: 1"}, want: exConfig, stderr: "--domain"},
		{name: "-F", args: []string{"-F", "Cron\r\nX-Injected: 1"}, want: exUsage, stderr: "-F"},
		{name: "-f", args: []string{"-f", "a@example.com\r\nX-Injected: 1"}, want: exDataErr, stderr: "sender"},
		{name: "-f with a LF in a display name", args: []string{"-f", "A\nX-Injected: 1 <a@example.com>"}, want: exDataErr, stderr: "sender"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := newRelay(t, nil)
			env := withEnv(relayEnv(s), tc.env)
			args := append([]string{"-f", "<>"}, tc.args...) // no sender: the From line is made from the user and the domain
			code, stderr := sendmail(t, env, strings.NewReader(noFrom), append(args, "rcpt@example.com")...)
			assert.Equal(t, tc.want, code, stderr)
			assert.Contains(t, stderr, tc.stderr)
			assert.Empty(t, s.Mailbox())
			assert.Zero(t, s.Stats().Connections, "refused before connecting")
		})
	}
}
