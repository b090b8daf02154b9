package bench

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/mxrelay/mxrelay"
	"github.com/mxrelay/mxrelay/internal/pgtest"
	"github.com/mxrelay/mxrelay/pgstore"
)

// The PostgreSQL table: our client on one queue in PostgreSQL (pgstore),
// in 1 to 4 processes, beside the memory store and a SpoolDir in this
// process. The senders are child processes, this program run again with
// SenderArg, each with its own Client, Store and pool, on one private
// cluster (internal/pgtest) that this process starts; each counts its
// round trips to the database with a tracer on its pool.

// SenderArg, as a program's first argument, makes it a sender of the
// PostgreSQL table for its parent: see ServeIfChild.
const SenderArg = "-mxbench-pg-sender"

// PGRow is one line of the PostgreSQL table: a store, in Procs processes.
type PGRow struct {
	Label string
	Store string // "memory", "SpoolDir" or "PostgreSQL"
	Procs int    // processes sharing the queue
	N     int    // emails per run, over all the processes
	Runs  int
	// Rate is the median over the runs of N over the time from the first
	// Enqueue call (of any process) to the last result.
	Rate float64
	// EnqueueP50 and EnqueueP99 are the Enqueue calls' durations, P50 and
	// P99 the emails' latencies (Enqueue call to result), over the emails
	// of all runs.
	EnqueueP50, EnqueueP99, P50, P99 time.Duration
	// RoundTrips is the median over the runs of the database round trips
	// (queries, statements prepared) of every process, per email; -1
	// where there is no database.
	RoundTrips float64
	Err        error
	// Missing is set when PostgreSQL is not installed: the row is not
	// measured, and that is not a failure.
	Missing bool
}

func (r PGRow) summary() string {
	switch {
	case r.Missing:
		return r.Label + ": not measured: " + r.Err.Error()
	case r.Err != nil:
		return "FAILED: " + r.Err.Error()
	}
	return fmt.Sprintf("%s: %d emails × %d runs, %.0f emails/s, Enqueue p50 %v, %.1f database round trips an email",
		r.Label, r.N, r.Runs, r.Rate, r.EnqueueP50.Round(time.Microsecond), r.RoundTrips)
}

// pgRows measures the PostgreSQL table: memory and SpoolDir in this
// process, then the PostgreSQL queue in each count of processes of
// cfg.PGProcs.
func pgRows(ctx context.Context, cfg Config, e *Env, m Mail, exe string, progress func(string)) []PGRow {
	var rows []PGRow
	add := func(r PGRow) {
		rows = append(rows, r)
		progress(r.summary())
	}
	for _, spool := range []bool{false, true} {
		if ctx.Err() != nil {
			return rows
		}
		add(localPGRow(ctx, cfg, e, m, spool))
	}
	if ctx.Err() != nil {
		return rows
	}
	cluster, err := pgtest.Start()
	if err != nil {
		for _, k := range cfg.PGProcs {
			add(PGRow{Label: pgLabel(k), Store: "PostgreSQL", Procs: k, Err: err, Missing: errors.Is(err, pgtest.ErrMissing)})
		}
		return rows
	}
	defer cluster.Close()
	for _, k := range cfg.PGProcs {
		if ctx.Err() != nil {
			return rows
		}
		add(sharedPGRow(ctx, cfg, e, m, exe, cluster.ConnString(), k))
	}
	return rows
}

func pgLabel(procs int) string {
	s := fmt.Sprintf("PostgreSQL, %d process", procs)
	if procs > 1 {
		s += "es"
	}
	return s
}

