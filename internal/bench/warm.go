package bench

import (
	"bytes"
	"context"
	"fmt"
	"time"

	"github.com/mxrelay/mxrelay"
)

// Warm is a run of sequential Sends on one client (RunWarm).
type Warm struct {
	// Latency is each timed Send's duration, from the call to its return.
	Latency []time.Duration
	// Sessions is the SMTP sessions the sink served and Channels the
	// channels the relay opened over every Send, the first included: 1
	// each when the session lingered between them.
	Sessions int64
	Channels int
}

// RunWarm sends one email with Send, so that the WebSocket and a session
// are up, then n more, one at a time, each gap after the previous one
// returned: a web handler's one email per request. Each email must be
// delivered to every recipient at its first attempt and the sink must have
// received exactly those n+1 messages.
func RunWarm(ctx context.Context, c *mxrelay.Client, e *Env, m Mail, n int, gap time.Duration) (Warm, error) {
	sink0 := e.Sink.Stats()
	relay0, err := e.RelayStats()
	if err != nil {
		return Warm{}, err
	}
	w := Warm{Latency: make([]time.Duration, 0, n)}
	for i := range n + 1 {
		if i > 0 {
			if err := pause(ctx, gap); err != nil {
				return Warm{}, err
			}
		}
		start := time.Now()
		res, err := c.Send(ctx, mxrelay.Email{From: m.From, To: m.To, Body: bytes.NewReader(m.Body)})
		took := time.Since(start)
		if res == nil {
			return Warm{}, fmt.Errorf("bench: Send %d: %w", i+1, err)
		}
		if err := firstAttempt(res); err != nil {
			return Warm{}, fmt.Errorf("bench: Send %d: %w", i+1, err)
		}
		if i > 0 {
			w.Latency = append(w.Latency, took)
		}
	}
	if err := expectDelta(e.Sink, sink0, n+1, int64(len(m.Body))); err != nil {
		return Warm{}, err
	}
	relay1, err := e.RelayStats()
	if err != nil {
		return Warm{}, err
	}
	w.Sessions = e.Sink.Stats().Sessions - sink0.Sessions
	w.Channels = relay1.Channels - relay0.Channels
	return w, nil
}

// pause waits d, or until ctx ends.
func pause(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("bench: %w", ctx.Err())
	}
}

// WarmRow is a row of the warm-Sends table: RunWarm with one client
// configuration.
type WarmRow struct {
	Label string
	RTT   time.Duration
	// Linger and PerSession are the client's Options.Linger (negative:
	// none) and MaxEmailsPerSession.
	Linger     time.Duration
	PerSession int
	Warm
	P50, P99 time.Duration
	Err      error // the row failed: no figure of it holds
}

// InRTT is d in round trips of the row's RTT; 0 at 0 RTT.
func (r WarmRow) InRTT(d time.Duration) float64 {
	if r.RTT <= 0 {
		return 0
	}
	return float64(d) / float64(r.RTT)
}

// The client's defaults that the warm-Sends rows name.
const (
	defaultLinger     = 10 * time.Second
	defaultPerSession = 10
)

// warmVariant is one client configuration of the warm-Sends table.
type warmVariant struct {
	linger     time.Duration // Options.Linger: negative none
	perSession int           // Options.MaxEmailsPerSession
}

// warmVariants are the rows of the warm-Sends table: a lingering session
// with the benchmark's MaxEmailsPerSession and with the client's default,
// and no linger (a session per Send, as before sessions lingered).
func warmVariants(cfg Config) []warmVariant {
	per := cfg.PerSession
	if per == 0 {
		per = 1000
	}
	return []warmVariant{
		{linger: defaultLinger, perSession: per},
		{linger: defaultLinger, perSession: defaultPerSession},
		{linger: -1, perSession: per},
	}
}

func warmRow(ctx context.Context, cfg Config, e *Env, v warmVariant, m Mail) (row WarmRow) {
	o := mxrelay.Options{MaxEmailsPerSession: v.perSession, Linger: v.linger, PipelineWindow: cfg.Window}
	linger := "Linger " + v.linger.String()
	if v.linger < 0 {
		linger = "no Linger"
	}
	row = WarmRow{Label: fmt.Sprintf("%s, MaxEmailsPerSession %d", linger, v.perSession), RTT: e.RTT, Linger: v.linger, PerSession: v.perSession}
	defer func() {
		if row.Err != nil {
			row.Err = fmt.Errorf("warm Sends, %s, at %v: %w", row.Label, row.RTT, row.Err)
		}
	}()
	c, err := e.NewClientWith(o)
	if err != nil {
		row.Err = err
		return row
	}
	defer closeClient(c)
	rctx, cancel := context.WithTimeout(ctx, cfg.Timeout)
	defer cancel()
	row.Warm, row.Err = RunWarm(rctx, c, e, m, cfg.WarmSends, cfg.WarmGap)
	if row.Err == nil {
		row.P50, row.P99 = Percentile(row.Latency, 50), Percentile(row.Latency, 99)
	}
	return row
}

func (r WarmRow) summary() string {
	if r.Err != nil {
		return "FAILED: " + r.Err.Error()
	}
	return fmt.Sprintf("%v warm Sends, %s: p50 %.2f RTT, p99 %.2f RTT, %d sessions for %d Sends",
		r.RTT, r.Label, r.InRTT(r.P50), r.InRTT(r.P99), r.Sessions, len(r.Latency)+1)
}
