//go:build unix

package mxrelay

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/mxrelay/mxrelay/relaytest"
)

// TestSpoolTornJournalWriteIsUndone: a journal write cut short (a full
// disk, simulated with RLIMIT_FSIZE) must not leave a partial line that
// the next record, once the disk has room again, is glued to: the next
// start would not see that record.
func TestSpoolTornJournalWriteIsUndone(t *testing.T) {
	dir := t.TempDir()
	s, _, err := openSpool(dir, false)
	require.NoError(t, err)
	defer s.close()
	var lim syscall.Rlimit
	require.NoError(t, syscall.Getrlimit(syscall.RLIMIT_FSIZE, &lim))
	small := lim
	small.Cur = uint64(s.size) + 10
	require.NoError(t, syscall.Setrlimit(syscall.RLIMIT_FSIZE, &small))
	err = s.ended("0000000000000001-000001.msg")
	require.NoError(t, syscall.Setrlimit(syscall.RLIMIT_FSIZE, &lim))
	require.Error(t, err, "the limit did not cut the write")
	require.NoError(t, s.ended("0000000000000001-000002.msg"))
	j, err := os.ReadFile(filepath.Join(dir, journalName))
	require.NoError(t, err)
	require.Contains(t, strings.Split(string(j), "\n"), "E 0000000000000001-000002.msg", "journal: %q", j)
}

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

// TestSpoolSetsAsideWhatIsNotAFile: a .msg name that is a FIFO (or a
// symlink, a directory) is not ours: opening a FIFO would block New for
// ever. It is set aside, unopened.
func TestSpoolSetsAsideWhatIsNotAFile(t *testing.T) {
	dir := t.TempDir()
	fifo := filepath.Join(dir, "0000000000000001-000001.msg")
	require.NoError(t, syscall.Mkfifo(fifo, 0o600))
	link := filepath.Join(dir, "0000000000000001-000002.msg")
	require.NoError(t, os.Symlink("/dev/null", link))
	opened := make(chan error, 1)
	go func() {
		s, _, err := openSpool(dir, false)
		if err == nil {
			s.close()
		}
		opened <- err
	}()
	select {
	case err := <-opened:
		require.NoError(t, err)
	case <-time.After(10 * time.Second):
		// Unblock the open so that the goroutine ends.
		if w, err := os.OpenFile(fifo, os.O_WRONLY, 0); err == nil {
			w.Close()
		}
		<-opened
		t.Fatal("New blocked opening a FIFO named like an email")
	}
	require.FileExists(t, fifo+".bad")
	_, err := os.Lstat(link + ".bad")
	require.NoError(t, err)
}
