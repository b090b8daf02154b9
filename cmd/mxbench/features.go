package main

import (
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/mxrelay/mxrelay/internal/bench"
)

// printFeatures writes the tables of warm Sends, the throttling upstream,
// the deferred lane and the adaptive window, those the report has; failed
// calls cell with a failed row's error and returns its reference.
func printFeatures(w io.Writer, rep *bench.Report, failed func(error) string) {
	cfg := rep.Config
	if len(rep.Warm) > 0 {
		var rows []labelled
		for _, r := range rep.Warm {
			rows = append(rows, labelled{r.Label, r.Err, []string{duration(r.P50), duration(r.P99),
				inRTT(r, r.P50), inRTT(r, r.P99), fmt.Sprint(r.Sessions), fmt.Sprint(r.Channels)}})
		}
		labelledTable(w, fmt.Sprintf("warm Sends: 1 + %d Sends one after another, %v between them, at %v RTT", cfg.WarmSends, cfg.WarmGap, cfg.FeatureRTT),
			"client\tp50\tp99\tp50/RTT\tp99/RTT\tSMTP sessions\tchannels", rows, failed)
	}
	if len(rep.Throttle) > 0 {
		var rows []labelled
		for _, r := range rep.Throttle {
			rows = append(rows, labelled{r.Label, r.Err, []string{fmt.Sprint(r.Failed), duration(r.Elapsed), rate(r.Rate()),
				fmt.Sprintf("%.2f×", r.OfLimit()), fmt.Sprint(r.Throttled), fmt.Sprintf("%.1f%%", 100*r.ThrottledShare()),
				fmt.Sprint(r.Cuts), fmt.Sprint(r.Attempts)}})
		}
		labelledTable(w, fmt.Sprintf("throttling upstream: %d emails at once; it accepts %d a second and answers MAIL past that 451 4.7.0; at %v RTT",
			cfg.ThrottleN, cfg.ThrottleLimit, cfg.FeatureRTT),
			"client\tfailed\ttime\tdelivered/s\t×limit\t451 replies\t451s/emails\tThrottleCuts\tmost attempts", rows, failed)
	}
	if len(rep.Deferred) > 0 {
		var rows []labelled
		for _, r := range rep.Deferred {
			rows = append(rows, labelled{r.Label, r.Err, []string{duration(r.LastDelivered), duration(r.MedianGood),
				duration(r.LastFailed), fmt.Sprint(r.Attempts)}})
		}
		labelledTable(w, fmt.Sprintf("deferred lane: %d emails whose recipient is answered 450, then %d good ones, enqueued at once, at %v RTT (times from the first Enqueue)",
			cfg.DeferredN, cfg.DeferredN, cfg.FeatureRTT),
			"client\tlast good delivered\tmedian good\tlast deferred failed\tdeferred attempts", rows, failed)
	}
	if len(rep.Window) > 0 {
		fmt.Fprintf(w, "\nadaptive window against FixedWindow, by RTT\n")
		table(w, func(tw io.Writer) {
			fmt.Fprintln(tw, "RTT\tclient\temails×runs\temails/s\tp50\tp99\tin flight\tadaptive/fixed\tCPU/email\tallocs/email")
			for i, r := range rep.Window {
				if i > 0 && r.RTT != rep.Window[i-1].RTT {
					fmt.Fprintln(tw, "\t\t\t\t\t\t\t\t\t")
				}
				if r.Err != nil {
					fmt.Fprintf(tw, "%v\t%s\t-\t%s\n", r.RTT, r.Label, dashes(failed(r.Err), 6))
					continue
				}
				vs, cpu := "-", "-"
				if x, ok := rep.WindowRatio(r); ok && r.Path != bench.OursFixedWindow {
					vs = fmt.Sprintf("%.2f×", x)
				}
				if r.CPUPerEmail >= 0 {
					cpu = fmt.Sprintf("%.1f µs", float64(r.CPUPerEmail)/float64(time.Microsecond))
				}
				fmt.Fprintf(tw, "%v\t%s\t%d×%d\t%s\t%s\t%s\t%.0f\t%s\t%s\t%.1f\n", r.RTT, r.Label, r.N, len(r.Samples), rate(r.Rate),
					duration(r.P50), duration(r.P99), r.InFlight, vs, cpu, r.AllocsPerEmail)
			}
		})
	}
}

// printPostgres writes the PostgreSQL table, if the report has it: a row
// not measured because PostgreSQL is not installed says so, and is no
// failure.
func printPostgres(w io.Writer, rep *bench.Report, failed func(error) string) {
	if len(rep.Postgres) == 0 {
		return
	}
	cfg := rep.Config
	var memory float64
	for _, r := range rep.Postgres {
		if r.Store == "memory" && r.Err == nil {
			memory = r.Rate
		}
	}
	fmt.Fprintf(w, "\nprocesses on one queue in PostgreSQL (pgstore), %d emails a run over all of them, at %v RTT; memory and SpoolDir beside them\n", cfg.PGN, cfg.PGRTT)
	table(w, func(tw io.Writer) {
		const header = "store\temails×runs\temails/s\t×memory\tEnqueue p50\tEnqueue p99\tp50\tp99\tdatabase round trips/email"
		fmt.Fprintln(tw, header)
		for _, r := range rep.Postgres {
			switch {
			case r.Missing:
				fmt.Fprintf(tw, "%s\tnot measured: %v%s\n", r.Label, r.Err, strings.Repeat("\t", strings.Count(header, "\t")-1))
				continue
			case r.Err != nil:
				fmt.Fprintf(tw, "%s\t%s\n", r.Label, dashes(failed(r.Err), strings.Count(header, "\t")-1))
				continue
			}
			vs, trips := "-", "-"
			if memory > 0 {
				vs = fmt.Sprintf("%.2f×", r.Rate/memory)
			}
			if r.RoundTrips >= 0 {
				trips = fmt.Sprintf("%.2f", r.RoundTrips)
			}
			fmt.Fprintf(tw, "%s\t%d×%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", r.Label, r.N, r.Runs, rate(r.Rate), vs,
				duration(r.EnqueueP50), duration(r.EnqueueP99), duration(r.P50), duration(r.P99), trips)
		}
	})
}

// labelled is a row of a table whose first column is a label: its
// failure, or its figures.
type labelled struct {
	label string
	err   error
	cells []string
}

// labelledTable writes a title and a table of rows under header; a failed
// row shows its failure's reference and dashes.
func labelledTable(w io.Writer, title, header string, rows []labelled, failed func(error) string) {
	fmt.Fprintf(w, "\n%s\n", title)
	table(w, func(tw io.Writer) {
		fmt.Fprintln(tw, header)
		for _, r := range rows {
			if r.err != nil {
				fmt.Fprintf(tw, "%s\t%s\n", r.label, dashes(failed(r.err), strings.Count(header, "\t")-1))
				continue
			}
			fmt.Fprintln(tw, r.label+"\t"+strings.Join(r.cells, "\t"))
		}
	})
}

// dashes is a failed row's cells: its failure's reference, then n dashes.
func dashes(ref string, n int) string {
	return ref + strings.Repeat("\t-", n)
}

// inRTT formats d in round trips of the row's RTT.
func inRTT(r bench.WarmRow, d time.Duration) string {
	if r.RTT <= 0 {
		return "-"
	}
	return fmt.Sprintf("%.2f", r.InRTT(d))
}
