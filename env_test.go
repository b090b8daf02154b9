package mxrelay_test

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mxrelay/mxrelay"
)

func TestRelayFromEnv(t *testing.T) {
	dir := t.TempDir()
	keyFile := filepath.Join(dir, "key")
	require.NoError(t, os.WriteFile(keyFile, []byte("  key-from-file\n"), 0o600))
	emptyFile := filepath.Join(dir, "empty")
	require.NoError(t, os.WriteFile(emptyFile, []byte("\n"), 0o600))

	for _, tc := range []struct {
		name    string
		env     map[string]string
		wantKey string
		wantErr string
	}{
		{name: "key", env: map[string]string{"MXRELAY_URL": "wss://r/smtp", "MXRELAY_API_KEY": "k1"}, wantKey: "k1"},
		{name: "key wins over file", env: map[string]string{"MXRELAY_URL": "wss://r/smtp", "MXRELAY_API_KEY": "k1", "MXRELAY_API_KEY_FILE": keyFile}, wantKey: "k1"},
		{name: "file, trimmed", env: map[string]string{"MXRELAY_URL": "wss://r/smtp", "MXRELAY_API_KEY_FILE": keyFile}, wantKey: "key-from-file"},
		{name: "no URL", env: map[string]string{"MXRELAY_API_KEY": "k1"}, wantErr: "MXRELAY_URL is not set"},
		{name: "no key", env: map[string]string{"MXRELAY_URL": "wss://r/smtp"}, wantErr: "MXRELAY_API_KEY_FILE"},
		{name: "missing file", env: map[string]string{"MXRELAY_URL": "wss://r/smtp", "MXRELAY_API_KEY_FILE": filepath.Join(dir, "nope")}, wantErr: "no such file"},
		{name: "empty file", env: map[string]string{"MXRELAY_URL": "wss://r/smtp", "MXRELAY_API_KEY_FILE": emptyFile}, wantErr: "is empty"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			u, key, err := mxrelay.RelayFromEnv(func(k string) string { return tc.env[k] })
			if tc.wantErr != "" {
				require.ErrorContains(t, err, tc.wantErr)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, "wss://r/smtp", u)
			assert.Equal(t, tc.wantKey, key)
		})
	}
}
