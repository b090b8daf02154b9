package bench

import (
	"context"
	"fmt"
	"math"
	"os"
	"runtime"
	"slices"
	"time"
)

// Config is a whole benchmark: what cmd/mxbench runs.
type Config struct {
	RTTs []time.Duration // injected round-trip times
	// N is the emails per run of our client, at most: see Budget.
	N int
	// LockstepN is the emails per run of go-smtp's lock-step Client.
	LockstepN int
	Size      int // message size in octets
	Rcpts     int // recipients per email
	Runs      int // runs per row; the row shows their median rate
	// Budget is how long one run of our client should take at most. A
	// pilot (bursts of 4, 16, 64 ... emails until one takes Budget/2)
	// estimates the rate; when N emails would take longer, a run sends as
	// many as fit. Zero: always N.
	Budget     time.Duration
	ScaleRTT   time.Duration // RTT of the MaxConcurrentSessions rows
	Sessions   []int         // MaxConcurrentSessions of those rows
	Window     int           // Options.PipelineWindow; zero: the default
	PerSession int           // Options.MaxEmailsPerSession; zero: 1000
	LargeSize  int64         // the large message; zero: none
	Timeout    time.Duration // bound on each run
	// Tables are the tables to measure; nil: every one (AllTables).
	Tables []Table
	// FeatureRTT is the RTT of the warm-Sends, throttling-upstream and
	// deferred-lane tables.
	FeatureRTT time.Duration
	// WarmSends is how many Sends the warm-Sends rows time, after a first
	// one that opens the session (zero: no such table); WarmGap is the
	// pause between the end of a Send and the next.
	WarmSends int
	WarmGap   time.Duration
	// ThrottleN emails go to an upstream that accepts ThrottleLimit a
	// second and answers the rest 451 4.7.0 (zero: no such table).
	ThrottleN, ThrottleLimit int
	// DeferredN emails whose recipient is answered 450 are enqueued before
	// DeferredN good ones (zero: no such table).
	DeferredN int
	// RetryInterval is Options.RetryInterval in the throttling and
	// deferred-lane rows; zero: the client's default (1s).
	RetryInterval time.Duration
	// PGProcs are the numbers of processes of the PostgreSQL table's rows
	// (zero: no such table), PGN the emails of each run over all of them,
	// PGRTT their RTT.
	PGProcs []int
	PGN     int
	PGRTT   time.Duration
	// Start starts the servers of each Env. Nil: StartEnvFor with the
	// running program, which must then call ServeIfChild, so that the
	// figures of this process are the client's alone.
	Start func(Setup) (*Env, error)
}

// Table names one table of the report.
type Table string

// The tables, in the order Run measures them.
const (
	TableMain     Table = "main"     // the floor, (a), (b) and (c) at each RTT
	TableSessions Table = "sessions" // (a) by MaxConcurrentSessions
	TableLarge    Table = "large"    // the large message
	TableWarm     Table = "warm"     // sequential Sends on a warm client
	TableThrottle Table = "throttle" // an upstream that limits its senders
	TableDeferred Table = "deferred" // emails deferred by the upstream ahead of good ones
	TableWindow   Table = "window"   // the adaptive window against FixedWindow
	TablePostgres Table = "postgres" // processes on one queue in PostgreSQL, beside memory and SpoolDir
)

// AllTables are every table, in the order Run measures them.
var AllTables = []Table{TableMain, TableSessions, TableLarge, TableWarm, TableThrottle, TableDeferred, TableWindow, TablePostgres}

// wants reports whether the report is to have table t.
func (c Config) wants(t Table) bool { return c.Tables == nil || slices.Contains(c.Tables, t) }

// Path is a way of sending.
type Path int

const (
	OursBinary         Path = iota // (a) our client, binary frames
	OursJSON                       // (a) our client, JSON text frames
	OursPipeliningOnly             // (a) binary, to an upstream without CHUNKING
	OursSpool                      // (a) binary, with a SpoolDir
	LockstepRelay                  // (b) go-smtp's Client through the relay (binary frames)
	LockstepDirect                 // (c) go-smtp's Client over TCP to the sink
	Floor                          // the floor (RunFloor) through the relay (binary frames)
	OursFixedWindow                // (a) binary, Options.FixedWindow: the window does not adapt
)

