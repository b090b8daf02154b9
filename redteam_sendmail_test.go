//go:build linux

package mxrelay_test

// Red-team tests for issue 15, library side: RelayFromEnv's key file
// checks, which mxrelay-sendmail relies on for --api-key-file and
// MXRELAY_API_KEY_FILE.

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mxrelay/mxrelay"
)

// TestRedTeamKeyFileInProcfs: the key file must be "a regular file of at
// most 4 KiB holding one non-empty line", so that an injected file name
// does not send some other file's content as the key. A procfs file
// passes every check: fstat says regular, size 0, mode 0400, and its
// content has no LF. /proc/self/environ (or /proc/<pid>/environ of any
// process of the same user) is read whole and returned as the API key:
// the process's environment — MXRELAY_SMTP_PASSWORD, database passwords,
// session secrets — goes to the relay in AUTHENTICATE. A key is printable
// text; NUL-separated content (or any control character) is not a key.
func TestRedTeamKeyFileInProcfs(t *testing.T) {
	sleep, err := exec.LookPath("sleep")
	if err != nil {
		t.Skip("no sleep command")
	}
	child := exec.Command(sleep, "15")
	child.Env = []string{"MXRELAY_SMTP_PASSWORD=hunter2-upstream", "DB_PASSWORD=s3cret-db"}
	require.NoError(t, child.Start())
	t.Cleanup(func() {
		_ = child.Process.Kill() // our own child, by its pid
		_ = child.Wait()
	})
	environ := filepath.Join("/proc", strconv.Itoa(child.Process.Pid), "environ")
	fi, err := os.Stat(environ)
	require.NoError(t, err)
	t.Logf("%s: regular %v, size %d, mode %v", environ, fi.Mode().IsRegular(), fi.Size(), fi.Mode().Perm())

	// (/proc/self/environ is the same, when the environment is under 4 KiB.)
	for _, file := range []string{environ} {
		t.Run(file, func(t *testing.T) {
			env := map[string]string{"MXRELAY_URL": "wss://relay.example.com/smtp", "MXRELAY_API_KEY_FILE": file}
			done := make(chan struct{})
			var key string
			var err error
			go func() {
				defer close(done)
				_, key, err = mxrelay.RelayFromEnv(func(k string) string { return env[k] })
			}()
			select {
			case <-done:
			case <-time.After(5 * time.Second):
				t.Fatal("RelayFromEnv hung")
			}
			t.Logf("key %.60q…, err %v", key, err)
			assert.Error(t, err, "a procfs file is not a key file")
			assert.NotContains(t, key, "PASSWORD", "the environment would be sent as the API key")
		})
	}
}

// TestRedTeamKeyWithControlCharacters: a one-line key file whose line
// holds a NUL, a CR or an escape is returned as it is; such a line is not
// an API key (it is some binary or terminal file), and is refused.
func TestRedTeamKeyWithControlCharacters(t *testing.T) {
	dir := t.TempDir()
	for name, content := range map[string]string{
		"NUL":         "key-0123\x00rest\n",
		"CR inside":   "key-0123\rX-Injected: 1\n",
		"escape":      "\x1b]0;title\x07key-0123\n",
		"DEL":         "key\x7f0123\n",
		"tab between": "key-0123\tsecond-field\n",
	} {
		t.Run(name, func(t *testing.T) {
			p := filepath.Join(dir, name)
			require.NoError(t, os.WriteFile(p, []byte(content), 0o600))
			env := map[string]string{"MXRELAY_URL": "wss://relay.example.com/smtp", "MXRELAY_API_KEY_FILE": p}
			_, key, err := mxrelay.RelayFromEnv(func(k string) string { return env[k] })
			t.Logf("key %q, err %v", key, err)
			assert.Error(t, err, "a control character has no place in an API key")
		})
	}
}
