// Command mxbench measures how many emails per second go through the
// mxrelay client, what it costs the client in CPU time and allocations,
// and what other SMTP clients achieve on the same links.
//
// In a child process (mxbench itself, run again with a hidden first
// argument) it starts a discarding SMTP server, relaytest in front of it
// with an injected round-trip time (RTT), and a TCP proxy with the same
// RTT; then, for each RTT, it sends emails from its own process through:
//
//	the floor: a minimal hand-written client that pipelines whole BDAT
//	    transactions, 256 at most unanswered, through the relay, and
//	    does nothing else: the reference for every other row;
//	(a) our client, binary frames, JSON frames, binary frames with a
//	    SpoolDir, and binary frames to an upstream that offers PIPELINING
//	    but not CHUNKING;
//	(b) go-smtp's Client, lock-step, through the same relay;
//	(c) go-smtp's Client, lock-step, over TCP to the same SMTP server;
//
// then our client with 1 to 4 concurrent sessions at one RTT, and one large
// message; then, in tables of their own: sequential Sends on a warm
// client (with and without Options.Linger), a burst against an upstream
// that throttles (with and without throttle feedback), emails the upstream
// defers enqueued ahead of good ones, and the adaptive pipeline window
// against FixedWindow at each RTT, and our client in 1 to 4 processes on one
// queue in PostgreSQL (child processes of mxbench, on a private cluster
// it starts) beside the memory store and a SpoolDir. -tables picks the
// tables. It prints a
// table: emails/s (median of the runs), latency
// percentiles, heap per queued email, the ratios of (a) to (b) and (c),
// and for every row its rate and its CPU time per email against the
// floor's, and its allocations per email. The servers being in the child,
// the CPU time (getrusage) and the allocations (runtime.MemStats) are the
// client's alone. Every run is checked (each email delivered at its first
// attempt, the server received exactly those messages); a row whose run
// failed shows the error, never a number (the rows that expect refusals
// check that each email was delivered or refused as the row expects, and
// that the server received exactly the delivered ones). It asserts
// nothing about speed.
// The child ends with the table, with a failed row, at ^C (after the rows
// in progress) and when mxbench panics or is killed (its standard input
// closes).
//
// Usage:
//
//	go run ./cmd/mxbench [flags]
//
// Run with -h for the flags.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/mxrelay/mxrelay/internal/bench"
)

func main() {
	bench.ServeIfChild()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	context.AfterFunc(ctx, stop) // a second ^C kills at once
	code := run(ctx, os.Args, os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// run is the command: it returns the exit status (0 all rows measured, 1 a
// row failed or ctx ended, 2 bad flags).
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	cfg, prof, err := parseFlags(args[1:], stderr)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintln(stderr, "mxbench:", err)
		return 2
	}
	stopProfiles, err := startProfiles(prof)
	if err != nil {
		fmt.Fprintln(stderr, "mxbench:", err)
		return 1
	}
	start := time.Now()
	rep, err := bench.Run(ctx, cfg, func(s string) { fmt.Fprintln(stderr, "mxbench:", s) })
	if perr := stopProfiles(); perr != nil {
		fmt.Fprintln(stderr, "mxbench:", perr)
		return 1
	}
	if ctx.Err() != nil {
		fmt.Fprintln(stderr, "mxbench: interrupted: no table")
		return 1
	}
	if err != nil {
		fmt.Fprintln(stderr, "mxbench:", err)
		return 1
	}
	printReport(stdout, rep, commandLine(args), time.Since(start))
	if rep.Failed() > 0 {
		return 1
	}
	return 0
}