// Ours reports whether p is our client.
func (p Path) Ours() bool { return p <= OursSpool || p == OursFixedWindow }

// Row is one line of the table: a path at an RTT, measured Runs times.
type Row struct {
	RTT      time.Duration
	Path     Path
	Sessions int // our client's MaxConcurrentSessions; 0: the default
	Label    string
	N        int // emails per run
	Samples  []Sample
	Rate     float64       // median emails/s
	P50, P99 time.Duration // over the emails of all runs
	// HeapPerEmail is our client's heap per queued email (QueueHeap).
	HeapPerEmail float64
	// CPUPerEmail, AllocsPerEmail and BytesPerEmail are the medians over
	// the runs of Usage per email: this process's CPU time (negative where
	// it is not measured), heap objects and heap bytes allocated.
	CPUPerEmail    time.Duration
	AllocsPerEmail float64
	BytesPerEmail  float64
	// InFlight is the median over the runs of Sample.InFlight (our client
	// only).
	InFlight float64
	Err      error // the row failed: no figure of it holds
}

// LargeRow is the large message through one path.
type LargeRow struct {
	Label string
	Large
	Err error
}

// Report is what Run measured.
type Report struct {
	Config   Config
	Rows     []Row // per RTT: the floor, the (a) rows, then (b) and (c)
	Scaling  []Row // our client at ScaleRTT, per MaxConcurrentSessions
	Large    []LargeRow
	Warm     []WarmRow
	Throttle []ThrottleRow
	Deferred []DeferredRow
	// Window is, per RTT, our client with the adaptive window (OursBinary)
	// then with FixedWindow (OursFixedWindow).
	Window []Row
	// Postgres is memory, SpoolDir, then PostgreSQL in each of
	// Config.PGProcs processes.
	Postgres []PGRow
}

// Failed counts the rows that failed.
func (r *Report) Failed() int {
	var errs []error
	for _, row := range slices.Concat(r.Rows, r.Scaling, r.Window) {
		errs = append(errs, row.Err)
	}
	for _, l := range r.Large {
		errs = append(errs, l.Err)
	}
	for _, w := range r.Warm {
		errs = append(errs, w.Err)
	}
	for _, t := range r.Throttle {
		errs = append(errs, t.Err)
	}
	for _, d := range r.Deferred {
		errs = append(errs, d.Err)
	}
	for _, p := range r.Postgres {
		if !p.Missing {
			errs = append(errs, p.Err)
		}
	}
	n := 0
	for _, err := range errs {
		if err != nil {
			n++
		}
	}
	return n
}

// Ratio is row's rate over the rate of the baseline path at the same RTT,
// and false when either is missing or failed.
func (r *Report) Ratio(row Row, baseline Path) (float64, bool) {
	return r.ratio(row, baseline, func(x Row) float64 { return x.Rate })
}

// CPURatio is row's CPU time per email over the baseline path's at the
// same RTT, and false when either is missing, failed or not measured.
func (r *Report) CPURatio(row Row, baseline Path) (float64, bool) {
	if row.CPUPerEmail <= 0 {
		return 0, false
	}
	return r.ratio(row, baseline, func(x Row) float64 { return float64(x.CPUPerEmail) })
}

// WindowRatio is a Window row's rate over the rate of FixedWindow at the
// same RTT, and false when either is missing or failed.
func (r *Report) WindowRatio(row Row) (float64, bool) {
	return ratioIn(r.Window, row, OursFixedWindow, func(x Row) float64 { return x.Rate })
}

// ratio is figure(row) over figure of the baseline path's row at the same
// RTT, when neither failed and the baseline's figure is positive.
func (r *Report) ratio(row Row, baseline Path, figure func(Row) float64) (float64, bool) {
	return ratioIn(r.Rows, row, baseline, figure)
}