// localPGRow is our client with the memory store or a SpoolDir, in this
// process, as the PostgreSQL rows are measured: cfg.PGN emails a run.
func localPGRow(ctx context.Context, cfg Config, e *Env, m Mail, spool bool) (row PGRow) {
	row = PGRow{Label: "memory, 1 process", Store: "memory", Procs: 1, N: cfg.PGN, RoundTrips: -1}
	if spool {
		row.Label, row.Store = "SpoolDir, 1 process", "SpoolDir"
	}
	defer func() {
		if row.Err != nil {
			row.Err = fmt.Errorf("%s at %v: %w", row.Label, e.RTT, row.Err)
		}
	}()
	c, err := e.NewClient(Client{Spool: spool, Window: cfg.Window, PerSession: cfg.PerSession}, max(cfg.PGN, pgWarm))
	if err != nil {
		row.Err = err
		return row
	}
	defer closeClient(c)
	if _, err := RunOurs(ctx, c, e.Sink, m, pgWarm); err != nil {
		row.Err = fmt.Errorf("warming up: %w", err)
		return row
	}
	var samples []pgSample
	for range cfg.Runs {
		rctx, cancel := context.WithTimeout(ctx, cfg.Timeout)
		s, err := RunOurs(rctx, c, e.Sink, m, cfg.PGN)
		cancel()
		if err != nil {
			row.Err = err
			return row
		}
		samples = append(samples, pgSample{elapsed: s.Elapsed, enqueue: s.Enqueue, latency: s.Latency, roundTrips: -1})
	}
	row.summarize(samples)
	return row
}

// pgWarm is how many emails each client sends before the timed runs: its
// WebSocket and sessions come up, the pool's statements are prepared.
const pgWarm = 16

// pgSample is one run of a row.
type pgSample struct {
	elapsed          time.Duration
	enqueue, latency []time.Duration
	roundTrips       float64 // per email; -1: none
}

// summarize sets the row's figures from its runs.
func (r *PGRow) summarize(samples []pgSample) {
	var rates, trips []float64
	var enq, lat []time.Duration
	for _, s := range samples {
		rates = append(rates, float64(r.N)/s.elapsed.Seconds())
		trips = append(trips, s.roundTrips)
		enq = append(enq, s.enqueue...)
		lat = append(lat, s.latency...)
	}
	r.Runs = len(samples)
	r.Rate, r.RoundTrips = Median(rates), Median(trips)
	r.EnqueueP50, r.EnqueueP99 = Percentile(enq, 50), Percentile(enq, 99)
	r.P50, r.P99 = Percentile(lat, 50), Percentile(lat, 99)
}

// sharedPGRow measures procs sender processes on one queue, a schema of
// its own on the cluster at conn: each run, every sender enqueues its
// share of cfg.PGN emails at once, as RunOurs does, and waits for their
// results, whichever process sent them.
func sharedPGRow(ctx context.Context, cfg Config, e *Env, m Mail, exe, conn string, procs int) (row PGRow) {
	row = PGRow{Label: pgLabel(procs), Store: "PostgreSQL", Procs: procs, N: cfg.PGN}
	defer func() {
		if row.Err != nil {
			row.Err = fmt.Errorf("%s at %v: %w", row.Label, e.RTT, row.Err)
		}
	}()
	args := []string{"-relay", e.RelayURL, "-key", e.APIKey, "-conn", conn, "-schema", fmt.Sprintf("mxbench_%d", procs),
		"-size", strconv.Itoa(len(m.Body)), "-rcpts", strconv.Itoa(len(m.To)),
		"-window", strconv.Itoa(cfg.Window), "-per-session", strconv.Itoa(cfg.PerSession), "-queue", strconv.Itoa(max(cfg.PGN, pgWarm*procs))}
	var senders []*sender
	defer func() {
		for _, s := range senders {
			if err := s.stop(); err != nil && row.Err == nil {
				row.Err = err
			}
		}
	}()
	for range procs {
		s, err := startSender(exe, args)
		if err != nil {
			row.Err = err
			return row
		}
		senders = append(senders, s)
	}
	if _, err := runSenders(ctx, cfg.Timeout, senders, e, m, pgWarm*procs); err != nil {
		row.Err = fmt.Errorf("warming up: %w", err)
		return row
	}
	var samples []pgSample
	for range cfg.Runs {
		s, err := runSenders(ctx, cfg.Timeout, senders, e, m, cfg.PGN)
		if err != nil {
			row.Err = err
			return row
		}
		samples = append(samples, s)
	}
	row.summarize(samples)
	return row
}

