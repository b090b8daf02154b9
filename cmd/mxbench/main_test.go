package main

import (
	"bytes"
	"context"
	"errors"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/mxrelay/mxrelay/internal/bench"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// TestTinyRun runs the whole command with tiny parameters: every row is
// there, with figures, and nothing failed.
func TestTinyRun(t *testing.T) {
	var out, errOut bytes.Buffer
	args := []string{"/tmp/go-build/mxbench", "-rtt", "0", "-n", "20", "-lockstep-n", "5", "-runs", "1",
		"-sessions", "1,2", "-scale-rtt", "0", "-large", "1MiB"}
	code := run(context.Background(), args, &out, &errOut)
	require.Equal(t, 0, code, "stdout:\n%s\nstderr:\n%s", &out, &errOut)
	s := out.String()
	assert.Contains(t, s, "command: mxbench -rtt 0 -n 20 -lockstep-n 5 -runs 1 -sessions 1,2 -scale-rtt 0 -large 1MiB\n")
	assert.Regexp(t, `machine: \d+ CPUs \(GOMAXPROCS \d+\), \w+/\w+, go`, s)
	assert.NotContains(t, s, "FAILED [")
	assert.NotContains(t, s, "failures:")
	number := `[0-9.]+`
	for _, row := range []string{
		`0s +\(a\) ours, binary +20×1 +` + number,
		`0s +\(a\) ours, JSON +20×1 +` + number,
		`0s +\(a\) ours, binary, upstream without CHUNKING +20×1 +` + number,
		`0s +\(b\) go-smtp lock-step via relay +5×1 +` + number,
		`0s \* +\(c\) go-smtp lock-step, TCP +5×1 +` + number,
		`\n1 +20×1 +` + number + `.* 1\.00×\n`,
		`\n2 +20×1 +` + number,
		`\(a\) ours, binary, via relay +` + number + `m?s +` + number + ` +` + number + ` MiB`,
		`go-smtp, TCP +` + number + `m?s +` + number + ` +` + number + ` MiB`,
	} {
		assert.Regexp(t, regexp.MustCompile(row), s)
	}
	// Each (a) row has its heap per email and both ratios.
	assert.Regexp(t, `\(a\) ours, JSON +20×1 +\S+ +\S+ +\S+ +\d+ B +[0-9.]+× +[0-9.]+×`, s)
	assert.Contains(t, errOut.String(), "mxbench: large message, go-smtp, TCP:")
}

func TestFlags(t *testing.T) {
	var out, errOut bytes.Buffer
	assert.Equal(t, 0, run(context.Background(), []string{"mxbench", "-h"}, &out, &errOut))
	for _, f := range []string{"-rtt", "-n", "-lockstep-n", "-size", "-runs", "-budget", "-sessions", "-large"} {
		assert.Contains(t, errOut.String(), "  "+f+" ")
	}
	for _, args := range [][]string{
		{"-rtt", "10xs"}, {"-n", "0"}, {"-size", "10"}, {"-sessions", "0"}, {"-large", "12GB"}, {"extra"},
	} {
		errOut.Reset()
		assert.Equal(t, 2, run(context.Background(), append([]string{"mxbench"}, args...), &out, &errOut), "%v", args)
		assert.NotEmpty(t, errOut.String())
	}
	cfg, err := parseFlags([]string{"-rtt", "0,5ms", "-size", "4KiB", "-large", "0", "-sessions", ""}, &errOut)
	require.NoError(t, err)
	assert.Equal(t, []time.Duration{0, 5 * time.Millisecond}, cfg.RTTs)
	assert.Equal(t, 4096, cfg.Size)
	assert.Zero(t, cfg.LargeSize)
	assert.Empty(t, cfg.Sessions)
}

// TestFailedRowShowsNoFigure: a failed row prints its error, never a
// number, and the ratios that depend on it are left out.
func TestFailedRowShowsNoFigure(t *testing.T) {
	rep := &bench.Report{
		Config: bench.Config{Size: 1024, Rcpts: 1, Runs: 3, N: 100, LockstepN: 10, ScaleRTT: 0, LargeSize: 1 << 20},
		Rows: []bench.Row{
			{Label: "(a) ours, binary", Path: bench.OursBinary, N: 100, Samples: make([]bench.Sample, 3), Rate: 1234, HeapPerEmail: 500},
			{Label: "(b) go-smtp lock-step via relay", Path: bench.LockstepRelay, Err: errors.New("relay went away")},
			{Label: "(c) go-smtp lock-step, TCP", Path: bench.LockstepDirect, N: 10, Samples: make([]bench.Sample, 3), Rate: 617},
		},
		Large: []bench.LargeRow{{Label: "go-smtp, TCP", Err: errors.New("sink full")}},
	}
	var out bytes.Buffer
	printReport(&out, rep, "mxbench", time.Second)
	lines := strings.Split(out.String(), "\n")
	find := func(prefix string) string {
		for _, l := range lines {
			if strings.Contains(l, prefix) {
				return l
			}
		}
		t.Fatalf("no line with %q in\n%s", prefix, out.String())
		return ""
	}
	assert.Regexp(t, `\(a\) ours, binary +100×3 +1234 .* 500 B +- +2\.0×`, find("(a) ours, binary"))
	assert.Regexp(t, `\(b\) go-smtp lock-step via relay +- +FAILED \[1\]( +-)+ *$`, find("(b) go-smtp"))
	assert.Regexp(t, `go-smtp, TCP +FAILED \[2\] +- +-`, find("go-smtp, TCP "))
	assert.Contains(t, out.String(), "failures:\n  [1] relay went away\n  [2] sink full\n")
}