// ratioIn is ratio among rows.
func ratioIn(rows []Row, row Row, baseline Path, figure func(Row) float64) (float64, bool) {
	if row.Err != nil {
		return 0, false
	}
	for _, b := range rows {
		if b.Path == baseline && b.RTT == row.RTT && b.Err == nil && figure(b) > 0 {
			return figure(row) / figure(b), true
		}
	}
	return 0, false
}

// Run measures everything cfg asks for, row after row, and calls progress
// with each finished row's summary, and with anything wrong in stopping
// an Env's servers. A failed row has its Err set and the next rows still
// run. When ctx ends, Run stops after the row in progress, which fails,
// and returns ctx's error. Every Env it started is closed (its child
// process ended and reaped) when it returns or panics.
func Run(ctx context.Context, cfg Config, progress func(string)) (*Report, error) {
	m, err := NewMail(cfg.Size, cfg.Rcpts)
	if err != nil {
		return nil, err
	}
	start := cfg.Start
	if start == nil {
		exe, err := os.Executable()
		if err != nil {
			return nil, fmt.Errorf("bench: finding this program to run its servers: %w", err)
		}
		start = func(s Setup) (*Env, error) { return StartEnvFor(exe, s) }
	}
	withEnv := func(s Setup, f func(*Env)) error {
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("bench: %w", err)
		}
		e, err := start(s)
		if err != nil {
			return err
		}
		defer func() {
			if err := e.close(); err != nil {
				progress(err.Error())
			}
		}()
		f(e)
		return nil
	}
	rep := &Report{Config: cfg}
	add := func(rows *[]Row, measure func() Row) { addRow(ctx, rows, progress, measure) }
	var tables []func() error
	if cfg.wants(TableMain) {
		for _, rtt := range cfg.RTTs {
			tables = append(tables, func() error {
				return withEnv(Setup{RTT: rtt}, func(e *Env) {
					add(&rep.Rows, func() Row { return floorRow(ctx, cfg, e, m) })
					add(&rep.Rows, func() Row { return oursRow(ctx, cfg, e, OursBinary, 0, m) })
					add(&rep.Rows, func() Row { return oursRow(ctx, cfg, e, OursJSON, 0, m) })
					add(&rep.Rows, func() Row { return oursRow(ctx, cfg, e, OursSpool, 0, m) })
				})
			}, func() error {
				return withEnv(Setup{RTT: rtt, Upstream: PipeliningOnly}, func(e *Env) {
					add(&rep.Rows, func() Row { return oursRow(ctx, cfg, e, OursPipeliningOnly, 0, m) })
				})
			}, func() error {
				return withEnv(Setup{RTT: rtt}, func(e *Env) {
					add(&rep.Rows, func() Row { return lockstepRow(ctx, cfg, e, LockstepRelay, m) })
					add(&rep.Rows, func() Row { return lockstepRow(ctx, cfg, e, LockstepDirect, m) })
				})
			})
		}
	}
	if cfg.wants(TableSessions) && len(cfg.Sessions) > 0 {
		tables = append(tables, func() error {
			return withEnv(Setup{RTT: cfg.ScaleRTT}, func(e *Env) {
				for _, k := range cfg.Sessions {
					add(&rep.Scaling, func() Row { return oursRow(ctx, cfg, e, OursBinary, k, m) })
				}
			})
		})
	}
	if cfg.wants(TableLarge) && cfg.LargeSize > 0 {
		tables = append(tables, func() error {
			return withEnv(Setup{}, func(e *Env) {
				rep.Large = largeRows(ctx, cfg, e, m)
				for _, l := range rep.Large {
					progress(l.summary())
				}
			})
		})
	}
	if cfg.wants(TableWarm) && cfg.WarmSends > 0 {
		tables = append(tables, func() error {
			return withEnv(Setup{RTT: cfg.FeatureRTT}, func(e *Env) {
				for _, v := range warmVariants(cfg) {
					addRow(ctx, &rep.Warm, progress, func() WarmRow { return warmRow(ctx, cfg, e, v, m) })
				}
			})
		})
	}
	if cfg.wants(TableThrottle) && cfg.ThrottleN > 0 {
		tables = append(tables, func() error {
			return withEnv(throttleSetup(cfg), func(e *Env) {
				for _, disable := range []bool{false, true} {
					addRow(ctx, &rep.Throttle, progress, func() ThrottleRow { return throttleRow(ctx, cfg, e, disable, m) })
				}
			})
		})
	}
	if cfg.wants(TableDeferred) && cfg.DeferredN > 0 {
		tables = append(tables, func() error {
			return withEnv(deferredSetup(cfg), func(e *Env) {
				addRow(ctx, &rep.Deferred, progress, func() DeferredRow { return deferredRow(ctx, cfg, e, m) })
			})
		})
	}
	if cfg.wants(TableWindow) {
		for _, rtt := range cfg.RTTs {
			tables = append(tables, func() error {
				return withEnv(Setup{RTT: rtt}, func(e *Env) {
					rows := windowRows(ctx, cfg, e, m)
					rep.Window = append(rep.Window, rows...)
					for _, row := range rows {
						progress(row.summary())
					}
				})
			})
		}
	}
	if cfg.wants(TablePostgres) && len(cfg.PGProcs) > 0 {
		tables = append(tables, func() error {
			exe, err := os.Executable()
			if err != nil {
				return fmt.Errorf("bench: finding this program to run the senders: %w", err)
			}
			return withEnv(Setup{RTT: cfg.PGRTT}, func(e *Env) {
				rep.Postgres = pgRows(ctx, cfg, e, m, exe, progress)
			})
		})
	}
	for _, table := range tables {
		if err := table(); err != nil {
			return nil, err
		}
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("bench: %w", err)
	}
	return rep, nil
}

