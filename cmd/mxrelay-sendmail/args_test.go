package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mxrelay/mxrelay"
	"github.com/mxrelay/mxrelay/relaytest"
)

func TestParseArgs(t *testing.T) {
	for _, tc := range []struct {
		name string
		args []string
		want config
	}{
		{name: "PHP's default", args: []string{"-t", "-i"},
			want: config{extract: true, ignoreDots: true}},
		{name: "grouped", args: []string{"-ti"},
			want: config{extract: true, ignoreDots: true}},
		{name: "-oi", args: []string{"-oi", "a@example.com"},
			want: config{ignoreDots: true, recipients: []string{"a@example.com"}}},
		{name: "-o i", args: []string{"-o", "i"},
			want: config{ignoreDots: true}},
		{name: "git send-email", args: []string{"-i", "-f", "me@example.com", "a@example.com", "b@example.com"},
			want: config{ignoreDots: true, sender: "me@example.com", senderSet: true, recipients: []string{"a@example.com", "b@example.com"}}},
		{name: "sender attached, -r", args: []string{"-rme@example.com"},
			want: config{sender: "me@example.com", senderSet: true}},
		{name: "null sender", args: []string{"-f", "<>", "a@example.com"},
			want: config{sender: "<>", senderSet: true, recipients: []string{"a@example.com"}}},
		{name: "cron", args: []string{"-FCronDaemon", "-i", "-B8BITMIME", "-oem", "root"},
			want: config{fullName: "CronDaemon", ignoreDots: true, recipients: []string{"root"}, ignored: []string{"-B8BITMIME", "-oem"}}},
		{name: "-- ends the options", args: []string{"-t", "--", "-not-an-option@example.com", "--url=x@example.com"},
			want: config{extract: true, recipients: []string{"-not-an-option@example.com", "--url=x@example.com"}}},
		{name: "harmless flags", args: []string{"-U", "-m", "-n", "-bm", "-N", "never", "-Rhdrs", "-Venvid", "-odi"},
			want: config{ignored: []string{"-U", "-m", "-n", "-Nnever", "-Rhdrs", "-Venvid", "-odi"}}},
		{name: "long options", args: []string{"--url", "wss://relay.example.com/smtp", "--api-key-file=/run/key", "--timeout=30s", "--retries", "5", "--helo", "app.example.com", "--domain=example.com", "--starttls=required", "--tls-server-name", "smtp.example.com", "-v"},
			want: config{url: "wss://relay.example.com/smtp", keyFile: "/run/key", timeout: 30 * time.Second, retries: 5, helo: "app.example.com", domain: "example.com", startTLS: mxrelay.StartTLSRequired, startTLSSet: true, tlsName: "smtp.example.com", verbose: true}},
		{name: "help", args: []string{"--help"},
			want: config{help: true}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := parseArgs(tc.args)
			require.NoError(t, err)
			want := tc.want
			if want.timeout == 0 {
				want.timeout = defaultTimeout
			}
			if want.retries == 0 {
				want.retries = defaultRetries
			}
			assert.Equal(t, &want, got)
		})
	}
}

func TestParseArgsErrors(t *testing.T) {
	for _, args := range [][]string{
		{"-Z"},
		{"-f"},
		{"-t", "-f"},
		{"-q"},
		{"-q30m"},
		{"-bs"},
		{"-bp"},
		{"-I"},
		{"--nope"},
		{"--api-key", "secret"},
		{"--api-key=secret"},
		{"--timeout", "soon"},
		{"--timeout=-1s"},
		{"--retries=-1"},
		{"--starttls=maybe"},
		{"--url"},
		{"--url="},
		// Options end at the first operand: an option appended after the
		// administrator's command line is an operand, and refused.
		{"a@example.com", "-t"},
		{"a@example.com", "--url=wss://evil.example/smtp"},
		{"-t", "a@example.com", "--api-key-file=/etc/shadow"},
		{"a@example.com", "--", "b@example.com"},
		// Where the mail and the key go is said once.
		{"--url=wss://relay.example.com/smtp", "--url=wss://evil.example/smtp"},
		{"--api-key-file=/run/key", "--api-key-file", "/etc/passwd"},
		{"--tls-server-name=mx.example.com", "--tls-server-name=evil.example"},
	} {
		_, err := parseArgs(args)
		assert.ErrorIs(t, err, errUsage, "%q", args)
	}
}

// -h alone shows the usage (sendmail's -h N, a hop count, still parses).
func TestDashHAloneIsHelp(t *testing.T) {
	cfg, err := parseArgs([]string{"-h"})
	require.NoError(t, err)
	assert.True(t, cfg.help)
	cfg, err = parseArgs([]string{"-h", "5", "a@example.com"})
	require.NoError(t, err)
	assert.False(t, cfg.help)
}