func parseFlags(args []string, stderr io.Writer) (bench.Config, profiles, error) {
	var prof profiles
	cfg := bench.Config{
		RTTs:       []time.Duration{0, 2 * time.Millisecond, 10 * time.Millisecond, 50 * time.Millisecond},
		Sessions:   []int{1, 2, 3, 4},
		LargeSize:  100 << 20,
		Size:       1 << 10,
		PerSession: 1000,
		Tables:     bench.AllTables,
		PGProcs:    []int{1, 2, 3, 4},
	}
	fs := flag.NewFlagSet("mxbench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Var((*durations)(&cfg.RTTs), "rtt", "injected round-trip `times`, comma-separated (0 is no latency)")
	fs.IntVar(&cfg.N, "n", 2000, "emails per run of our client and of the floor, at most (see -budget)")
	fs.IntVar(&cfg.LockstepN, "lockstep-n", 20, "emails per run of go-smtp's lock-step Client, (b) and (c)")
	size := byteSize(cfg.Size)
	fs.Var(&size, "size", "message `size` (bytes, or with a KiB or MiB suffix)")
	fs.IntVar(&cfg.Rcpts, "rcpts", 1, "recipients per email")
	fs.IntVar(&cfg.Runs, "runs", 3, "runs per row; the table shows the median rate")
	fs.DurationVar(&cfg.Budget, "budget", time.Second, "longest a run of our client or the floor should take: a pilot estimates the rate and a run sends fewer than -n emails when -n would not fit (the table says how many); 0 always sends -n")
	fs.DurationVar(&cfg.ScaleRTT, "scale-rtt", 10*time.Millisecond, "RTT of the concurrent-sessions rows")
	fs.Var((*ints)(&cfg.Sessions), "sessions", "MaxConcurrentSessions `values` for the scaling rows, comma-separated (empty: none)")
	fs.IntVar(&cfg.Window, "window", 0, "our client's PipelineWindow (0: the client's default)")
	fs.IntVar(&cfg.PerSession, "per-session", cfg.PerSession, "our client's MaxEmailsPerSession")
	large := byteSize(cfg.LargeSize)
	fs.Var(&large, "large", "`size` of the large message, sent once at 0 RTT (like -size; 0: none)")
	fs.DurationVar(&cfg.Timeout, "timeout", 2*time.Minute, "bound on each run")
	fs.Var((*tables)(&cfg.Tables), "tables", "the `tables` to measure, comma-separated, of "+(*tables)(&bench.AllTables).String())
	fs.DurationVar(&cfg.FeatureRTT, "feature-rtt", 10*time.Millisecond, "RTT of the warm, throttle and deferred tables")
	fs.IntVar(&cfg.WarmSends, "warm-sends", 50, "Sends timed in each warm row, after a first one")
	fs.DurationVar(&cfg.WarmGap, "warm-gap", 200*time.Millisecond, "pause between two Sends of the warm rows")
	fs.IntVar(&cfg.ThrottleN, "throttle-n", 3000, "emails sent to the throttling upstream in each throttle row")
	fs.IntVar(&cfg.ThrottleLimit, "throttle-limit", 100, "emails a second the throttling upstream accepts")
	fs.IntVar(&cfg.DeferredN, "deferred-n", 30, "emails answered 450 in the deferred row, and good ones after them")
	fs.DurationVar(&cfg.RetryInterval, "retry-interval", 0, "our client's RetryInterval in the throttle and deferred rows (0: the client's default)")
	fs.Var((*ints)(&cfg.PGProcs), "pg-procs", "numbers of processes sharing one PostgreSQL queue, one row each, comma-separated (empty: no PostgreSQL table)")
	fs.IntVar(&cfg.PGN, "pg-n", 2000, "emails per run of the PostgreSQL table's rows, over all their processes")
	fs.DurationVar(&cfg.PGRTT, "pg-rtt", 10*time.Millisecond, "RTT of the PostgreSQL table")
	fs.StringVar(&prof.cpu, "cpuprofile", "", "write a CPU profile of this process (the clients, not the servers' child) to `file`")
	fs.StringVar(&prof.mem, "memprofile", "", "write an allocation profile of this process (the clients, not the servers' child) to `file`, at the end")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage: mxbench [flags]\n\n"+
			"Measures emails/s and the client's CPU time and allocations per email through\n"+
			"a minimal pipelined BDAT client (the floor), the mxrelay client (a), go-smtp\n"+
			"lock-step through the same relay (b) and go-smtp lock-step over TCP (c), at\n"+
			"injected round-trip times, on loopback, the servers in a child process, and\n"+
			"prints a table; then warm Sends, a throttling upstream, a deferred lane and\n"+
			"the adaptive window against FixedWindow, and processes sharing a PostgreSQL\n"+
			"queue, in tables of their own (-tables).\n"+
			"Asserts nothing about speed.\n\nFlags:\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return cfg, prof, err
	}
	if fs.NArg() > 0 {
		return cfg, prof, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	cfg.Size, cfg.LargeSize = int(size), int64(large)
	switch {
	case cfg.N < 1 || cfg.LockstepN < 1 || cfg.Runs < 1 || cfg.Rcpts < 1:
		return cfg, prof, errors.New("-n, -lockstep-n, -runs and -rcpts must be at least 1")
	case cfg.Size < bench.MinBodySize:
		return cfg, prof, fmt.Errorf("-size must be at least %d bytes", bench.MinBodySize)
	case cfg.LargeSize != 0 && cfg.LargeSize < int64(bench.MinBodySize):
		return cfg, prof, fmt.Errorf("-large must be 0 or at least %d bytes", bench.MinBodySize)
	case cfg.Timeout <= 0 || cfg.Budget < 0 || cfg.ScaleRTT < 0 || cfg.Window < 0 || cfg.PerSession < 1:
		return cfg, prof, errors.New("-timeout must be positive; -budget, -scale-rtt and -window not negative; -per-session at least 1")
	case cfg.FeatureRTT < 0 || cfg.WarmSends < 1 || cfg.WarmGap < 0 || cfg.ThrottleN < 1 || cfg.ThrottleLimit < 1 || cfg.DeferredN < 1 || cfg.RetryInterval < 0:
		return cfg, prof, errors.New("-warm-sends, -throttle-n, -throttle-limit and -deferred-n must be at least 1; -feature-rtt, -warm-gap and -retry-interval not negative")
	}
	for _, k := range cfg.Sessions {
		if k < 1 {
			return cfg, prof, errors.New("-sessions values must be at least 1")
		}
	}
	for _, k := range cfg.PGProcs {
		if k < 1 {
			return cfg, prof, errors.New("-pg-procs values must be at least 1")
		}
	}
	if cfg.PGN < 1 || cfg.PGRTT < 0 {
		return cfg, prof, errors.New("-pg-n must be at least 1, -pg-rtt not negative")
	}
	return cfg, prof, nil
}

// durations is a comma-separated list of durations; "0" is allowed.
type durations []time.Duration

func (d *durations) String() string {
	var s []string
	for _, x := range *d {
		s = append(s, x.String())
	}
	return strings.Join(s, ",")
}

func (d *durations) Set(v string) error {
	*d = nil
	for _, f := range strings.Split(v, ",") {
		x, err := time.ParseDuration(strings.TrimSpace(f))
		if err != nil || x < 0 {
			return fmt.Errorf("bad duration %q", f)
		}
		*d = append(*d, x)
	}
	return nil
}

// tables is a comma-separated list of table names; "" is none.
type tables []bench.Table

func (t *tables) String() string {
	var s []string
	for _, x := range *t {
		s = append(s, string(x))
	}
	return strings.Join(s, ",")
}

func (t *tables) Set(v string) error {
	*t = []bench.Table{} // not nil: nil is every table
	if strings.TrimSpace(v) == "" {
		return nil
	}
	for _, f := range strings.Split(v, ",") {
		x := bench.Table(strings.TrimSpace(f))
		if !slices.Contains(bench.AllTables, x) {
			return fmt.Errorf("unknown table %q", f)
		}
		*t = append(*t, x)
	}
	return nil
}

// ints is a comma-separated list of integers; "" is the empty list.
type ints []int

func (n *ints) String() string {
	var s []string
	for _, x := range *n {
		s = append(s, strconv.Itoa(x))
	}
	return strings.Join(s, ",")
}

func (n *ints) Set(v string) error {
	*n = nil
	if strings.TrimSpace(v) == "" {
		return nil
	}
	for _, f := range strings.Split(v, ",") {
		x, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil {
			return fmt.Errorf("bad number %q", f)
		}
		*n = append(*n, x)
	}
	return nil
}

// byteSize is a size in bytes, written plain or with a KiB or MiB suffix.
type byteSize int64

func (b *byteSize) String() string { return formatSize(int64(*b)) }

func (b *byteSize) Set(v string) error {
	mult := int64(1)
	num := v
	for suffix, m := range map[string]int64{"KiB": 1 << 10, "MiB": 1 << 20} {
		if s, ok := strings.CutSuffix(v, suffix); ok {
			num, mult = s, m
		}
	}
	x, err := strconv.ParseInt(num, 10, 64)
	if err != nil || x < 0 || x > (1<<40)/mult {
		return fmt.Errorf("bad size %q", v)
	}
	*b = byteSize(x * mult)
	return nil
}

func formatSize(n int64) string {
	switch {
	case n >= 1<<20 && n%(1<<20) == 0:
		return fmt.Sprintf("%dMiB", n>>20)
	case n >= 1<<10 && n%(1<<10) == 0:
		return fmt.Sprintf("%dKiB", n>>10)
	}
	return strconv.FormatInt(n, 10)
}

// commandLine is how the command was run, its path shortened to its name
// (go run builds it in a temporary directory).
func commandLine(args []string) string {
	parts := []string{filepath.Base(args[0])}
	for _, a := range args[1:] {
		if a == "" || strings.ContainsAny(a, " \t\"'\\$") {
			a = strconv.Quote(a)
		}
		parts = append(parts, a)
	}
	return strings.Join(parts, " ")
}

func machine() string {
	return fmt.Sprintf("%d CPUs (GOMAXPROCS %d), %s/%s, %s",
		runtime.NumCPU(), runtime.GOMAXPROCS(0), runtime.GOOS, runtime.GOARCH, runtime.Version())
}