// addRow measures a row, unless ctx has ended, appends it to rows and
// calls progress with its summary.
func addRow[R interface{ summary() string }](ctx context.Context, rows *[]R, progress func(string), measure func() R) {
	if ctx.Err() != nil {
		return
	}
	row := measure()
	*rows = append(*rows, row)
	progress(row.summary())
}

func label(p Path, sessions int) string {
	s := [...]string{
		OursBinary:         "(a) ours, binary",
		OursJSON:           "(a) ours, JSON",
		OursPipeliningOnly: "(a) ours, binary, upstream without CHUNKING",
		OursSpool:          "(a) ours, binary, SpoolDir (one Enqueue at a time)",
		LockstepRelay:      "(b) go-smtp lock-step via relay",
		LockstepDirect:     "(c) go-smtp lock-step, TCP",
		Floor:              fmt.Sprintf("floor: pipelined BDAT, window %d", FloorWindow),
		OursFixedWindow:    "(a) ours, binary, FixedWindow",
	}[p]
	if sessions > 0 {
		s += fmt.Sprintf(", %d session", sessions)
		if sessions > 1 {
			s += "s"
		}
	}
	return s
}

// minHeapEmails is the fewest emails QueueHeap is asked to queue: with
// fewer, the heap's background changes outweigh them.
const minHeapEmails = 1000

// oursRow measures our client: its heap per queued email, then a pilot,
// then cfg.Runs runs on one client.
func oursRow(ctx context.Context, cfg Config, e *Env, p Path, sessions int, m Mail) (row Row) {
	row = Row{RTT: e.RTT, Path: p, Sessions: sessions, Label: label(p, sessions)}
	defer row.name()
	cl := Client{JSON: p == OursJSON, Spool: p == OursSpool, Sessions: sessions, Window: cfg.Window, PerSession: cfg.PerSession}
	row.HeapPerEmail, row.Err = QueueHeap(cl, m, max(cfg.N, minHeapEmails))
	if row.Err != nil {
		return row
	}
	c, err := e.NewClient(cl, cfg.N)
	if err != nil {
		row.Err = err
		return row
	}
	defer closeClient(c)
	row.N, row.Err = calibrate(ctx, cfg, func(ctx context.Context, n int) (Sample, error) {
		return RunOurs(ctx, c, e.Sink, m, n)
	})
	if row.Err != nil {
		row.Err = fmt.Errorf("pilot: %w", row.Err)
		return row
	}
	row.measure(ctx, cfg, func(ctx context.Context) (Sample, error) {
		return RunOurs(ctx, c, e.Sink, m, row.N)
	})
	return row
}

