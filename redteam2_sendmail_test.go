//go:build linux

package mxrelay_test

// Red-team tests, round two, for issue 15, library side: RelayFromEnv's
// key file checks against the files the brief named. All held.

import (
	"os"
	"path/filepath"
	"strconv"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mxrelay/mxrelay"
)

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
