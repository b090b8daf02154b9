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

// deferredRcpt is the recipient the upstream of the deferred-lane table
// answers 450, on every attempt.
const deferredRcpt = "deferred@example.com"

// deferredSetup is the Env of the deferred-lane table: the relay answers
// every RCPT to deferredRcpt with a 450, as Postfix does to an address it
// cannot verify now, and never forwards it.
func deferredSetup(cfg Config) Setup {
	return Setup{RTT: cfg.FeatureRTT, Faults: []relaytest.Fault{{
		Kind: relaytest.ReplaceReply, Command: "RCPT", Recipient: deferredRcpt, Times: -1,
		Reply: "450 4.1.1 <" + deferredRcpt + ">: Recipient address rejected: unverified address",
	}}}
}

// DeferredRow is the row of the deferred-lane table: DeferredN emails to
// deferredRcpt, which the upstream answers 450 until their retries run
// out, enqueued at once before DeferredN good ones, with the client's
// default options.
type DeferredRow struct {
	Label string
	RTT   time.Duration
	N     int // deferred emails, and good ones
	// Ending's LastDelivered is when the last good email was delivered,
	// LastFailed when the last deferred one failed, both from the first
	// Enqueue; Attempts the attempts of a deferred one.
	Ending
	// MedianGood is the median of the good emails' times from the first
	// Enqueue to their result.
	MedianGood time.Duration
	Err        error // the row failed: no figure of it holds
}

func deferredRow(ctx context.Context, cfg Config, e *Env, m Mail) (row DeferredRow) {
	n := cfg.DeferredN
	row = DeferredRow{Label: "default options", RTT: e.RTT, N: n}
	defer func() {
		if row.Err != nil {
			row.Err = fmt.Errorf("deferred lane, %s, at %v: %w", row.Label, row.RTT, row.Err)
		}
	}()
	c, err := e.NewClientWith(mxrelay.Options{MaxQueueSize: 2 * n, RetryInterval: cfg.RetryInterval})
	if err != nil {
		row.Err = err
		return row
	}
	defer closeClient(c)
	emails := make([]mxrelay.Email, 2*n)
	for i := range emails {
		to := m.To
		if i < n {
			to = []string{deferredRcpt}
		}
		emails[i] = mxrelay.Email{From: m.From, To: to, Body: bytes.NewReader(m.Body)}
	}
	var good []time.Duration
	accept := func(i int, res *mxrelay.Result, at time.Duration) error {
		if i < n {
			if res.Delivered() {
				return errors.New("delivered to the recipient the upstream defers")
			}
			return nil
		}
		good = append(good, at)
		return firstAttempt(res)
	}
	rctx, cancel := context.WithTimeout(ctx, cfg.Timeout)
	defer cancel()
	row.Ending, row.Err = RunBatch(rctx, c, e.Sink, emails, len(m.Body), 450, accept)
	if row.Err == nil {
		row.MedianGood = Percentile(good, 50)
	}
	return row
}

func (r DeferredRow) summary() string {
	if r.Err != nil {
		return "FAILED: " + r.Err.Error()
	}
	return fmt.Sprintf("%v deferred lane, %s: the last of %d good emails delivered after %s, the last of %d deferred ones failed after %s (%d attempts)",
		r.RTT, r.Label, r.N, r.LastDelivered.Round(time.Millisecond), r.N, r.LastFailed.Round(time.Millisecond), r.Attempts)
}
