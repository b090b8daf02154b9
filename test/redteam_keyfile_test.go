//go:build linux

package test

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

// Red-team tests for issue 15, library side: RelayFromEnv's key file
// checks, which mxrelay-sendmail relies on for --api-key-file and
// MXRELAY_API_KEY_FILE.

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

// Red-team tests, round two, for issue 15, library side: RelayFromEnv's
// key file checks against the files the brief named. All held.

// TestRedTeam2SendmailKeyFileOddFilesHeld (held): a sysfs attribute only
// its owner may read (fstat says 4096 bytes, it holds a few), /dev/stdin
// and /proc/self/fd/N of a pipe, a symbolic link to a file every user may
// read are refused, and no error quotes what the file holds.
func TestRedTeam2SendmailKeyFileOddFilesHeld(t *testing.T) {
	r, w, err := os.Pipe()
	require.NoError(t, err)
	defer r.Close()
	defer w.Close()
	_, _ = w.WriteString("pipe-secret-123\n")

	dir := t.TempDir()
	public := filepath.Join(dir, "public")
	require.NoError(t, os.WriteFile(public, []byte("public-secret-123\n"), 0o644))
	link := filepath.Join(dir, "link")
	require.NoError(t, os.Symlink(public, link))

	files := map[string]string{
		"pipe fd": "/proc/self/fd/" + strconv.Itoa(int(r.Fd())),
		"symlink": link,
	}
	if m, _ := filepath.Glob("/sys/kernel/slab/*/objects"); len(m) > 0 {
		if fi, err := os.Stat(m[0]); err == nil && fi.Mode().Perm()&0o044 == 0 {
			files["sysfs 0400"] = m[0]
		}
	}
	for name, file := range files {
		t.Run(name, func(t *testing.T) {
			_, key, err := mxrelay.RelayFromEnv(func(k string) string {
				switch k {
				case mxrelay.EnvURL:
					return "ws://127.0.0.1:1/smtp"
				case mxrelay.EnvAPIKeyFile:
					return file
				}
				return ""
			})
			t.Logf("%s: key %q, err %v", file, key, err)
			assert.Error(t, err)
			assert.Empty(t, key)
			if err != nil {
				assert.NotContains(t, err.Error(), "secret-123")
			}
		})
	}
}
