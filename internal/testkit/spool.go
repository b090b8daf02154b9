package testkit

import (
	"bufio"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/mxrelay/mxrelay"
)

// SpoolFiles lists the .msg files left in the spool dir.
func SpoolFiles(t testing.TB, dir string) []string {
	t.Helper()
	names, err := filepath.Glob(filepath.Join(dir, "*.msg"))
	require.NoError(t, err)
	return names
}

// SpoolResults reads every result record in the spool dir: results.log,
// then the journal's.
func SpoolResults(t testing.TB, dir string) []mxrelay.SpoolResult {
	t.Helper()
	var out []mxrelay.SpoolResult
	for _, name := range []string{"results.log", "journal"} {
		f, err := os.Open(filepath.Join(dir, name))
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		require.NoError(t, err)
		sc := bufio.NewScanner(f)
		sc.Buffer(nil, 1<<20)
		for sc.Scan() {
			line := sc.Text()
			if name == "journal" {
				var ok bool
				if line, ok = strings.CutPrefix(line, "R "); !ok {
					continue
				}
			}
			var r mxrelay.SpoolResult
			require.NoError(t, json.Unmarshal([]byte(line), &r), line)
			out = append(out, r)
		}
		f.Close()
	}
	return out
}
