package main

// Red-team tests for issue 15 ("Safe as /usr/sbin/sendmail"). Each test
// below that is not marked "held" failed on the code it was written
// against; each asserts what a careful administrator would expect.

import (
	"bytes"
	"context"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mxrelay/mxrelay/relaytest"
)

// rtBuild builds the command (build) for the red team's tests, which send
// it signals: not on Windows.
func rtBuild(t *testing.T) string {
	t.Helper()
	if runtime.GOOS == "windows" {
		t.Skip("signals")
	}
	return build(t)
}

// rtEnv is the environment of the built command sending through s, with
// no configuration file.
func rtEnv(s *relaytest.Server) []string {
	return []string{
		"PATH=" + os.Getenv("PATH"),
		"MXRELAY_URL=" + s.URL,
		"MXRELAY_API_KEY=" + s.APIKey,
		"MXRELAY_DOMAIN=host.test",
		"LOGNAME=tester",
		envConfig + "=/nonexistent/mxrelay-sendmail.conf",
	}
}

// rtWait waits for the command to end, at most 15 s, and returns its exit
// status (-1 if killed by a signal).
func rtWait(t *testing.T, cmd *exec.Cmd) int {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err == nil {
			return 0
		}
		var ee *exec.ExitError
		require.ErrorAs(t, err, &ee)
		return ee.ExitCode()
	case <-time.After(15 * time.Second):
		_ = cmd.Process.Kill()
		<-done
		t.Fatal("the command did not end within 15 s")
		return -1
	}
}

// signalled is closed the first time fire is called.
type signalled struct {
	once sync.Once
	c    chan struct{}
}

func newSignalled() *signalled { return &signalled{c: make(chan struct{})} }
func (s *signalled) fire()     { s.once.Do(func() { close(s.c) }) }

// TestRedTeamSignalAfterEndOfDataClaimsNotSent: SIGTERM arrives after the
// end of data was sent and the upstream has stored the message, while its
// 250 is still on the way. The library rightly keeps waiting for the
// reply (the end of data cannot be withdrawn), but main gives run only
// signalGrace and then prints "the message was not sent" — which is false:
// the recipient has the message, and a caller (a person reading cron's
// mail, a PHP retry loop) that believes it sends it again. The outcome is
// unknown and must be reported as such ("may have been delivered", as
// report does for ErrUnknownOutcome).
func TestRedTeamSignalAfterEndOfDataClaimsNotSent(t *testing.T) {
	bin := rtBuild(t)
	stored := newSignalled()
	release := make(chan struct{})
	s := newRelay(t, &relaytest.Options{OnMessage: func(relaytest.Message) {
		stored.fire()
		select { // hold the 250 back, as a slow upstream would
		case <-release:
		case <-time.After(8 * time.Second):
		}
	}})
	defer close(release)

	cmd := exec.Command(bin, "--retries=0", "a@example.com")
	cmd.Env = rtEnv(s)
	cmd.Stdin = strings.NewReader("Subject: invoice\n\nPay 100.\n")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	require.NoError(t, cmd.Start())
	select {
	case <-stored.c:
	case <-time.After(10 * time.Second):
		_ = cmd.Process.Kill()
		t.Fatalf("the message never reached the upstream: %s", stderr.String())
	}
	require.NoError(t, cmd.Process.Signal(syscall.SIGTERM))
	code := rtWait(t, cmd)
	t.Logf("exit %d, stderr %q, mailbox %d", code, stderr.String(), len(s.Mailbox()))

	require.Len(t, s.Mailbox(), 1, "the upstream has the message")
	assert.NotEqual(t, exOK, code, "the reply never came: not a success")
	assert.NotContains(t, stderr.String(), "was not sent", "the message was delivered: saying it was not sent invites a duplicate")
	assert.Contains(t, stderr.String(), "may have been delivered", "the outcome is unknown, and stderr must say so")
}

