package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mxrelay/mxrelay/relaytest"
)

// writeFile writes content to a new file in dir, mode 0600.
func writeFile(t *testing.T, dir, name, content string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	require.NoError(t, os.WriteFile(p, []byte(content), 0o600))
	return p
}

// writeConfig writes to dir a key file holding key, and a configuration
// file that names url and that key file and ends with extra, both as
// writeFile does, and returns their paths.
func writeConfig(t *testing.T, dir, url, key, extra string) (conf, keyFile string) {
	t.Helper()
	keyFile = writeFile(t, dir, "key", key+"\n")
	return writeFile(t, dir, "sendmail.conf", "url = "+url+"\napi-key-file = "+keyFile+"\n"+extra), keyFile
}

// TestAppendedArgumentsCannotRedirect: whatever a caller appends to the
// administrator's command line (PHP's mail() additional parameters, the
// CVE-2016-10033 class), the mail and the API key go to the relay the
// administrator named, or nowhere.
func TestAppendedArgumentsCannotRedirect(t *testing.T) {
	evil := newRelay(t, nil)
	dir := t.TempDir()
	keyFile := writeFile(t, dir, "key", relaytest.DefaultAPIKey+"\n")
	env := map[string]string{"LOGNAME": "www-data", "MXRELAY_DOMAIN": "host.test", envConfig: filepath.Join(dir, "none.conf")}
	const in = "To: a@example.com\nSubject: s\n\nbody\n"
	for _, tc := range []struct {
		name     string
		appended []string
		want     int
	}{
		{name: "a second --url", appended: []string{"-fa@example.com", "--url=" + evil.URL}, want: exUsage},
		{name: "a second --api-key-file", appended: []string{"--api-key-file=/etc/passwd"}, want: exUsage},
		{name: "a second --tls-server-name", appended: []string{"--tls-server-name=evil.example"}, want: exUsage},
		{name: "--url after an operand", appended: []string{"b@example.com", "--url=" + evil.URL}, want: exUsage},
		{name: "--url after --", appended: []string{"--", "--url=" + evil.URL}, want: exDataErr},
	} {
		t.Run(tc.name, func(t *testing.T) {
			good := newRelay(t, nil)
			admin := []string{"--url=" + good.URL, "--api-key-file=" + keyFile, "--tls-server-name=mx.test", "-t", "-i"}
			code, stderr := sendmail(t, env, strings.NewReader(in), append(admin, tc.appended...)...)
			assert.Equal(t, tc.want, code, stderr)
			assert.Zero(t, evil.Stats().Connections, "nothing reached the other relay")
			assert.Zero(t, good.Stats().Connections, "refused before connecting")
		})
	}
}

func TestConfigFile(t *testing.T) {
	s := newRelay(t, nil)
	other := newRelay(t, nil)
	dir := t.TempDir()
	keyFile := writeFile(t, dir, "key", s.APIKey+"\n")
	conf := writeFile(t, dir, "sendmail.conf", "# the administrator's\n\nurl = "+s.URL+"\napi-key-file="+keyFile+"\n")
	base := map[string]string{"LOGNAME": "tester", "MXRELAY_DOMAIN": "host.test", envConfig: conf}
	const in = "Subject: s\n\nbody\n"

	code, stderr := sendmail(t, base, strings.NewReader(in), "a@example.com")
	require.Equal(t, exOK, code, stderr)
	assert.Len(t, s.Mailbox(), 1, "the relay and the key come from the file")

	for _, tc := range []refusal{
		{name: "--url", args: []string{"--url=" + other.URL}, want: exUsage, stderr: "--url: url is set in " + conf},
		{name: "--api-key-file", args: []string{"--api-key-file=" + keyFile}, want: exUsage, stderr: "--api-key-file"},
		{name: "--starttls", args: []string{"--starttls=never"}, env: map[string]string{envConfig: writeFile(t, dir, "tls.conf", "url = "+s.URL+"\nstarttls = opportunistic\ntls-server-name = mx.test\n")}, want: exUsage, stderr: "--starttls"},
		{name: "--tls-server-name", args: []string{"--starttls=required", "--tls-server-name=evil.example"}, env: map[string]string{envConfig: writeFile(t, dir, "name.conf", "tls-server-name = mx.test\n")}, want: exUsage, stderr: "--tls-server-name"},
		{name: "MXRELAY_URL", env: map[string]string{"MXRELAY_URL": other.URL}, want: exConfig, stderr: "MXRELAY_URL"},
		{name: "MXRELAY_API_KEY", env: map[string]string{"MXRELAY_API_KEY": relaytest.DefaultAPIKey}, want: exConfig, stderr: "MXRELAY_API_KEY"},
		{name: "MXRELAY_API_KEY_FILE", env: map[string]string{"MXRELAY_API_KEY_FILE": keyFile}, want: exConfig, stderr: "MXRELAY_API_KEY_FILE"},
		{name: "an unknown setting", env: map[string]string{envConfig: writeFile(t, dir, "bad.conf", "api-key = secret\n")}, want: exConfig, stderr: "unknown setting"},
		{name: "a setting twice", env: map[string]string{envConfig: writeFile(t, dir, "twice.conf", "url = "+s.URL+"\nurl = "+other.URL+"\n")}, want: exConfig, stderr: "twice"},
		{name: "a line without =", env: map[string]string{envConfig: writeFile(t, dir, "noeq.conf", "url "+s.URL+"\n")}, want: exConfig, stderr: "name = value"},
		{name: "a directory", env: map[string]string{envConfig: dir}, want: exConfig},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, stderr := sendmail(t, withEnv(base, tc.env), strings.NewReader(in), append(tc.args, "a@example.com")...)
			assert.Equal(t, tc.want, code, stderr)
			assert.Contains(t, stderr, tc.stderr)
			assert.Zero(t, other.Stats().Connections)
		})
	}
	assert.Len(t, s.Mailbox(), 1, "nothing more was sent")
}

