package main

import (
	"bytes"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/mxrelay/mxrelay/internal/bench"
)

// printReport writes the tables, the notes on method, and the errors of
// failed rows.
func printReport(w io.Writer, rep *bench.Report, cmdline string, elapsed time.Duration) {
	cfg := rep.Config
	rcpt := "recipient"
	if cfg.Rcpts > 1 {
		rcpt += "s"
	}
	fmt.Fprintf(w, "mxbench: emails through the floor, the mxrelay client, go-smtp via the relay, and go-smtp over TCP\n")
	fmt.Fprintf(w, "machine: %s\n", machine())
	fmt.Fprintf(w, "command: %s\n", cmdline)
	fmt.Fprintf(w, "emails:  %d bytes, %d %s; median of %d runs; the floor and (a) up to %d emails a run (-n, -budget), (b) and (c) %d\n\n",
		cfg.Size, cfg.Rcpts, rcpt, cfg.Runs, cfg.N, cfg.LockstepN)

	var errs []error
	cell := func(err error) string {
		errs = append(errs, err)
		return fmt.Sprintf("FAILED [%d]", len(errs))
	}

	table(w, func(tw io.Writer) {
		fmt.Fprintln(tw, rowsHeader)
		for i, row := range rep.Rows {
			if i > 0 && row.RTT != rep.Rows[i-1].RTT {
				// Tabs, not an empty line: the columns stay aligned across RTTs.
				fmt.Fprintln(tw, strings.Repeat("\t", strings.Count(rowsHeader, "\t")))
			}
			rtt := row.RTT.String()
			if row.Path == bench.LockstepDirect && row.RTT == 0 {
				rtt += " *"
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\n", rtt, row.Label, rowCells(rep, row, cell))
		}
	})

	if len(rep.Scaling) > 0 {
		fmt.Fprintf(w, "\n(a) ours, binary, at %v RTT, by MaxConcurrentSessions\n", cfg.ScaleRTT)
		table(w, func(tw io.Writer) {
			fmt.Fprintln(tw, "sessions\temails×runs\temails/s\tp50\tp99\theap/queued email\t(a)/(b)\t(a)/(c)\t"+usageHeader+"\tvs first")
			first := rep.Scaling[0]
			for _, row := range rep.Scaling {
				vs := "-"
				if row.Err == nil && first.Err == nil {
					vs = fmt.Sprintf("%.2f×", row.Rate/first.Rate)
				}
				fmt.Fprintf(tw, "%d\t%s\t%s\n", row.Sessions, rowCells(rep, row, cell), vs)
			}
		})
	}

	if len(rep.Large) > 0 {
		fmt.Fprintf(w, "\nlarge message: %s, once, at 0 RTT\n", formatSize(cfg.LargeSize))
		table(w, func(tw io.Writer) {
			fmt.Fprintln(tw, "path\ttime\tMiB/s\tpeak heap")
			for _, l := range rep.Large {
				if l.Err != nil {
					fmt.Fprintf(tw, "%s\t%s\t-\t-\n", l.Label, cell(l.Err))
					continue
				}
				fmt.Fprintf(tw, "%s\t%s\t%.1f\t%.1f MiB\n", l.Label, duration(l.Elapsed), l.MiBps(), float64(l.PeakHeap)/(1<<20))
			}
		})
	}

	printFeatures(w, rep, cell)
	printPostgres(w, rep, cell)

	fmt.Fprint(w, notes)
	if len(errs) > 0 {
		fmt.Fprintln(w, "\nfailures:")
		for i, err := range errs {
			fmt.Fprintf(w, "  [%d] %v\n", i+1, err)
		}
	}
	fmt.Fprintf(w, "\ntotal time: %s\n", elapsed.Round(100*time.Millisecond))
}

// table writes the tab-separated lines that fill writes as aligned
// columns, without trailing spaces.
func table(w io.Writer, fill func(io.Writer)) {
	var buf bytes.Buffer
	tw := tabwriter.NewWriter(&buf, 0, 0, 2, ' ', 0)
	fill(tw)
	tw.Flush()
	for line := range strings.Lines(buf.String()) {
		fmt.Fprintln(w, strings.TrimRight(line, " \n"))
	}
}

// usageHeader names the columns after (a)/(c): the row against the floor,
// and the client's usage per email.
const usageHeader = "rate ×floor\tCPU/email\tCPU ×floor\tallocs/email\talloc B/email"

// rowsHeader names the columns of the main table.
const rowsHeader = "RTT\tpath\temails×runs\temails/s\tp50\tp99\theap/queued email\t(a)/(b)\t(a)/(c)\t" + usageHeader

// rowCells formats a row's measurements, from emails×runs to the alloc
// B/email; a failed row gets its failure's reference and no figure.
func rowCells(rep *bench.Report, row bench.Row, failed func(error) string) string {
	if row.Err != nil {
		return strings.Join([]string{"-", failed(row.Err), "-", "-", "-", "-", "-", "-", "-", "-", "-", "-"}, "\t")
	}
	heap, vsB, vsC := "-", "-", "-"
	if row.Path.Ours() {
		heap = fmt.Sprintf("%.0f B", row.HeapPerEmail)
		if r, ok := rep.Ratio(row, bench.LockstepRelay); ok {
			vsB = fmt.Sprintf("%.1f×", r)
		}
		if r, ok := rep.Ratio(row, bench.LockstepDirect); ok {
			vsC = fmt.Sprintf("%.1f×", r)
		}
	}
	vsFloor, cpu, cpuVsFloor := "-", "-", "-"
	if r, ok := rep.Ratio(row, bench.Floor); ok {
		vsFloor = fmt.Sprintf("%.2f×", r)
	}
	if row.CPUPerEmail >= 0 {
		cpu = fmt.Sprintf("%.1f µs", float64(row.CPUPerEmail)/float64(time.Microsecond))
	}
	if r, ok := rep.CPURatio(row, bench.Floor); ok {
		cpuVsFloor = fmt.Sprintf("%.2f×", r)
	}
	return strings.Join([]string{
		fmt.Sprintf("%d×%d", row.N, len(row.Samples)),
		rate(row.Rate), duration(row.P50), duration(row.P99), heap, vsB, vsC,
		vsFloor, cpu, cpuVsFloor, fmt.Sprintf("%.1f", row.AllocsPerEmail), fmt.Sprintf("%.0f B", row.BytesPerEmail),
	}, "\t")
}

func rate(r float64) string {
	if r < 100 {
		return fmt.Sprintf("%.1f", r)
	}
	return fmt.Sprintf("%.0f", r)
}

func duration(d time.Duration) string {
	switch {
	case d < 10*time.Millisecond:
		return fmt.Sprintf("%.2fms", float64(d)/float64(time.Millisecond))
	case d < time.Second:
		return fmt.Sprintf("%.1fms", float64(d)/float64(time.Millisecond))
	}
	return fmt.Sprintf("%.2fs", d.Seconds())
}

const notes = `
How it is measured (all on loopback; the figures are relative to each other):
- The servers run in a child process: the SMTP server is internal/smtpsink, which discards data; the
  relay is relaytest, each frame delayed by RTT/2 in each direction; (c) goes through a TCP proxy
  delaying each direction by RTT/2 without limiting bandwidth; * at 0 RTT (c) connects to the server
  directly, no proxy. Every client runs in this process, one row at a time.
- The floor is a minimal client written for this benchmark: one SMTP session through the relay (binary
  frames) pipelining whole transactions, MAIL, RCPT, BDAT with the message and LAST, at most 256
  unanswered, its 64 KiB buffer flushed when the window is full, and nothing else (no queue, no
  results, no events); it checks every reply (2xx, or the run fails). rate ×floor and CPU ×floor
  compare each row with the floor at the same RTT.
- (a) is mxrelay.New with MaxEmailsPerSession 1000 (-per-session) and a queue big enough, the rest at
  its defaults (-window sets PipelineWindow); "upstream without CHUNKING" offers PIPELINING only.
  A run enqueues its emails at once: emails/s is their number over the time from the first Enqueue
  to the last result, on a WebSocket already authenticated (the channel, greeting and EHLO count);
  latency is from an email's Enqueue call to its result, its wait in the queue included. When -n
  emails would not fit in -budget at the rate a pilot showed, a run of (a) or of the floor sends
  fewer (emails×runs).
- (b) is go-smtp's Client in one session through the same relay (binary frames), MAIL, RCPT, DATA and
  the end of data each waiting for its reply; (c) the same over TCP. emails/s is from the channel open
  (or the TCP dial) to the last reply; latency from an email's MAIL to the reply to its end of data.
  The floor is timed the same way, its latency from an email's MAIL to the reply to its BDAT.
- CPU/email: this process's user and system CPU time (getrusage, every thread, the garbage collector
  included) over a run, per email; allocs/email and alloc B/email: MemStats.Mallocs and TotalAlloc over
  the same run. With the servers in the child, that is the client's alone, with the run's own
  bookkeeping. Each is the median over the runs; each run starts after a garbage collection.
- Every run is checked: each email delivered to every recipient at its first attempt, and the server
  received exactly those messages and bytes. A failed row shows FAILED and its error, never a number.
- heap/queued email: the live heap after a GC (MemStats.HeapAlloc) before and after enqueueing -n emails
  (at least 1000) on a client whose relay is down (HTTP 503), divided by their number; the bodies
  were allocated before.
- Large message: a body generated as it is read (io.ReadSeeker, no copy), binary frames. Peak heap is
  the highest runtime/metrics heap-objects bytes, sampled every 2 ms, above the heap after a GC just
  before the send: this process's (the client's), garbage not yet collected included.
- Warm Sends (-feature-rtt, -warm-sends, -warm-gap): mxrelay.New at its defaults but Linger and
  MaxEmailsPerSession as the row says ("no Linger" is a negative Linger: a session per Send, as before
  sessions lingered); one Send opens the WebSocket and a session, then each Send starts -warm-gap after
  the previous one returned. p50 and p99 are Send's call to its return, also in round trips; SMTP
  sessions (the sink's) and channels (the relay's) count every Send, the first included.
- Throttling upstream (-throttle-n, -throttle-limit): the relay counts MAIL in fixed windows of a
  second and answers past the limit "451 4.7.0 Throttling: too many messages, slow down", forwarding
  nothing (relaytest's Options.Throttle). mxrelay.New at its defaults (MaxEmailsPerSession 10, 3
  retries), MaxQueueSize -throttle-n, RetryInterval -retry-interval, throttle feedback on or off
  (Throttle.Disable); every email enqueued at once. time is from the first Enqueue to the last result,
  delivered/s the delivered over it, ×limit that over the limit; 451 replies is the relay's count
  (Stats.Throttled), over the emails; ThrottleCuts the client's Stats; most attempts the highest
  Result.Attempts.
- Deferred lane (-deferred-n): the relay answers every RCPT to deferred@example.com "450 4.1.1 ...
  unverified address" and forwards nothing; that many emails to it are enqueued, then as many good
  ones, on mxrelay.New at its defaults (RetryInterval -retry-interval); times are from the first
  Enqueue. relaytest does not slow its replies after errors as Postfix does (1 s a reply past 10
  errors, smtpd_error_sleep_time and smtpd_soft_error_limit, which made the issue's minutes): a
  deferred attempt costs here what a good one does, so the table shows whether good mail waits for
  the deferred mail's retries, not Postfix's delay.
- Adaptive window: at each RTT two clients as (a) binary, the default adaptive window and
  FixedWindow; a pilot each, then -runs runs each, taking turns, both as many emails a run (the more
  of the two pilots' counts). The adaptive client lives through the pilot and the runs, so its window
  carries what it learned from one run and one session to the next. in flight is the mean number of emails
  in a session (taken from the queue, result not yet given) over a run, by Little's law: the emails'
  time in a session (Stats.AverageEmailTime times the emails delivered) over the run's time, nothing
  sampled; the median over the runs. adaptive/fixed is the ratio of the rates.
- PostgreSQL (-pg-procs, -pg-n, -pg-rtt): a private cluster (internal/pgtest: initdb in a temporary
  directory, loopback, fsync=off and full_page_writes=off, so a commit costs no disk flush as it would
  on a real server) that mxbench starts and stops; each row a schema of its own. Each process is a
  child of mxbench with a Client on pgstore (Options.Store, a pool of its own, the Lease and the
  store's options at their defaults, the rest as (a) binary); its senders are child processes, so
  their CPU time is not this process's and is not shown. A run: every process enqueues its share of
  -pg-n emails at once, from one goroutine, and waits for each one's result, whichever process sent
  it (Handle.Wait across processes); emails/s is -pg-n over the time from the first Enqueue call of
  any process to the last result; latency from an email's Enqueue call to its result. Enqueue p50 and
  p99 are the Enqueue calls themselves: the email written to the database and committed. Database
  round trips are counted by a tracer on each process's pool (every query, Exec, Begin and Commit,
  every statement prepared, every batch), over all processes, from the run's start until every
  process had its results, per email; the listening connection's notifications are not round
  trips. memory and SpoolDir are (a) binary with the memory store and with a SpoolDir, in this
  process, timed the same way. Every email must be delivered at its first attempt and the sink
  must have received exactly the run's emails. Where PostgreSQL is not installed the rows say so and
  are not failures.
- Those rows check every email too: delivered to every recipient, or (throttling upstream, deferred
  lane) failed with the refusal the row expects, never unknown; the server received exactly the
  delivered ones.
`