// TestRedTeamSignalWhileClosingAfterDelivery: the message is answered 250
// to its end of data, then the relay hangs on QUIT, and SIGTERM comes.
// Found: exit 75 "the message was not sent", for a message the server has.
// The red team asked for exit 0; but relaytest's go-smtp words every 250
// alike, so only QUIT's 221 would prove that 250 was this message's (the
// library's rule, issue 10): unproven, the outcome is unknown, and the
// command must say the message may have been delivered (exit 75, as an
// MTA defers a message whose end of data went unconfirmed, RFC 1047).
func TestRedTeamSignalWhileClosingAfterDelivery(t *testing.T) {
	bin := rtBuild(t)
	quit := newSignalled()
	s := newRelay(t, &relaytest.Options{OnSMTPData: func(d relaytest.SMTPData) {
		if !d.FromServer && bytes.Contains(d.Data, []byte("QUIT")) {
			quit.fire()
		}
	}})
	s.Inject(relaytest.Fault{Kind: relaytest.StallReply, Command: "QUIT", Times: -1})

	cmd := exec.Command(bin, "--retries=0", "a@example.com")
	cmd.Env = rtEnv(s)
	cmd.Stdin = strings.NewReader("Subject: report\n\nAll good.\n")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	start := time.Now()
	require.NoError(t, cmd.Start())
	select {
	case <-quit.c:
	case <-time.After(10 * time.Second):
		_ = cmd.Process.Kill()
		t.Fatalf("the command never sent QUIT: %s", stderr.String())
	}
	require.Len(t, s.Mailbox(), 1, "delivered before QUIT")
	require.NoError(t, cmd.Process.Signal(syscall.SIGTERM))
	code := rtWait(t, cmd)
	t.Logf("exit %d after %v, stderr %q", code, time.Since(start).Round(time.Millisecond), stderr.String())

	assert.Equal(t, exTempFail, code, "unconfirmed: not a success either")
	assert.NotContains(t, stderr.String(), "not sent", "the server has it: saying it was not sent invites a duplicate")
	assert.Contains(t, stderr.String(), "may have been delivered")
}

// TestRedTeamSignalWhileReadingStdin: SIGTERM arrives while the command
// reads the header of its input, and the input ends within signalGrace
// (the writer had a few more lines to write). (A signal during the body
// gives 75: the body is read inside Send, whose AfterFunc cancels it.) The README promises "SIGTERM, SIGINT or SIGHUP
// withdraws the message: exit 75". run gets to Client.Send with a
// canceled context; Send returns ctx.Err() (context.Canceled), which
// exitCode does not know: exit 70 (EX_SOFTWARE, "an error it does not
// know") with "not delivered: context canceled".
func TestRedTeamSignalWhileReadingStdin(t *testing.T) {
	bin := rtBuild(t)
	s := newRelay(t, nil)
	cmd := exec.Command(bin, "--retries=0", "a@example.com")
	cmd.Env = rtEnv(s)
	stdin, err := cmd.StdinPipe()
	require.NoError(t, err)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	require.NoError(t, cmd.Start())
	_, err = io.WriteString(stdin, "Subject: nightly\n") // still in the header
	require.NoError(t, err)
	time.Sleep(500 * time.Millisecond) // the command is reading stdin, its signal handler set
	require.NoError(t, cmd.Process.Signal(syscall.SIGTERM))
	time.Sleep(300 * time.Millisecond)
	_, _ = io.WriteString(stdin, "\nlast line\n")
	stdin.Close()
	code := rtWait(t, cmd)
	t.Logf("exit %d, stderr %q", code, stderr.String())

	assert.Empty(t, s.Mailbox(), "withdrawn")
	assert.Equal(t, exTempFail, code, "a signal is EX_TEMPFAIL, as the README says")
	assert.NotContains(t, stderr.String(), "context canceled", "a clear error names the signal")
}

// TestRedTeamCanceledBeforeSend is the in-process form of the case above:
// run with a context that ended (a signal) before Send is called.
func TestRedTeamCanceledBeforeSend(t *testing.T) {
	s := newRelay(t, nil)
	env := relayEnv(s)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	var stderr bytes.Buffer
	code := run(ctx, []string{"a@example.com"}, func(k string) string { return env[k] }, strings.NewReader("Subject: x\n\nx\n"), &stderr)
	t.Logf("exit %d, stderr %q", code, stderr.String())
	assert.Empty(t, s.Mailbox())
	assert.Equal(t, exTempFail, code, "withdrawn by a signal: EX_TEMPFAIL, not EX_SOFTWARE")
}

