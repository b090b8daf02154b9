//go:build unix

package mxrelay_test

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mxrelay/mxrelay"
)

// TestRelayFromEnvKeyFileChecks: a key file that is not one short line in
// a regular file only its owner can read is refused, at once.
func TestRelayFromEnvKeyFileChecks(t *testing.T) {
	dir := t.TempDir()
	file := func(name, content string, mode os.FileMode) string {
		p := filepath.Join(dir, name)
		require.NoError(t, os.WriteFile(p, []byte(content), 0o600))
		require.NoError(t, os.Chmod(p, mode)) // whatever the umask
		return p
	}
	fifo := filepath.Join(dir, "fifo")
	require.NoError(t, syscall.Mkfifo(fifo, 0o600))

	for _, tc := range []struct {
		name, file, wantKey, wantErr string
	}{
		{name: "one line, mode 0600", file: file("good", "key-0123\n", 0o600), wantKey: "key-0123"},
		{name: "one line without its end, mode 0640", file: file("group", " key-0123 ", 0o640), wantKey: "key-0123"},
		{name: "CRLF", file: file("crlf", "key-0123\r\n", 0o400), wantKey: "key-0123"},
		{name: "/dev/zero", file: "/dev/zero", wantErr: "not a regular file"},
		{name: "a FIFO, nobody writing", file: fifo, wantErr: "not a regular file"},
		{name: "a directory", file: dir, wantErr: "not a regular file"},
		{name: "readable by everyone", file: file("world", "key-0123\n", 0o644), wantErr: "readable by every user"},
		{name: "two lines", file: file("two", "key-0123\nroot:x:0:0::/root:/bin/sh\n", 0o600), wantErr: "more than one line"},
		{name: "an empty line after the key", file: file("blank", "key-0123\n\n", 0o600), wantErr: "more than one line"},
		{name: "too big", file: file("big", strings.Repeat("k", 4097), 0o600), wantErr: "larger than a key can be"},
		{name: "4 KiB is not too big", file: file("edge", strings.Repeat("k", 4095)+"\n", 0o600), wantKey: strings.Repeat("k", 4095)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			env := map[string]string{"MXRELAY_URL": "wss://r/smtp", "MXRELAY_API_KEY_FILE": tc.file}
			type result struct {
				key string
				err error
			}
			done := make(chan result, 1)
			go func() {
				_, key, err := mxrelay.RelayFromEnv(func(k string) string { return env[k] })
				done <- result{key, err}
			}()
			var res result
			select {
			case res = <-done:
			case <-time.After(5 * time.Second):
				// Unblock an open waiting for a FIFO's writer, then fail.
				if w, err := os.OpenFile(fifo, os.O_WRONLY|syscall.O_NONBLOCK, 0); err == nil {
					w.Close()
				}
				<-done
				t.Fatal("RelayFromEnv blocked on the key file")
			}
			if tc.wantErr != "" {
				require.ErrorContains(t, res.err, tc.wantErr)
				assert.True(t, strings.HasPrefix(res.err.Error(), "mxrelay: "), res.err.Error())
				return
			}
			require.NoError(t, res.err)
			assert.Equal(t, tc.wantKey, res.key)
		})
	}
}