// runSenders has the senders enqueue n emails between them at once, and
// checks that the sink received exactly those.
func runSenders(ctx context.Context, timeout time.Duration, senders []*sender, e *Env, m Mail, n int) (pgSample, error) {
	before := e.Sink.Stats()
	reports := make([]senderReport, len(senders))
	errs := make([]error, len(senders))
	var wg sync.WaitGroup
	for i, s := range senders {
		share := n / len(senders)
		if i < n%len(senders) {
			share++
		}
		wg.Go(func() { reports[i], errs[i] = s.run(share, timeout) })
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return pgSample{}, err
	}
	if err := ctx.Err(); err != nil {
		return pgSample{}, fmt.Errorf("bench: %w", err)
	}
	if err := expectDelta(e.Sink, before, n, int64(len(m.Body))); err != nil {
		return pgSample{}, err
	}
	// Each sender's round trips until every one had its results: one that
	// finished first may have sent the others' emails since.
	var s pgSample
	var trips int64
	first, last := reports[0].Start, reports[0].End
	for i, r := range reports {
		count, err := senders[i].count()
		if err != nil {
			return pgSample{}, err
		}
		trips += count - r.Before
		first, last = min(first, r.Start), max(last, r.End)
		for _, d := range r.Enqueue {
			s.enqueue = append(s.enqueue, time.Duration(d))
		}
		for _, d := range r.Latency {
			s.latency = append(s.latency, time.Duration(d))
		}
	}
	s.elapsed = time.Duration(last - first)
	s.roundTrips = float64(trips) / float64(n)
	return s, nil
}

// senderReport is a sender's answer to a run: its times in Unix
// nanoseconds (the machine's one clock), its Enqueue calls' durations and
// its emails' latencies in nanoseconds, and its round-trip count when the
// run started.
type senderReport struct {
	Start, End       int64
	Enqueue, Latency []int64
	Before           int64
	Err              string
}

// sender is a sender process seen from its parent.
type sender struct{ *child }

// startSender starts exe as a sender with args and waits for it to be
// ready.
func startSender(exe string, args []string) (*sender, error) {
	c, err := startChild("a sender", exe, append([]string{SenderArg}, args...))
	if err != nil {
		return nil, fmt.Errorf("bench: starting a sender: %w", err)
	}
	var ready struct{ Ready bool }
	if err := c.read(&ready, childStartTimeout); err != nil || !ready.Ready {
		return nil, errors.Join(fmt.Errorf("bench: a sender (%s %s) did not say it was ready: %v", exe, SenderArg, err), c.stop())
	}
	return &sender{c}, nil
}

// run has the sender enqueue n emails and waits for its report.
func (s *sender) run(n int, timeout time.Duration) (senderReport, error) {
	var r senderReport
	if err := s.askWithin(fmt.Sprintf("run %d\n", n), &r, timeout); err != nil {
		return r, fmt.Errorf("bench: a sender's run: %w", err)
	}
	if r.Err != "" {
		return r, errors.New(r.Err)
	}
	return r, nil
}

// count asks the sender for its round trips so far.
func (s *sender) count() (int64, error) {
	var n int64
	if err := s.ask("count\n", &n); err != nil {
		return 0, fmt.Errorf("bench: a sender's count: %w", err)
	}
	return n, nil
}

// roundTrips counts a pool's round trips to the server: each query (and
// Exec, Begin, Commit), each statement prepared, each batch. Safe for
// concurrent use.
type roundTrips struct{ n atomic.Int64 }

var (
	_ pgx.QueryTracer   = (*roundTrips)(nil)
	_ pgx.PrepareTracer = (*roundTrips)(nil)
	_ pgx.BatchTracer   = (*roundTrips)(nil)
)

func (rt *roundTrips) TraceQueryStart(ctx context.Context, _ *pgx.Conn, _ pgx.TraceQueryStartData) context.Context {
	rt.n.Add(1)
	return ctx
}

func (*roundTrips) TraceQueryEnd(context.Context, *pgx.Conn, pgx.TraceQueryEndData) {}

func (*roundTrips) TracePrepareStart(ctx context.Context, _ *pgx.Conn, _ pgx.TracePrepareStartData) context.Context {
	return ctx
}

func (rt *roundTrips) TracePrepareEnd(_ context.Context, _ *pgx.Conn, d pgx.TracePrepareEndData) {
	if !d.AlreadyPrepared {
		rt.n.Add(1)
	}
}

func (rt *roundTrips) TraceBatchStart(ctx context.Context, _ *pgx.Conn, _ pgx.TraceBatchStartData) context.Context {
	rt.n.Add(1)
	return ctx
}

func (*roundTrips) TraceBatchQuery(context.Context, *pgx.Conn, pgx.TraceBatchQueryData) {}
func (*roundTrips) TraceBatchEnd(context.Context, *pgx.Conn, pgx.TraceBatchEndData)     {}

