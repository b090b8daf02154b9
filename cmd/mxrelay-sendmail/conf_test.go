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
