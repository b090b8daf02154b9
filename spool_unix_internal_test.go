//go:build unix

package mxrelay

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/stretchr/testify/require"
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