// calibrate runs bursts of 4, 16, 64 ... emails until one takes half the
// budget or reaches cfg.N, and returns how many emails a run can send
// within the budget at the rate the last bursts showed. The bursts also
// bring the client's connection up before the timed runs.
func calibrate(ctx context.Context, cfg Config, run func(ctx context.Context, n int) (Sample, error)) (int, error) {
	runOne := func(n int) (Sample, error) {
		rctx, cancel := context.WithTimeout(ctx, cfg.Timeout)
		defer cancel()
		return run(rctx, n)
	}
	if cfg.Budget <= 0 {
		// Still one email, so that the runs start with the WebSocket up.
		_, err := runOne(1)
		return cfg.N, err
	}
	prevN, prevT := 0, time.Duration(0)
	for k := min(cfg.N, 4); ; k = min(cfg.N, 4*k) {
		s, err := runOne(k)
		if err != nil {
			return 0, err
		}
		if k == cfg.N {
			return k, nil
		}
		if s.Elapsed >= cfg.Budget/2 {
			// The marginal rate leaves out the session's set-up.
			rate := math.Inf(1)
			if s.Elapsed > prevT {
				rate = float64(k-prevN) / (s.Elapsed - prevT).Seconds()
			}
			more := rate * (cfg.Budget - s.Elapsed).Seconds()
			return k + int(min(more, float64(cfg.N-k))), nil
		}
		prevN, prevT = k, s.Elapsed
	}
}

// lockstepRow measures go-smtp's Client through the relay or over TCP.
func lockstepRow(ctx context.Context, cfg Config, e *Env, p Path, m Mail) (row Row) {
	row = Row{RTT: e.RTT, Path: p, Label: label(p, 0), N: cfg.LockstepN}
	defer row.name()
	dial := e.Direct()
	if p == LockstepRelay {
		var end func()
		dial, end, row.Err = relayDialer(ctx, e)
		if row.Err != nil {
			return row
		}
		defer end()
	}
	row.measure(ctx, cfg, func(ctx context.Context) (Sample, error) {
		return RunLockstep(ctx, dial, e.Sink, m, cfg.LockstepN)
	})
	return row
}

// floorRow measures the floor through the relay, binary frames, each run
// a session on one WebSocket: a pilot, then cfg.Runs runs.
func floorRow(ctx context.Context, cfg Config, e *Env, m Mail) (row Row) {
	row = Row{RTT: e.RTT, Path: Floor, Label: label(Floor, 0)}
	defer row.name()
	dial, end, err := relayDialer(ctx, e)
	if err != nil {
		row.Err = err
		return row
	}
	defer end()
	run := func(ctx context.Context, n int) (Sample, error) { return RunFloor(ctx, dial, e.Sink, m, n) }
	row.N, row.Err = calibrate(ctx, cfg, run)
	if row.Err != nil {
		row.Err = fmt.Errorf("pilot: %w", row.Err)
		return row
	}
	row.measure(ctx, cfg, func(ctx context.Context) (Sample, error) { return run(ctx, row.N) })
	return row
}

// relayDialer opens an authenticated WebSocket to the Env's relay, binary
// frames, and returns a Dialer of channels on it; end closes it.
func relayDialer(ctx context.Context, e *Env) (dial Dialer, end func(), err error) {
	conn, err := e.DialRelay(ctx, true)
	if err != nil {
		return nil, nil, err
	}
	return RelayChannels(conn), func() { conn.Close(1000, "") }, nil
}

// name prefixes a failed row's error with the row's label and RTT.
func (r *Row) name() {
	if r.Err != nil {
		r.Err = fmt.Errorf("%s at %v: %w", r.Label, r.RTT, r.Err)
	}
}

