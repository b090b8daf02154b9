package main

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/mxrelay/mxrelay/internal/bench"
)

func TestMain(m *testing.M) {
	bench.ServeIfChild() // the rows' servers run in this test binary, as in mxbench
	goleak.VerifyTestMain(m)
}

// TestTinyRun runs the whole command with tiny parameters: every row is
// there, with figures, and nothing failed.
func TestTinyRun(t *testing.T) {
	var out, errOut bytes.Buffer
	args := []string{"/tmp/go-build/mxbench", "-rtt", "0", "-n", "20", "-lockstep-n", "5", "-runs", "1",
		"-sessions", "1,2", "-scale-rtt", "0", "-large", "1MiB",
		"-feature-rtt", "2ms", "-warm-sends", "2", "-warm-gap", "5ms", "-throttle-n", "20", "-throttle-limit", "10",
		"-deferred-n", "2", "-retry-interval", "20ms", "-pg-n", "8", "-pg-procs", "1,2", "-pg-rtt", "2ms"}
	code := run(context.Background(), args, &out, &errOut)
	require.Equal(t, 0, code, "stdout:\n%s\nstderr:\n%s", &out, &errOut)
	s := out.String()
	assert.Contains(t, s, "command: mxbench -rtt 0 -n 20 -lockstep-n 5 -runs 1 -sessions 1,2 -scale-rtt 0 -large 1MiB "+
		"-feature-rtt 2ms -warm-sends 2 -warm-gap 5ms -throttle-n 20 -throttle-limit 10 -deferred-n 2 -retry-interval 20ms "+
		"-pg-n 8 -pg-procs 1,2 -pg-rtt 2ms\n")
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
	// Every row has the client's usage per email and its ratios to the floor.
	assert.Regexp(t, `0s +floor: pipelined BDAT, window 256 +20×1 +`+number+`.* 1\.00× +`+number+` µs +1\.00× +`+number+` +`+number+` B\n`, s)
	for _, row := range []string{`\(a\) ours, binary`, `\(a\) ours, JSON`, `\(a\) ours, binary, upstream without CHUNKING`,
		`\(b\) go-smtp lock-step via relay`, `\(c\) go-smtp lock-step, TCP`} {
		assert.Regexp(t, row+` +\d+×1 .* `+number+`× +`+number+` µs +`+number+`× +`+number+` +`+number+` B\n`, s)
	}
	// The tables of warm Sends, the throttling upstream, the deferred lane
	// and the adaptive window, each row with its figures.
	for _, row := range []string{
		`\nwarm Sends: 1 \+ 2 Sends one after another, 5ms between them, at 2ms RTT\n`,
		`\nLinger 10s, MaxEmailsPerSession 1000 +` + number + `m?s +` + number + `m?s +` + number + ` +` + number + ` +1 +1\n`,
		`\nLinger 10s, MaxEmailsPerSession 10 +` + number + `m?s +` + number + `m?s +` + number + ` +` + number + ` +1 +1\n`,
		`\nno Linger, MaxEmailsPerSession 1000 +` + number + `m?s +` + number + `m?s +` + number + ` +` + number + ` +3 +3\n`,
		`\nthrottling upstream: 20 emails at once; it accepts 10 a second`,
		`\nthrottle feedback \(default\) +\d+ +` + number + `m?s +` + number + ` +` + number + `× +\d+ +` + number + `% +\d+ +\d+\n`,
		`\nThrottle.Disable +\d+ +` + number + `m?s +` + number + ` +` + number + `× +\d+ +` + number + `% +0 +\d+\n`,
		`\ndeferred lane: 2 emails whose recipient is answered 450, then 2 good ones`,
		`\ndefault options +` + number + `m?s +` + number + `m?s +` + number + `m?s +4\n`,
		`\n0s +\(a\) ours, binary, adaptive window up to 256 \(default\) +20×1 +` + number + `.* ` + number + ` +` + number + `× +` + number + ` µs +` + number + `\n`,
		`\n0s +\(a\) ours, binary, FixedWindow 256 +20×1 +` + number + `.* ` + number + ` +- +` + number + ` µs +` + number + `\n`,
	} {
		assert.Regexp(t, regexp.MustCompile(row), s)
	}
	// The PostgreSQL table: memory and SpoolDir with their Enqueue
	// latencies, then each count of processes with its round trips, or,
	// where PostgreSQL is not installed (never under
	// MXRELAY_REQUIRE_INTEROP=1, as in CI), a row that says so.
	ms := number + `m?s`
	assert.Contains(t, s, "\nprocesses on one queue in PostgreSQL (pgstore), 8 emails a run over all of them, at 2ms RTT; memory and SpoolDir beside them\n")
	assert.Regexp(t, `\nmemory, 1 process +8×1 +`+number+` +1\.00× +`+ms+` +`+ms+` +`+ms+` +`+ms+` +-\n`, s)
	assert.Regexp(t, `\nSpoolDir, 1 process +8×1 +`+number+` +`+number+`× +`+ms+` +`+ms+` +`+ms+` +`+ms+` +-\n`, s)
	if os.Getenv("MXRELAY_REQUIRE_INTEROP") == "1" {
		assert.NotContains(t, s, "not measured:")
	}
	for _, procs := range []string{"1 process", "2 processes"} {
		assert.Regexp(t, `\nPostgreSQL, `+procs+` +(8×1 +`+number+` +`+number+`× +`+ms+` +`+ms+` +`+ms+` +`+ms+` +`+number+`|not measured: .*PostgreSQL is not installed.*)\n`, s)
	}
	assert.Empty(t, children(t), "the servers' processes are gone")
}