// TestRedTeamAppendedOptionOverridesAdministratorsEnvironment: the
// administrator names the relay and the key in the environment, as the
// README's first example does (and as PHP-FPM's env[MXRELAY_URL] or a
// systemd Environment= does), and PHP's sendmail_path is "... -t -i".
// mail()'s fifth argument "-f$from" with a crafted $from appends
// "--url=wss://attacker": the flag silently beats MXRELAY_URL, and the API
// key and the mail go to the attacker. Likewise an appended
// --api-key-file beats MXRELAY_API_KEY, and the content of any one-line
// file the process can read is sent to the relay as a key. A flag that
// contradicts what the administrator's environment names must be refused
// (as a second --url is), not win.
func TestRedTeamAppendedOptionOverridesAdministratorsEnvironment(t *testing.T) {
	const in = "To: a@example.com\nSubject: contact form\n\nhello\n"
	t.Run("--url", func(t *testing.T) {
		good := newRelay(t, nil)
		evil := newRelay(t, nil)
		env := relayEnv(good) // MXRELAY_URL and MXRELAY_API_KEY: the administrator's
		code, stderr := sendmail(t, env, strings.NewReader(in), "-t", "-i", "-fvisitor@example.com", "--url="+evil.URL)
		t.Logf("exit %d, stderr %q; attacker's relay: %d connection(s), %d message(s)", code, stderr, evil.Stats().Connections, len(evil.Mailbox()))
		assert.Zero(t, evil.Stats().Connections, "the API key reached the attacker's relay")
		assert.Zero(t, len(evil.Mailbox()), "the mail reached the attacker's relay")
		assert.Equal(t, exUsage, code)
	})
	t.Run("--api-key-file", func(t *testing.T) {
		const secret = "db-password-of-another-app-0123456789"
		dir := t.TempDir()
		other := writeFile(t, dir, "secret", secret+"\n") // mode 0600, one line, readable by the PHP user
		// The administrator's relay, told to accept that string too, shows
		// it was sent as the key.
		good := newRelay(t, &relaytest.Options{APIKeys: []string{secret}})
		env := relayEnv(good)
		env["MXRELAY_API_KEY"] = relaytest.DefaultAPIKey // the administrator's key (this relay would refuse it)
		code, stderr := sendmail(t, env, strings.NewReader(in), "-t", "-i", "-fvisitor@example.com", "--api-key-file="+other)
		t.Logf("exit %d, stderr %q, delivered with the file's content as the key: %d", code, stderr, len(good.Mailbox()))
		assert.Zero(t, len(good.Mailbox()), "the content of a file the administrator never named was sent as the API key")
		assert.Equal(t, exUsage, code)
	})
}