// TestAppendedDomainCannotRedirectBareNames: the guide's wrapper is
// "exec mxrelay-sendmail --domain=example.com "$@"" and PHP appends
// "-fx --domain=evil.example" after sendmail_path's "-t -i". The
// wrapper's --domain is the administrator's; a second --domain is refused
// (64), and no bare name ("To: root", cron's MAILTO=root, a PHP
// mail("webmaster", ...)) is sent to the attacker's domain.
//
// Found by the red team (issue 15, round one): --domain was not
// given-once and not settable in the configuration file, so the last one
// won, and every bare name went to the attacker's domain while the
// intended recipient got nothing.
func TestAppendedDomainCannotRedirectBareNames(t *testing.T) {
	s, sent := recordingRelay(t)
	wrapper := []string{"--domain=example.com"}
	php := []string{"-t", "-i"}
	appended := []string{"-fvisitor@example.com", "--domain=evil.example"}
	args := append(append(wrapper, php...), appended...)
	code, stderr := sendmail(t, relayEnv(s), strings.NewReader("To: root\nSubject: backup failed\n\ndetails\n"), args...)
	t.Logf("exit %d, stderr %q, RCPT %q", code, stderr, rcptPaths(sent()))
	assert.NotContains(t, rcptPaths(sent()), "root@evil.example", "root's mail went to the attacker's domain")
	assert.Equal(t, exUsage, code, "a second --domain is refused")
}

// TestAppendedStartTLSCannotDowngradeTheWrapper: a wrapper (or
// git send-email's sendmailCmd) that says "--starttls=required
// --tls-server-name=smtp.example.com" is not downgraded by an appended
// "--starttls=opportunistic" (or "never"): a second --starttls that
// contradicts the first is refused (64), as a second --tls-server-name
// is, and nothing goes in clear. Here the upstream offers no STARTTLS:
// required refuses (69).
//
// Found by the red team (issue 15, round one): --tls-server-name could be
// given once, but --starttls any number of times and the last one won, so
// the relay's hop to the upstream went in clear whenever the upstream, or
// whoever sits on that path, did not offer STARTTLS: the appended option
// made it deliver in clear, exit 0.
//
// (The wrapper names the relay with --url: with the relay in the
// environment, MXRELAY_URL, no option may set --starttls at all, and
// TestAppendedTLSOptionsCannotSetThePolicy covers that.)
func TestAppendedStartTLSCannotDowngradeTheWrapper(t *testing.T) {
	in := "To: a@example.com\nSubject: payroll\n\nSalary: 1,000,000\n"
	wrapped := func(s *relaytest.Server) (map[string]string, []string) {
		env := relayEnv(s)
		delete(env, "MXRELAY_URL")
		return env, []string{"--url=" + s.URL, "--starttls=required", "--tls-server-name=smtp.example.com"}
	}

	s := newRelay(t, nil)
	env, wrapper := wrapped(s)
	code, stderr := sendmail(t, env, strings.NewReader(in), append(wrapper, "-t", "-i")...)
	require.Equal(t, exUnavailable, code, "the upstream offers no STARTTLS: required refuses: %s", stderr)

	for _, mode := range []string{"opportunistic", "never"} {
		t.Run(mode, func(t *testing.T) {
			s := newRelay(t, nil)
			env, wrapper := wrapped(s)
			code, stderr := sendmail(t, env, strings.NewReader(in), append(wrapper, "-t", "-i", "-fvisitor@example.com", "--starttls="+mode)...)
			t.Logf("exit %d, stderr %q, sent in clear: %d", code, stderr, len(s.Mailbox()))
			assert.Zero(t, len(s.Mailbox()), "the administrator required STARTTLS; the mail went in clear")
			assert.Equal(t, exUsage, code, "a second --starttls is refused")
		})
	}
}

// TestPHPSendmailInjectionWritesNothing: the CVE-2016-10033 payload,
// "-fa@b -X/path/shell.php -OQueueDirectory=/tmp", as the shell splits it
// and as one word. -X and -O are accepted and ignored: no log file is
// written; as one word the sender is refused. (Red team, issue 15, round
// one; held: the attack failed, and this keeps it failing.)
func TestPHPSendmailInjectionWritesNothing(t *testing.T) {
	dir := t.TempDir()
	shell := filepath.Join(dir, "shell.php")
	s := newRelay(t, nil)
	in := "To: a@example.com\nSubject: <?php system($_GET['c']); ?>\n\nx\n"
	code, stderr := sendmail(t, relayEnv(s), strings.NewReader(in), "-t", "-i", "-fa@example.com", "-X"+shell, "-OQueueDirectory="+dir)
	assert.Equal(t, exOK, code, stderr)
	_, err := os.Stat(shell)
	assert.ErrorIs(t, err, os.ErrNotExist, "-X writes no file")

	code, stderr = sendmail(t, relayEnv(s), strings.NewReader(in), "-t", "-i", "-fa@example.com -X"+shell+" -OQueueDirectory="+dir)
	assert.Equal(t, exDataErr, code, stderr)
	_, err = os.Stat(shell)
	assert.ErrorIs(t, err, os.ErrNotExist)
}

// TestAppendedHelpIsNotASuccess: exit 0 means "delivered" (the README,
// and PHP's mail(), which returns true), so "--help" with anything else
// on the command line (PHP's fifth argument appending it) does not exit
// 0 when nothing was sent.
//
// Found by the red team (issue 15, round one): "--help" anywhere among
// the options printed the usage and exited 0 without reading or sending
// the message: an appended "--help" made every mail vanish while the
// application was told it was sent.
func TestAppendedHelpIsNotASuccess(t *testing.T) {
	s := newRelay(t, nil)
	code, stderr := sendmail(t, relayEnv(s), strings.NewReader("To: a@example.com\nSubject: order 1234\n\nx\n"), "-t", "-i", "--help")
	t.Logf("exit %d, %d message(s) sent, stderr %.80q…", code, len(s.Mailbox()), stderr)
	if len(s.Mailbox()) == 0 {
		assert.NotEqual(t, exOK, code, "nothing was sent: exit 0 would tell PHP it was")
	}
}