// TestSomeTables: -tables measures only the tables it names.
func TestSomeTables(t *testing.T) {
	var out, errOut bytes.Buffer
	args := []string{"mxbench", "-tables", "deferred", "-deferred-n", "1", "-retry-interval", "10ms", "-feature-rtt", "0"}
	require.Equal(t, 0, run(context.Background(), args, &out, &errOut), "stderr:\n%s", &errOut)
	s := out.String()
	assert.Contains(t, s, "\ndeferred lane: 1 emails")
	for _, other := range []string{"floor:", "by MaxConcurrentSessions", "large message:", "warm Sends:", "throttling upstream:", "adaptive window against", "in PostgreSQL"} {
		assert.NotContains(t, s, other)
	}
}

// TestProfiles: -cpuprofile and -memprofile write profiles of the run
// (gzipped protocol buffers, as runtime/pprof writes them), and a file
// that cannot be created fails the run before any row.
func TestProfiles(t *testing.T) {
	dir := t.TempDir()
	cpu, mem := filepath.Join(dir, "cpu.pprof"), filepath.Join(dir, "mem.pprof")
	var out, errOut bytes.Buffer
	args := []string{"mxbench", "-tables", "deferred", "-deferred-n", "1", "-retry-interval", "10ms", "-feature-rtt", "0",
		"-cpuprofile", cpu, "-memprofile", mem}
	require.Equal(t, 0, run(context.Background(), args, &out, &errOut), "stderr:\n%s", &errOut)
	for _, f := range []string{cpu, mem} {
		b, err := os.ReadFile(f)
		require.NoError(t, err)
		require.Greater(t, len(b), 2, f)
		assert.Equal(t, []byte{0x1f, 0x8b}, b[:2], "%s is gzipped", f)
	}
	errOut.Reset()
	args = []string{"mxbench", "-tables", "deferred", "-cpuprofile", filepath.Join(dir, "missing", "cpu.pprof")}
	assert.Equal(t, 1, run(context.Background(), args, &out, &errOut))
	assert.Contains(t, errOut.String(), "mxbench: cpu profile:")
	assert.NotContains(t, errOut.String(), "deferred lane", "no row ran")
}

