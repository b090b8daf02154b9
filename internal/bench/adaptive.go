package bench

import (
	"context"
	"fmt"
)

// defaultWindow is the client's default PipelineWindow (see
// mxrelay.Options), named in the window table's labels.
const defaultWindow = 256

// windowRows measures our client, binary frames, with the adaptive window
// (OursBinary) and with FixedWindow (OursFixedWindow) at the Env's RTT:
// a pilot for each, then cfg.Runs runs of each, taking turns, so that
// what else loads the machine weighs on both alike. Both send as many
// emails a run, the more of their pilots' counts: a run's set-up and its
// tail weigh on both alike too (a pilot that caught the adaptive window
// while it grew would otherwise give it shorter runs, more of them set-up).
func windowRows(ctx context.Context, cfg Config, e *Env, m Mail) []Row {
	window := cfg.Window
	if window == 0 {
		window = defaultWindow
	}
	rows := []Row{
		{RTT: e.RTT, Path: OursBinary, Label: fmt.Sprintf("(a) ours, binary, adaptive window up to %d (default)", window)},
		{RTT: e.RTT, Path: OursFixedWindow, Label: fmt.Sprintf("(a) ours, binary, FixedWindow %d", window)},
	}
	runs := make([]func(context.Context, int) (Sample, error), len(rows))
	for i := range rows {
		row := &rows[i]
		c, err := e.NewClient(Client{Window: cfg.Window, PerSession: cfg.PerSession, FixedWindow: row.Path == OursFixedWindow}, cfg.N)
		if err != nil {
			row.Err = err
			continue
		}
		defer closeClient(c)
		runs[i] = func(ctx context.Context, n int) (Sample, error) { return RunOurs(ctx, c, e.Sink, m, n) }
		if row.N, row.Err = calibrate(ctx, cfg, runs[i]); row.Err != nil {
			row.Err = fmt.Errorf("pilot: %w", row.Err)
		}
	}
	n := 0
	for _, row := range rows {
		if row.Err == nil {
			n = max(n, row.N)
		}
	}
	for i := range rows {
		rows[i].N = n
	}
	for range cfg.Runs {
		for i := range rows {
			row := &rows[i]
			if row.Err == nil {
				row.runOnce(ctx, cfg, func(ctx context.Context) (Sample, error) { return runs[i](ctx, row.N) })
			}
		}
	}
	for i := range rows {
		if rows[i].Err == nil {
			rows[i].summarize()
		}
		rows[i].name()
	}
	return rows
}
