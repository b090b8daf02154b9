package testkit

import (
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/mxrelay/mxrelay"
	"github.com/mxrelay/mxrelay/internal/spoolcheck"
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
	return spoolcheck.Records[mxrelay.SpoolResult](t, dir)
}
