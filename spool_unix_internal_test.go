//go:build unix

package mxrelay

import (
	"context"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/mxrelay/mxrelay/relaytest"
)

// TestSpoolFullDiskRefusesTheEmail: an email the disk cannot take (a
// write cut by RLIMIT_FSIZE) is refused by Enqueue and leaves nothing in
// the spool, and the Client goes on once there is room.
func TestSpoolFullDiskRefusesTheEmail(t *testing.T) {
	relay := relaytest.NewServer(nil)
	defer relay.Close()
	dir := t.TempDir()
	c, err := New(relay.URL, relay.APIKey, &Options{SpoolDir: dir})
	require.NoError(t, err)
	defer c.Close(context.Background())
	var lim syscall.Rlimit
	require.NoError(t, syscall.Getrlimit(syscall.RLIMIT_FSIZE, &lim))
	small := lim
	small.Cur = 1 << 10
	require.NoError(t, syscall.Setrlimit(syscall.RLIMIT_FSIZE, &small))
	_, err = c.Enqueue(Email{From: "a@example.com", To: []string{"b@example.com"}, Body: strings.NewReader("Subject: big\r\n\r\n" + strings.Repeat("x", 4<<10) + "\r\n")})
	require.NoError(t, syscall.Setrlimit(syscall.RLIMIT_FSIZE, &lim))
	require.Error(t, err)
	left, _ := filepath.Glob(filepath.Join(dir, "*.msg*"))
	require.Empty(t, left, "a refused email left a file")
	_, err = c.Send(context.Background(), spoolTestEmail("fits"))
	require.NoError(t, err)
	require.Len(t, relay.Mailbox(), 1)
}