// children lists the processes whose parent is this one, from /proc
// (skipping the test where there is none).
func children(t *testing.T) []string {
	t.Helper()
	stats, err := filepath.Glob("/proc/[0-9]*/stat")
	if err != nil || len(stats) == 0 {
		t.Skip("no /proc to list child processes")
	}
	var kids []string
	for _, f := range stats {
		b, err := os.ReadFile(f)
		if err != nil {
			continue // it ended meanwhile
		}
		// pid (comm) state ppid ...: comm may hold spaces and parentheses.
		_, rest, ok := strings.Cut(string(b), ") ")
		fields := strings.Fields(rest)
		if !ok || len(fields) < 2 {
			continue
		}
		if ppid, _ := strconv.Atoi(fields[1]); ppid == os.Getpid() {
			kids = append(kids, string(b))
		}
	}
	return kids
}

// cancelOnWrite is stderr that cancels the run at its first line, as ^C
// does through signal.NotifyContext.
type cancelOnWrite struct {
	bytes.Buffer
	cancel func()
}

func (w *cancelOnWrite) Write(p []byte) (int, error) {
	w.cancel()
	return w.Buffer.Write(p)
}

// TestInterrupted: a run whose context ends (^C) stops after the rows in
// progress, prints no table, and leaves no process of its servers behind.
func TestInterrupted(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var out bytes.Buffer
	errOut := &cancelOnWrite{cancel: cancel}
	args := []string{"mxbench", "-rtt", "0,2ms", "-n", "20", "-lockstep-n", "2", "-runs", "1", "-sessions", "", "-large", "0"}
	assert.Equal(t, 1, run(ctx, args, &out, errOut))
	assert.Contains(t, errOut.String(), "mxbench: interrupted: no table")
	assert.NotContains(t, errOut.String(), "2ms floor", "no row after the interruption")
	assert.Empty(t, out.String())
	assert.Empty(t, children(t), "the servers' processes are gone")
}