// largeRows sends the large message through our client (binary) and with
// go-smtp's Client over TCP, both at 0 RTT.
func largeRows(ctx context.Context, cfg Config, e *Env, m Mail) []LargeRow {
	ours := LargeRow{Label: "(a) ours, binary, via relay"}
	c, err := e.NewClient(Client{Window: cfg.Window, PerSession: cfg.PerSession}, 1)
	if err == nil {
		rctx, cancel := context.WithTimeout(ctx, cfg.Timeout)
		ours.Large, err = LargeOurs(rctx, c, e, m, cfg.LargeSize)
		cancel()
		closeClient(c)
	}
	ours.Err = err
	direct := LargeRow{Label: "go-smtp, TCP"}
	rctx, cancel := context.WithTimeout(ctx, cfg.Timeout)
	direct.Large, direct.Err = LargeDirect(rctx, e.Direct(), e, m, cfg.LargeSize)
	cancel()
	for _, l := range []*LargeRow{&ours, &direct} {
		if l.Err != nil {
			l.Err = fmt.Errorf("large message, %s: %w", l.Label, l.Err)
		}
	}
	return []LargeRow{ours, direct}
}

// measure runs cfg.Runs runs, each bounded by cfg.Timeout and after a
// garbage collection (so that a run does not pay for the garbage of what
// came before), and sets the row's figures, or its Err at the first run
// that fails.
func (r *Row) measure(ctx context.Context, cfg Config, run func(context.Context) (Sample, error)) {
	for range cfg.Runs {
		if !r.runOnce(ctx, cfg, run) {
			return
		}
	}
	r.summarize()
}

// runOnce is one run of measure: it adds the run's Sample, or sets Err
// and reports false.
func (r *Row) runOnce(ctx context.Context, cfg Config, run func(context.Context) (Sample, error)) bool {
	runtime.GC()
	rctx, cancel := context.WithTimeout(ctx, cfg.Timeout)
	s, err := run(rctx)
	cancel()
	if err != nil {
		r.Err = fmt.Errorf("run %d: %w", len(r.Samples)+1, err)
		return false
	}
	r.Samples = append(r.Samples, s)
	return true
}

// summarize sets the median rate, the latency percentiles and the medians
// of the usage per email.
func (r *Row) summarize() {
	var rates, cpu, allocs, bytes, inFlight []float64
	var lat []time.Duration
	for _, s := range r.Samples {
		rates = append(rates, s.Rate())
		inFlight = append(inFlight, s.InFlight)
		lat = append(lat, s.Latency...)
		n := float64(s.N)
		cpu = append(cpu, float64(s.Usage.CPU)/n)
		allocs = append(allocs, float64(s.Usage.Mallocs)/n)
		bytes = append(bytes, float64(s.Usage.Bytes)/n)
	}
	r.Rate = Median(rates)
	r.P50 = Percentile(lat, 50)
	r.P99 = Percentile(lat, 99)
	r.CPUPerEmail = time.Duration(Median(cpu))
	if slices.ContainsFunc(r.Samples, func(s Sample) bool { return s.Usage.CPU < 0 }) {
		r.CPUPerEmail = -1
	}
	r.AllocsPerEmail = Median(allocs)
	r.BytesPerEmail = Median(bytes)
	r.InFlight = Median(inFlight)
}

func (r Row) summary() string {
	if r.Err != nil {
		return "FAILED: " + r.Err.Error()
	}
	return fmt.Sprintf("%v %s: %d emails × %d runs, %.0f emails/s, %.1f µs CPU and %.1f allocations an email, %.0f in flight",
		r.RTT, r.Label, r.N, len(r.Samples), r.Rate, float64(r.CPUPerEmail)/1e3, r.AllocsPerEmail, r.InFlight)
}

func (l LargeRow) summary() string {
	if l.Err != nil {
		return "FAILED: " + l.Err.Error()
	}
	return fmt.Sprintf("large message, %s: %.1f MiB/s", l.Label, l.MiBps())
}

// Median is the median of xs (the mean of the middle two for an even
// count); NaN for none.
func Median(xs []float64) float64 {
	if len(xs) == 0 {
		return math.NaN()
	}
	s := slices.Sorted(slices.Values(xs))
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// Percentile is the nearest-rank p-th percentile of ds; 0 for none.
func Percentile(ds []time.Duration, p float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Sorted(slices.Values(ds))
	i := int(math.Ceil(p/100*float64(len(s)))) - 1
	return s[max(0, min(i, len(s)-1))]
}
