package spoolcheck

import (
	"bufio"
	"encoding/json"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// The files of a spool directory that hold result records (docs/spool.md):
// the results of compacted emails, and the journal, whose result lines
// start with "R ". The spool's own tests check that its names agree.
const (
	ResultsLog = "results.log"
	Journal    = "journal"
)

// Records reads every result record in the spool directory dir,
// ResultsLog's first, then Journal's, each decoded as a T: the spool's
// Record at the store's level, the root's SpoolResult at the Client's.
func Records[T any](t testing.TB, dir string) []T {
	t.Helper()
	var out []T
	for _, name := range []string{ResultsLog, Journal} {
		f, err := os.Open(filepath.Join(dir, name))
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		require.NoError(t, err)
		sc := bufio.NewScanner(f)
		sc.Buffer(nil, 1<<20)
		for sc.Scan() {
			line := sc.Text()
			if name == Journal {
				var ok bool
				if line, ok = strings.CutPrefix(line, "R "); !ok {
					continue
				}
			}
			var r T
			require.NoError(t, json.Unmarshal([]byte(line), &r), line)
			out = append(out, r)
		}
		f.Close()
	}
	return out
}