func TestFlags(t *testing.T) {
	var out, errOut bytes.Buffer
	assert.Equal(t, 0, run(context.Background(), []string{"mxbench", "-h"}, &out, &errOut))
	for _, f := range []string{"-rtt", "-n", "-lockstep-n", "-size", "-runs", "-budget", "-sessions", "-large",
		"-tables", "-cpuprofile", "-memprofile", "-feature-rtt", "-warm-sends", "-warm-gap", "-throttle-n", "-throttle-limit", "-deferred-n", "-retry-interval", "-pg-procs", "-pg-n", "-pg-rtt"} {
		assert.Contains(t, errOut.String(), "  "+f+" ")
	}
	for _, args := range [][]string{
		{"-rtt", "10xs"}, {"-n", "0"}, {"-size", "10"}, {"-sessions", "0"}, {"-large", "12GB"}, {"extra"},
		{"-tables", "main,fast"}, {"-warm-sends", "0"}, {"-throttle-limit", "0"}, {"-deferred-n", "0"}, {"-retry-interval", "-1s"},
		{"-pg-procs", "0"}, {"-pg-n", "0"}, {"-pg-rtt", "-1ms"},
	} {
		errOut.Reset()
		assert.Equal(t, 2, run(context.Background(), append([]string{"mxbench"}, args...), &out, &errOut), "%v", args)
		assert.NotEmpty(t, errOut.String())
	}
	cfg, _, err := parseFlags([]string{"-rtt", "0,5ms", "-size", "4KiB", "-large", "0", "-sessions", ""}, &errOut)
	require.NoError(t, err)
	assert.Equal(t, bench.AllTables, cfg.Tables)
	assert.Equal(t, 10*time.Millisecond, cfg.FeatureRTT)
	assert.Equal(t, 3000, cfg.ThrottleN)
	assert.Equal(t, []time.Duration{0, 5 * time.Millisecond}, cfg.RTTs)
	assert.Equal(t, 4096, cfg.Size)
	assert.Zero(t, cfg.LargeSize)
	assert.Empty(t, cfg.Sessions)
	cfg, _, err = parseFlags([]string{"-tables", "warm, window"}, &errOut)
	require.NoError(t, err)
	assert.Equal(t, []bench.Table{bench.TableWarm, bench.TableWindow}, cfg.Tables)
	cfg, _, err = parseFlags([]string{"-tables", ""}, &errOut)
	require.NoError(t, err)
	assert.NotNil(t, cfg.Tables, "no table, not every table")
	assert.Empty(t, cfg.Tables)
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
		Large:    []bench.LargeRow{{Label: "go-smtp, TCP", Err: errors.New("sink full")}},
		Warm:     []bench.WarmRow{{Label: "no Linger", Err: errors.New("cold")}},
		Throttle: []bench.ThrottleRow{{Label: "Throttle.Disable", Err: errors.New("hammered")}},
		Deferred: []bench.DeferredRow{{Label: "default options", Err: errors.New("stuck")}},
		Window: []bench.Row{
			{Label: "(a) ours, binary, adaptive window", Path: bench.OursBinary, N: 100, Samples: make([]bench.Sample, 3), Rate: 900, InFlight: 40},
			{Label: "(a) ours, binary, FixedWindow 256", Path: bench.OursFixedWindow, Err: errors.New("window shut")},
		},
		Postgres: []bench.PGRow{
			{Label: "memory, 1 process", Store: "memory", Procs: 1, N: 100, Runs: 3, Rate: 1000, RoundTrips: -1},
			{Label: "PostgreSQL, 1 process", Store: "PostgreSQL", Procs: 1, Err: errors.New("PostgreSQL is not installed"), Missing: true},
			{Label: "PostgreSQL, 2 processes", Store: "PostgreSQL", Procs: 2, Err: errors.New("pool drained")},
			{Label: "PostgreSQL, 3 processes", Store: "PostgreSQL", Procs: 3, N: 100, Runs: 3, Rate: 500, RoundTrips: 11.5,
				EnqueueP50: 1500 * time.Microsecond, EnqueueP99: 7 * time.Millisecond, P50: 20 * time.Millisecond, P99: 60 * time.Millisecond},
		},
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
	assert.Regexp(t, `no Linger +FAILED \[3\]( +-){5}$`, find("no Linger"))
	assert.Regexp(t, `Throttle.Disable +FAILED \[4\]( +-){7}$`, find("Throttle.Disable"))
	assert.Regexp(t, `default options +FAILED \[5\]( +-){3}$`, find("default options"))
	assert.Regexp(t, `adaptive window +100×3 +900 .* 40 +- `, find("ours, binary, adaptive window"), "no ratio to a failed row")
	assert.Regexp(t, `FixedWindow 256 +- +FAILED \[6\]( +-){6}$`, find("FixedWindow 256"))
	assert.Regexp(t, `PostgreSQL, 1 process +not measured: PostgreSQL is not installed$`, find("PostgreSQL, 1 process"), "not a failure")
	assert.Regexp(t, `PostgreSQL, 2 processes +FAILED \[7\]( +-){7}$`, find("PostgreSQL, 2 processes"))
	assert.Regexp(t, `PostgreSQL, 3 processes +100×3 +500 +0\.50× +1\.50ms +7\.00ms +20\.0ms +60\.0ms +11\.50$`, find("PostgreSQL, 3 processes"))
	assert.Regexp(t, `memory, 1 process +100×3 +1000 +1\.00× .* -$`, find("memory, 1 process"))
	assert.Contains(t, out.String(), "failures:\n  [1] relay went away\n  [2] sink full\n  [3] cold\n  [4] hammered\n  [5] stuck\n  [6] window shut\n  [7] pool drained\n")
	assert.Equal(t, 7, rep.Failed(), "a row not measured for want of PostgreSQL is no failure")
}