// TestRedTeamAppendedDomainRedirectsBareNames: the guide's wrapper is
// "exec mxrelay-sendmail --domain=example.com "$@"" and PHP appends
// "-fx --domain=evil.example" after sendmail_path's "-t -i". --domain is
// not given-once and not settable in the configuration file, so the last
// one wins: every bare name ("To: root", cron's MAILTO=root, a PHP
// mail("webmaster", ...)) is sent to the attacker's domain, and the
// intended recipient gets nothing. The wrapper's --domain is the
// administrator's; an appended one must be refused.
func TestRedTeamAppendedDomainRedirectsBareNames(t *testing.T) {
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

// TestRedTeamAppendedStartTLSDowngradesWrapper: a wrapper (or
// git send-email's sendmailCmd) that says "--starttls=required
// --tls-server-name=smtp.example.com" is downgraded by an appended
// "--starttls=opportunistic" (or "never"): --tls-server-name may be given
// once, but --starttls may be given any number of times and the last one
// wins, so the relay's hop to the upstream goes in clear whenever the
// upstream, or whoever sits on that path, does not offer STARTTLS. Here
// the upstream offers no STARTTLS: required refuses (69); the appended
// option makes it deliver in clear, exit 0. A second --starttls that
// contradicts the first must be refused, as a second --tls-server-name
// is.
//
// (The wrapper names the relay with --url: with the relay in the
// environment, MXRELAY_URL, no option may set --starttls at all, and
// TestRedTeam2AppendedStartTLSChangesPolicy covers that.)
func TestRedTeamAppendedStartTLSDowngradesWrapper(t *testing.T) {
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

// TestRedTeamDedupeMergesDistinctMailboxes: dedupe compares whole
// addresses case-insensitively, but a local part is case-sensitive (RFC
// 5321 §2.4: only the destination host may fold it), and a quoted one
// certainly is: "Alice@example.com" and "alice@example.com", or
// "\"A B\"@example.com" and "\"a b\"@example.com", may be two people. One
// is silently dropped, with exit 0. The domain may be folded; the local
// part may not.
func TestRedTeamDedupeMergesDistinctMailboxes(t *testing.T) {
	s, sent := recordingRelay(t)
	in := "To: \"A B\"@example.com, \"a b\"@example.com\nCc: Alice@example.com, alice@EXAMPLE.com, alice@example.com\n\nbody\n"
	code, stderr := sendmail(t, relayEnv(s), strings.NewReader(in), "-t")
	require.Equal(t, exOK, code, stderr)
	got := rcptPaths(sent())
	t.Logf("RCPT %q", got)
	assert.Equal(t, []string{`"A B"@example.com`, `"a b"@example.com`, "Alice@example.com", "alice@EXAMPLE.com"}, got,
		"each distinct mailbox once; only the domain's case folded")
}

// TestRedTeamObsoleteFromFieldFirstIsDropped: a message whose first line
// is "From : alice@example.com" (white space before the colon: the
// obsolete syntax the command says it reads, as it does for "Bcc :") is
// taken for an mbox "From " line and dropped. The author's From header is
// lost, a From of the local user is made up, and the envelope sender
// becomes tester@host.test instead of alice@example.com. An mbox From_
// line has no colon after "From"; a field does.
func TestRedTeamObsoleteFromFieldFirstIsDropped(t *testing.T) {
	in := "From : Alice <alice@example.com>\nTo: to@example.com\nSubject: s\n\nbody\n"
	m := sendOneT(t, in)
	t.Logf("MAIL FROM %q, data %q", m.From, m.Data)
	assert.Equal(t, "alice@example.com", m.From, "the envelope sender is the From field's address")
	assert.True(t, strings.HasPrefix(string(m.Data), "From : Alice <alice@example.com>\r\n"), "the author's From field is kept")
	assert.NotContains(t, string(m.Data), "tester@host.test", "no From made up")
}

// TestRedTeamConfigWritableByOthers: the administrator's configuration
// file decides where the mail and the API key go, yet one that every user
// may write (mode 0666, or 0664 with a group) is read and obeyed: any
// local user rewrites url = and receives the key and every mail. The key
// file is refused when others may read it; the configuration file that
// names where the key goes must be refused when others may write it (as
// sudo, ssh and cron refuse theirs), exit 78.
func TestRedTeamConfigWritableByOthers(t *testing.T) {
	for _, mode := range []os.FileMode{0o666, 0o646, 0o664} {
		t.Run(mode.String(), func(t *testing.T) {
			s := newRelay(t, nil)
			dir := t.TempDir()
			keyFile := writeFile(t, dir, "key", s.APIKey+"\n")
			conf := writeFile(t, dir, "sendmail.conf", "url = "+s.URL+"\napi-key-file = "+keyFile+"\n")
			require.NoError(t, os.Chmod(conf, mode))
			env := map[string]string{"LOGNAME": "tester", "MXRELAY_DOMAIN": "host.test", envConfig: conf}
			code, stderr := sendmail(t, env, strings.NewReader("Subject: s\n\nx\n"), "a@example.com")
			t.Logf("mode %v: exit %d, stderr %q, connections %d", mode, code, stderr, s.Stats().Connections)
			assert.Equal(t, exConfig, code, "a configuration others may write is refused")
			assert.Zero(t, s.Stats().Connections)
		})
	}
}

// TestRedTeamPHPSendmailInjectionHeld (held): the CVE-2016-10033 payload,
// "-fa@b -X/path/shell.php -OQueueDirectory=/tmp", as the shell splits it
// and as one word. -X and -O are accepted and ignored: no log file is
// written; as one word the sender is refused.
func TestRedTeamPHPSendmailInjectionHeld(t *testing.T) {
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

// TestRedTeamHelpAppendedExitsZeroUnsent: "--help" anywhere among the
// options prints the usage and exits 0 without reading or sending the
// message. Exit 0 means "delivered" (the README, and PHP's mail(), which
// returns true): an appended "--help" (PHP's fifth argument) makes every
// mail vanish while the application is told it was sent. --help with
// anything else on the command line is a usage error, or at least not 0.
func TestRedTeamHelpAppendedExitsZeroUnsent(t *testing.T) {
	s := newRelay(t, nil)
	code, stderr := sendmail(t, relayEnv(s), strings.NewReader("To: a@example.com\nSubject: order 1234\n\nx\n"), "-t", "-i", "--help")
	t.Logf("exit %d, %d message(s) sent, stderr %.80q…", code, len(s.Mailbox()), stderr)
	if len(s.Mailbox()) == 0 {
		assert.NotEqual(t, exOK, code, "nothing was sent: exit 0 would tell PHP it was")
	}
}

// TestRedTeamEnvironmentReplacesAdministratorsConfig: the README says of
// /etc/mxrelay/sendmail.conf "What it sets, an option or the environment
// cannot change", and main.go's comment that an environment variable that
// would change it is refused. But MXRELAY_SENDMAIL_CONFIG, read from the
// same environment, replaces the file: pointed at /dev/null (or any file
// without settings), the administrator's url and api-key-file are gone and
// MXRELAY_URL plus MXRELAY_API_KEY_FILE (the administrator's own key file)
// send the key elsewhere. (The README calls the variable "for tests";
// the built command honours it all the same. Severity is low where
// whoever sets the environment can also read the key file.)
func TestRedTeamEnvironmentReplacesAdministratorsConfig(t *testing.T) {
	good := newRelay(t, nil)
	evil := newRelay(t, nil)
	dir := t.TempDir()
	keyFile := writeFile(t, dir, "api-key", relaytest.DefaultAPIKey+"\n")
	admin := writeFile(t, dir, "sendmail.conf", "url = "+good.URL+"\napi-key-file = "+keyFile+"\n")
	old := configPath
	configPath = admin // as if built with -X main.configPath, or the default /etc/mxrelay/sendmail.conf
	t.Cleanup(func() { configPath = old })

	env := map[string]string{"LOGNAME": "www-data", "MXRELAY_DOMAIN": "host.test"}
	code, stderr := sendmail(t, env, strings.NewReader("Subject: s\n\nx\n"), "a@example.com")
	require.Equal(t, exOK, code, stderr)
	require.Len(t, good.Mailbox(), 1, "the administrator's file is read")

	env[envConfig] = os.DevNull
	env["MXRELAY_URL"] = evil.URL
	env["MXRELAY_API_KEY_FILE"] = keyFile
	code, stderr = sendmail(t, env, strings.NewReader("Subject: s\n\nx\n"), "a@example.com")
	t.Logf("exit %d, stderr %q, other relay: %d connection(s)", code, stderr, evil.Stats().Connections)
	assert.Zero(t, evil.Stats().Connections, "the administrator's key went to a relay the environment named")
	assert.Equal(t, exConfig, code)
}

// The administrator's MXRELAY_DOMAIN is not changed by an appended
// --domain (found after the red team's fixes: --domain still won over
// the environment): usage error, nothing sent.
func TestAppendedDomainCannotContradictTheEnvironment(t *testing.T) {
	s := newRelay(t, nil)
	env := withEnv(relayEnv(s), map[string]string{"MXRELAY_DOMAIN": "example.com"})
	code, stderr := sendmail(t, env, strings.NewReader("Subject: s\n\nbody\n"), "--domain=evil.example", "root")
	assert.Equal(t, exUsage, code, stderr)
	assert.Contains(t, stderr, "MXRELAY_DOMAIN")
	assert.Empty(t, s.Mailbox())
	code, stderr = sendmail(t, env, strings.NewReader("Subject: s\n\nbody\n"), "--domain=EXAMPLE.com", "root")
	assert.Equal(t, exOK, code, "the same domain, another case: %s", stderr)
}