// serveSender is a sender's whole work: its Client on the queue args
// name, which enqueues the emails each "run n" line asks for and reports
// (senderReport), and answers each "count" line with its round trips so
// far; it closes the Client when its input ends. It returns the exit
// status: 0 after a clean stop, 1 when it failed, 2 for bad arguments.
func serveSender(args []string, in io.Reader, out, errOut io.Writer) int {
	fs := flag.NewFlagSet(SenderArg, flag.ContinueOnError)
	fs.SetOutput(errOut)
	var relay, key, conn, schema string
	var size, rcpts, window, perSession, queue int
	fs.StringVar(&relay, "relay", "", "the relay's URL")
	fs.StringVar(&key, "key", "", "the relay's API key")
	fs.StringVar(&conn, "conn", "", "the database's connection string")
	fs.StringVar(&schema, "schema", "mxrelay", "the queue's schema")
	fs.IntVar(&size, "size", 1024, "message size")
	fs.IntVar(&rcpts, "rcpts", 1, "recipients per email")
	fs.IntVar(&window, "window", 0, "Options.PipelineWindow")
	fs.IntVar(&perSession, "per-session", 0, "Options.MaxEmailsPerSession")
	fs.IntVar(&queue, "queue", 1000, "Options.MaxQueueSize")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	fail := func(err error) int {
		fmt.Fprintln(errOut, "mxbench sender:", err)
		return 1
	}
	m, err := NewMail(size, rcpts)
	if err != nil {
		return fail(err)
	}
	ctx := context.Background()
	pc, err := pgxpool.ParseConfig(conn)
	if err != nil {
		return fail(err)
	}
	rt := new(roundTrips)
	pc.ConnConfig.Tracer = rt
	pool, err := pgxpool.NewWithConfig(ctx, pc)
	if err != nil {
		return fail(err)
	}
	defer pool.Close()
	st, err := pgstore.Open(ctx, pool, &pgstore.Options{Schema: schema})
	if err != nil {
		return fail(err)
	}
	defer st.Close()
	o := Client{Window: window, PerSession: perSession}.Options(queue)
	o.Store = st
	c, err := mxrelay.New(relay, key, &o)
	if err != nil {
		return fail(err)
	}
	defer closeClient(c)
	enc := json.NewEncoder(out)
	if err := enc.Encode(struct{ Ready bool }{true}); err != nil {
		return 1
	}
	sc := bufio.NewScanner(in)
	for sc.Scan() {
		var answer any
		switch verb, arg, _ := strings.Cut(sc.Text(), " "); verb {
		case "run":
			n, _ := strconv.Atoi(arg)
			answer = sendShare(ctx, c, m, n, rt)
		case "count":
			answer = rt.n.Load()
		default:
			fmt.Fprintf(errOut, "mxbench sender: unknown request %q\n", sc.Text())
			return 2
		}
		if err := enc.Encode(answer); err != nil {
			return 1
		}
	}
	return 0
}

// sendShare enqueues n emails at once on c and waits for every result,
// whichever process sent the email: each must be delivered to every
// recipient at its first attempt.
func sendShare(ctx context.Context, c *mxrelay.Client, m Mail, n int, rt *roundTrips) senderReport {
	r := senderReport{Before: rt.n.Load()}
	calls := make([]time.Time, 0, n)
	var handles []*mxrelay.Handle
	for range n {
		t := time.Now()
		h, err := c.Enqueue(mxrelay.Email{From: m.From, To: m.To, Body: bytes.NewReader(m.Body)})
		if err != nil {
			r.Err = fmt.Sprintf("bench: enqueue: %v", err)
			return r
		}
		calls = append(calls, t)
		r.Enqueue = append(r.Enqueue, int64(time.Since(t)))
		handles = append(handles, h)
	}
	if n > 0 {
		r.Start = calls[0].UnixNano()
	}
	for i, h := range handles {
		res, err := h.Wait(ctx)
		if res == nil {
			r.Err = fmt.Sprintf("bench: waiting for results: %v", err)
			return r
		}
		if err := firstAttempt(res); err != nil {
			r.Err = err.Error()
			return r
		}
		done := res.Queued.Add(res.Duration)
		r.Latency = append(r.Latency, int64(done.Sub(calls[i])))
		r.End = max(r.End, done.UnixNano())
	}
	return r
}