func TestPasswordInClear(t *testing.T) {
	s := newRelay(t, &relaytest.Options{Users: map[string]string{"app": "right"}})
	env := relayEnv(s)
	env[envUsername], env[envPassword] = "app", "right"

	code, stderr := sendmail(t, env, strings.NewReader("Subject: s\n\nx\n"), "a@example.com")
	assert.Equal(t, exConfig, code, stderr)
	assert.Contains(t, stderr, envPasswordInClear, "the error says how to allow it")
	assert.Equal(t, 1, strings.Count(stderr, "\n"), "one line: %q", stderr)
	assert.Zero(t, s.Stats().Connections)

	env[envPasswordInClear] = "1"
	code, stderr = sendmail(t, env, strings.NewReader("Subject: s\n\nx\n"), "a@example.com")
	assert.Equal(t, exConfig, code, stderr)

	env[envPasswordInClear] = "yes"
	code, stderr = sendmail(t, env, strings.NewReader("Subject: s\n\nx\n"), "a@example.com")
	require.Equal(t, exOK, code, stderr)
	assert.Equal(t, "app", only(t, s).User, "AUTH ran, in clear, as asked")
}

// TestAppendedOptionCannotOverrideTheEnvironment: the administrator
// names the relay and the key in the environment, as the README's first
// example does (and as PHP-FPM's env[MXRELAY_URL] or a systemd
// Environment= does), and PHP's sendmail_path is "... -t -i". A flag that
// contradicts what the administrator's environment names is refused (64),
// as a second --url is: an appended --url sends neither the key nor the
// mail to its relay, and an appended --api-key-file sends no file's
// content as the key.
//
// Found by the red team (issue 15, round one): mail()'s fifth argument
// "-f$from" with a crafted $from appended "--url=wss://attacker": the flag
// silently beat MXRELAY_URL, and the API key and the mail went to the
// attacker. Likewise an appended --api-key-file beat MXRELAY_API_KEY, and
// the content of any one-line file the process could read was sent to the
// relay as a key.
func TestAppendedOptionCannotOverrideTheEnvironment(t *testing.T) {
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

// TestAppendedDomainCannotReplaceTheHostName: the README's guide, step 4,
// says that with MXRELAY_URL and the key in PHP-FPM's environment an
// argument appended by mail()'s fifth parameter cannot "change --domain".
// With no domain set by the administrator (MXRELAY_DOMAIN, a wrapper's
// --domain, the configuration's domain) the host name is the domain of
// bare names, the administrator's default, and an appended
// --domain=evil.example is refused (64): "To: webmaster" does not go to
// webmaster@evil.example.
//
// Found by the red team (issue 15, round two, on 69b67f2): the appended
// --domain replaced the host name, exit 0. The contradiction rule
// compared --domain only with MXRELAY_DOMAIN (main.go, identity), and
// applyConfig skipped domain when the file did not set it (conf.go).
func TestAppendedDomainCannotReplaceTheHostName(t *testing.T) {
	s, sent := recordingRelay(t)
	env := relayEnv(s) // MXRELAY_URL and MXRELAY_API_KEY: the administrator's
	delete(env, "MXRELAY_DOMAIN")
	php := []string{"-t", "-i"} // sendmail_path, as the guide writes it
	appended := []string{"-fvisitor@example.com", "--domain=evil.example"}
	code, stderr := sendmail(t, env, strings.NewReader("To: webmaster\nSubject: contact form\n\nhello\n"), append(php, appended...)...)
	t.Logf("exit %d, stderr %q, RCPT %q", code, stderr, rcptPaths(sent()))
	assert.NotContains(t, rcptPaths(sent()), "webmaster@evil.example", "an appended --domain sent the bare name to the attacker's domain")
	assert.Equal(t, exUsage, code, "an appended --domain is refused")
}

// TestAppendedTLSOptionsCannotSetThePolicy: the promise is that nothing
// appended changes the TLS name or policy. With the administrator's relay
// in the environment (the README's first example, PHP-FPM's env[...]) and
// no --starttls anywhere, an appended "--starttls=required
// --tls-server-name=evil.example" is refused (64).
//
// Found by the red team (issue 15, round two, on 69b67f2): --starttls and
// --tls-server-name were given-once, which protects a wrapper that gives
// them; but here the appended ones were the first and only ones, and were
// obeyed: the policy became required, the upstream's certificate was
// checked against the attacker's name, and (an upstream without STARTTLS)
// every mail of the site failed (69) where it was delivered. settingEnv
// (conf.go) had no entry for starttls or tls-server-name, so applyConfig
// let any value through when the file did not set it.
func TestAppendedTLSOptionsCannotSetThePolicy(t *testing.T) {
	in := "To: a@example.com\nSubject: order 1234\n\nhello\n"
	s := newRelay(t, nil)
	code, stderr := sendmail(t, relayEnv(s), strings.NewReader(in), "-t", "-i")
	require.Equal(t, exOK, code, "the administrator's policy delivers: %s", stderr)

	s = newRelay(t, nil)
	code, stderr = sendmail(t, relayEnv(s), strings.NewReader(in), "-t", "-i", "-fvisitor@example.com", "--starttls=required", "--tls-server-name=evil.example")
	t.Logf("exit %d, stderr %q, delivered %d", code, stderr, len(s.Mailbox()))
	assert.Equal(t, exUsage, code, "an appended --starttls and --tls-server-name change the administrator's TLS policy and name: refused")
}

// TestEnvironmentCannotReplaceTheAdministratorsConfig: the README says of
// /etc/mxrelay/sendmail.conf "What it sets, an option or the environment
// cannot change". MXRELAY_SENDMAIL_CONFIG, read from the same
// environment, names another file only when nothing is at the
// administrator's path: pointed at /dev/null with the administrator's
// file in place, it does not free MXRELAY_URL and MXRELAY_API_KEY_FILE to
// send the administrator's key elsewhere (78).
//
// Found by the red team (issue 15, round one): the variable replaced the
// file, and with it the administrator's url and api-key-file. (The README
// calls the variable "for tests"; the built command honoured it all the
// same. Severity is low where whoever sets the environment can also read
// the key file.)
func TestEnvironmentCannotReplaceTheAdministratorsConfig(t *testing.T) {
	good := newRelay(t, nil)
	evil := newRelay(t, nil)
	dir := t.TempDir()
	admin, keyFile := writeConfig(t, dir, good.URL, relaytest.DefaultAPIKey, "")
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

// TestConfigWritableByOthersIsRefused: the administrator's configuration
// file decides where the mail and the API key go, so one that every user
// may write (mode 0666, or 0664 with a group) is refused (78), as sudo,
// ssh and cron refuse theirs, and as the key file is refused when others
// may read it.
//
// Found by the red team (issue 15, round one): such a file was read and
// obeyed: any local user could rewrite url = and receive the key and
// every mail.
func TestConfigWritableByOthersIsRefused(t *testing.T) {
	for _, mode := range []os.FileMode{0o666, 0o646, 0o664} {
		t.Run(mode.String(), func(t *testing.T) {
			s := newRelay(t, nil)
			dir := t.TempDir()
			conf, _ := writeConfig(t, dir, s.URL, s.APIKey, "")
			require.NoError(t, os.Chmod(conf, mode))
			env := map[string]string{"LOGNAME": "tester", "MXRELAY_DOMAIN": "host.test", envConfig: conf}
			code, stderr := sendmail(t, env, strings.NewReader("Subject: s\n\nx\n"), "a@example.com")
			t.Logf("mode %v: exit %d, stderr %q, connections %d", mode, code, stderr, s.Stats().Connections)
			assert.Equal(t, exConfig, code, "a configuration others may write is refused")
			assert.Zero(t, s.Stats().Connections)
		})
	}
}

// TestOddConfigFilesFailClosed: odd configuration files fail closed (78),
// never half-read: a comment after a value, a byte-order mark, a name in
// capitals, a setting given twice, a line over the scanner's 64 KiB. CRLF
// line ends are read. (Red team, issue 15, round two; held: the attack
// failed, and this keeps it failing.)
func TestOddConfigFilesFailClosed(t *testing.T) {
	for name, tc := range map[string]struct {
		extra string
		want  int
	}{
		"comment after value": {"domain = example.com # ours\n", exConfig},
		"byte-order mark":     {"\ufeffdomain = example.com\n", exConfig},
		"capitals":            {"DOMAIN = evil.example\n", exConfig},
		"twice":               {"domain = example.com\ndomain = evil.example\n", exConfig},
		"long line":           {"# " + strings.Repeat("x", 70000) + "\n", exConfig},
		"crlf":                {"domain = example.com\r\n", exOK},
	} {
		t.Run(name, func(t *testing.T) {
			s := newRelay(t, nil)
			dir := t.TempDir()
			conf, _ := writeConfig(t, dir, s.URL, s.APIKey, tc.extra)
			require.NoError(t, os.Chmod(conf, 0o644))
			env := map[string]string{"LOGNAME": "tester", envConfig: conf}
			code, stderr := sendmail(t, env, strings.NewReader("Subject: s\n\nx\n"), "root")
			assert.Equal(t, tc.want, code, stderr)
			if tc.want == exOK {
				assert.Equal(t, []string{"root@example.com"}, only(t, s).To)
			} else {
				assert.Zero(t, s.Stats().Connections)
			}
		})
	}
}
