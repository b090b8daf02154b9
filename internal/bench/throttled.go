package bench

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/mxrelay/mxrelay"
	"github.com/mxrelay/mxrelay/relaytest"
)

// throttleReply is what the throttling upstream answers to a MAIL past its
// limit (relaytest's default, spelled out for the check of the failures).
const throttleReply = "451 4.7.0 Throttling: too many messages, slow down"

// throttleSetup is the Env of the throttling-upstream table: an upstream
// that accepts cfg.ThrottleLimit transactions a second.
func throttleSetup(cfg Config) Setup {
	return Setup{RTT: cfg.FeatureRTT, Throttle: &relaytest.Throttle{Limit: cfg.ThrottleLimit, Per: time.Second, Reply: throttleReply}}
}

// Ending is how a batch of emails ended (RunBatch).
type Ending struct {
	Delivered, Failed int
	// Elapsed runs from the first Enqueue call to the last result;
	// LastDelivered and LastFailed from the same start to the last
	// delivered email's result and the last failed one's (zero when none
	// was).
	Elapsed, LastDelivered, LastFailed time.Duration
	// Attempts is the most attempts an email took.
	Attempts int
}

// RunBatch enqueues emails on c at once and waits for every result. Each
// result must be delivered to every recipient, or failed (OutcomeFailed,
// never unknown or handed back) with every recipient refused with a reply
// of code refused; accept, if not nil, checks each result further (i is
// its email's index in emails, at its time from the first Enqueue call). The sink must have received exactly the
// delivered ones, each of size octets. Otherwise the run fails.
func RunBatch(ctx context.Context, c *mxrelay.Client, sink Counter, emails []mxrelay.Email, size int, refused int, accept func(i int, res *mxrelay.Result, at time.Duration) error) (Ending, error) {
	before := sink.Stats()
	start := time.Now()
	handles := make([]*mxrelay.Handle, 0, len(emails))
	for _, em := range emails {
		h, err := c.Enqueue(em)
		if err != nil {
			return Ending{}, fmt.Errorf("bench: enqueue: %w", err)
		}
		handles = append(handles, h)
	}
	var end Ending
	for i, h := range handles {
		res, err := h.Wait(ctx)
		if res == nil {
			return Ending{}, fmt.Errorf("bench: waiting for results: %w", err)
		}
		if err := endedAs(res, refused); err != nil {
			return Ending{}, err
		}
		at := res.Queued.Add(res.Duration).Sub(start)
		if accept != nil {
			if err := accept(i, res, at); err != nil {
				return Ending{}, fmt.Errorf("bench: email %s: %w", res.EmailID, err)
			}
		}
		end.Elapsed = max(end.Elapsed, at)
		end.Attempts = max(end.Attempts, res.Attempts)
		if res.Delivered() {
			end.Delivered++
			end.LastDelivered = max(end.LastDelivered, at)
		} else {
			end.Failed++
			end.LastFailed = max(end.LastFailed, at)
		}
	}
	if err := expectDelta(sink, before, end.Delivered, int64(size)); err != nil {
		return Ending{}, err
	}
	return end, nil
}

// endedAs checks that res is delivered to every recipient, or failed with
// every recipient refused with code.
func endedAs(res *mxrelay.Result, code int) error {
	if res.Delivered() {
		if len(res.Rejected) > 0 {
			return fmt.Errorf("bench: email %s delivered, but %d recipients refused: %v", res.EmailID, len(res.Rejected), res.Rejected[0])
		}
		return nil
	}
	var se *mxrelay.SMTPError
	if res.Outcome != mxrelay.OutcomeFailed || !errors.As(res.Err, &se) || se.Code != code {
		return fmt.Errorf("bench: email %s: %v, want delivered or refused with %d: %v", res.EmailID, res.Outcome, code, res.Err)
	}
	for _, r := range res.Rejected {
		if r.Code != code {
			return fmt.Errorf("bench: email %s: %s refused with %d, want %d", res.EmailID, r.Address, r.Code, code)
		}
	}
	return nil
}

// ThrottleRow is a row of the throttling-upstream table: ThrottleN emails
// at once against an upstream that accepts Limit emails a second and
// answers MAIL past it 451 4.7.0.
type ThrottleRow struct {
	Label string
	RTT   time.Duration
	// Disable is Options.Throttle.Disable: no throttle feedback.
	Disable bool
	N       int     // emails
	Limit   float64 // emails a second the upstream accepts
	Ending
	// Throttled is the MAIL commands the upstream answered 451 (the
	// relay's Stats.Throttled); Cuts the client's Stats.ThrottleCuts.
	Throttled int
	Cuts      int64
	Err       error // the row failed: no figure of it holds
}

// Rate is the emails delivered a second, over Elapsed.
func (r ThrottleRow) Rate() float64 { return float64(r.Delivered) / r.Elapsed.Seconds() }

// OfLimit is Rate over the upstream's limit.
func (r ThrottleRow) OfLimit() float64 { return r.Rate() / r.Limit }

// ThrottledShare is the 451 replies over the emails.
func (r ThrottleRow) ThrottledShare() float64 { return float64(r.Throttled) / float64(r.N) }

func throttleRow(ctx context.Context, cfg Config, e *Env, disable bool, m Mail) (row ThrottleRow) {
	row = ThrottleRow{Label: "throttle feedback (default)", RTT: e.RTT, Disable: disable, N: cfg.ThrottleN, Limit: float64(cfg.ThrottleLimit)}
	if disable {
		row.Label = "Throttle.Disable"
	}
	defer func() {
		if row.Err != nil {
			row.Err = fmt.Errorf("throttling upstream, %s, at %v: %w", row.Label, row.RTT, row.Err)
		}
	}()
	c, err := e.NewClientWith(mxrelay.Options{
		MaxQueueSize:  cfg.ThrottleN,
		RetryInterval: cfg.RetryInterval,
		Throttle:      mxrelay.Throttle{Disable: disable},
	})
	if err != nil {
		row.Err = err
		return row
	}
	defer closeClient(c)
	before, err := e.RelayStats()
	if err != nil {
		row.Err = err
		return row
	}
	emails := make([]mxrelay.Email, cfg.ThrottleN)
	for i := range emails {
		emails[i] = mxrelay.Email{From: m.From, To: m.To, Body: bytes.NewReader(m.Body)}
	}
	rctx, cancel := context.WithTimeout(ctx, cfg.Timeout)
	defer cancel()
	row.Ending, row.Err = RunBatch(rctx, c, e.Sink, emails, len(m.Body), 451, nil)
	if row.Err != nil {
		return row
	}
	after, err := e.RelayStats()
	if err != nil {
		row.Err = err
		return row
	}
	row.Throttled = after.Throttled - before.Throttled
	row.Cuts = c.Stats().ThrottleCuts
	return row
}

func (r ThrottleRow) summary() string {
	if r.Err != nil {
		return "FAILED: " + r.Err.Error()
	}
	return fmt.Sprintf("%v throttling upstream, %s: %d of %d failed, %.0f%% of the limit, %d replies 451 (%.1f%% of the emails), %d cuts",
		r.RTT, r.Label, r.Failed, r.N, 100*r.OfLimit(), r.Throttled, 100*r.ThrottledShare(), r.Cuts)
}
