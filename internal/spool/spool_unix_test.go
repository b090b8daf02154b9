//go:build unix

package spool

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mxrelay/mxrelay/internal/store"
	"github.com/mxrelay/mxrelay/internal/store/storetest"
)

// withFileSizeLimit runs f with writes past size bytes of any file cut
// short, as a full disk would cut them (RLIMIT_FSIZE).
func withFileSizeLimit(t *testing.T, size uint64, f func()) {
	t.Helper()
	var lim syscall.Rlimit
	require.NoError(t, syscall.Getrlimit(syscall.RLIMIT_FSIZE, &lim))
	small := lim
	small.Cur = size
	require.NoError(t, syscall.Setrlimit(syscall.RLIMIT_FSIZE, &small))
	defer func() { require.NoError(t, syscall.Setrlimit(syscall.RLIMIT_FSIZE, &lim)) }()
	f()
}

// TestTornJournalWriteIsUndone: a journal write cut short (a full disk)
// must not leave a partial line that the next record, once the disk has
// room again, is glued to: the next Open would not see that record.
func TestTornJournalWriteIsUndone(t *testing.T) {
	s := open(t, t.TempDir())
	storetest.Accept(t, s, "e1", 0, "x")
	storetest.Accept(t, s, "e2", 0, "x")
	cs := storetest.Claim(t, s, "w1", 2)
	var err error
	withFileSizeLimit(t, uint64(s.size)+10, func() {
		_, err = s.Ending(ctx, []store.Token{cs[0].Token})
	})
	require.Error(t, err, "the limit did not cut the write")
	end(t, s, cs[1].Token)
	j, err := os.ReadFile(filepath.Join(s.dir, journalName))
	require.NoError(t, err)
	name := filepath.Base(msgFiles(t, s.dir)[1])
	assert.Equal(t, "B 0\nE "+name+"\n", string(j))

	s = reopen(t, s)
	got := map[string]int{}
	for _, c := range storetest.Claim(t, s, "w2", 2) {
		got[c.ID] = c.Unanswered
	}
	assert.Equal(t, map[string]int{"e1": 0, "e2": 1}, got)
}

// TestFullDiskRefusesTheEmail: an email the disk cannot take is refused
// and leaves nothing in the directory, and the Store goes on once there
// is room.
func TestFullDiskRefusesTheEmail(t *testing.T) {
	s := open(t, t.TempDir())
	withFileSizeLimit(t, 1<<10, func() {
		d, err := s.Accept(ctx, &store.Envelope{ID: "big"})
		require.NoError(t, err)
		_, werr := d.Write([]byte(strings.Repeat("x", 128<<10)))
		_, err = d.Commit(ctx, nil)
		require.Error(t, err, "write: %v", werr)
	})
	left, _ := filepath.Glob(filepath.Join(s.dir, "*.msg*"))
	assert.Empty(t, left, "a refused email left a file")
	storetest.Accept(t, s, "fits", 0, "x")
	assert.Equal(t, []string{"fits"}, storetest.IDs(storetest.Claim(t, s, "w1", 10)))
}

// TestSetsAsideWhatIsNotAFile: a .msg name that is a FIFO (or a symlink)
// is not ours: opening a FIFO would block Open for ever. It is set
// aside, unopened.
func TestSetsAsideWhatIsNotAFile(t *testing.T) {
	dir := t.TempDir()
	fifo := filepath.Join(dir, "0000000000000001-000001.msg")
	require.NoError(t, syscall.Mkfifo(fifo, 0o600))
	link := filepath.Join(dir, "0000000000000001-000002.msg")
	require.NoError(t, os.Symlink("/dev/null", link))
	opened := make(chan error, 1)
	go func() {
		s, err := Open(dir, nil)
		if err == nil {
			s.Close()
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
		t.Fatal("Open blocked opening a FIFO named like an email")
	}
	assert.FileExists(t, fifo+badSuffix)
	_, err := os.Lstat(link + badSuffix)
	assert.NoError(t, err)
}
