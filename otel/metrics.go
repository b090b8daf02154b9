package mxrelayotel

import (
	"context"
	"errors"

	"go.opentelemetry.io/otel/metric"

	"github.com/mxrelay/mxrelay"
)

// durationBuckets are the semantic conventions' advice for durations in
// seconds, extended to five minutes for emails that wait for retries.
var durationBuckets = []float64{.005, .01, .025, .05, .075, .1, .25, .5, .75, 1, 2.5, 5, 7.5, 10, 30, 60, 120, 300}

// instruments are the meter's instruments, made once by Instrument.
type instruments struct {
	meter metric.Meter

	delivered, failed, unknown, maybe, retries metric.Int64Counter
	sessionsCompleted, sessionsFailed          metric.Int64Counter
	sendDuration, txDuration                   metric.Float64Histogram

	depth, inFlight, window metric.Int64ObservableGauge
	oldest, rate            metric.Float64ObservableGauge
	dropped                 metric.Int64ObservableCounter
}

func newInstruments(meter metric.Meter) (instruments, error) {
	m := instruments{meter: meter}
	var errs []error
	counter := func(name, unit, desc string) metric.Int64Counter {
		c, err := meter.Int64Counter(name, metric.WithUnit(unit), metric.WithDescription(desc))
		errs = append(errs, err)
		return c
	}
	histogram := func(name, desc string) metric.Float64Histogram {
		h, err := meter.Float64Histogram(name, metric.WithUnit("s"), metric.WithDescription(desc),
			metric.WithExplicitBucketBoundaries(durationBuckets...))
		errs = append(errs, err)
		return h
	}
	gauge := func(name, unit, desc string) metric.Int64ObservableGauge {
		g, err := meter.Int64ObservableGauge(name, metric.WithUnit(unit), metric.WithDescription(desc))
		errs = append(errs, err)
		return g
	}
	floatGauge := func(name, unit, desc string) metric.Float64ObservableGauge {
		g, err := meter.Float64ObservableGauge(name, metric.WithUnit(unit), metric.WithDescription(desc))
		errs = append(errs, err)
		return g
	}
	m.delivered = counter("mxrelay.emails.delivered", "{email}", "Emails the upstream accepted for at least one recipient.")
	m.failed = counter("mxrelay.emails.failed", "{email}", "Emails not delivered: failed, unknown or handed back (mxrelay.email.outcome).")
	m.unknown = counter("mxrelay.emails.unknown", "{email}", "Emails whose outcome is unknown: the last end of data went out with no trusted reply.")
	m.maybe = counter("mxrelay.emails.maybe_delivered", "{email}", "Emails, whatever their outcome, of which an end of data went out with no trusted reply: they may have been delivered, perhaps twice.")
	m.retries = counter("mxrelay.email.retries", "{retry}", "Retries scheduled after a temporary failure.")
	m.sessionsCompleted = counter("mxrelay.sessions.completed", "{session}", "SMTP sessions that ended with QUIT.")
	m.sessionsFailed = counter("mxrelay.sessions.failed", "{session}", "SMTP sessions that could not start or broke.")
	m.sendDuration = histogram("mxrelay.email.send.duration", "Time from Enqueue to an email's result.")
	m.txDuration = histogram("mxrelay.email.transaction.duration", "Duration of the SMTP transaction that delivered an email.")
	m.depth = gauge("mxrelay.queue.depth", "{email}", "Emails waiting to be sent, including those waiting for a retry.")
	m.inFlight = gauge("mxrelay.emails.in_flight", "{email}", "Emails in an SMTP session now.")
	m.window = gauge("mxrelay.pipeline.window", "{transaction}", "Transactions a session may keep in flight now (the adaptive window).")
	m.rate = floatGauge("mxrelay.send.rate", "{email}/s", "The sending rate throttle feedback holds the client to, 0 when it does not.")
	m.oldest = floatGauge("mxrelay.queue.oldest_age", "s", "Age of the oldest waiting email, 0 when none waits.")
	var err error
	m.dropped, err = meter.Int64ObservableCounter("mxrelay.events.dropped", metric.WithUnit("{event}"),
		metric.WithDescription("Events lost because OnEvent fell behind; the other counters miss them."))
	errs = append(errs, err)
	return m, errors.Join(errs...)
}

// recordMetrics counts e.
func (i *Instrumentation) recordMetrics(ctx context.Context, e mxrelay.Event) {
	m := &i.m
	switch e.Type {
	case mxrelay.EventEmailProcessed, mxrelay.EventEmailFailed:
		r := e.Result
		if r == nil {
			return
		}
		attrs := metric.WithAttributes(i.with(priority(r.Priority))...)
		switch r.Outcome {
		case mxrelay.OutcomeDelivered:
			m.delivered.Add(ctx, 1, attrs)
			m.txDuration.Record(ctx, e.Duration.Seconds(), attrs)
			m.sendDuration.Record(ctx, r.Duration.Seconds(), attrs)
		default:
			m.failed.Add(ctx, 1, metric.WithAttributes(i.with(priority(r.Priority), resultErrorType(r), outcome(r.Outcome))...))
			m.sendDuration.Record(ctx, r.Duration.Seconds(), metric.WithAttributes(i.with(priority(r.Priority), resultErrorType(r))...))
		}
		if r.Outcome == mxrelay.OutcomeUnknown {
			m.unknown.Add(ctx, 1, attrs)
		}
		if r.MaybeDelivered {
			m.maybe.Add(ctx, 1, attrs)
		}
	case mxrelay.EventEmailRetrying:
		m.retries.Add(ctx, 1, metric.WithAttributes(i.with()...))
	case mxrelay.EventSessionCompleted:
		m.sessionsCompleted.Add(ctx, 1, metric.WithAttributes(i.with()...))
	case mxrelay.EventSessionFailed:
		m.sessionsFailed.Add(ctx, 1, metric.WithAttributes(i.with()...))
	}
}

// priorities are the four levels, each reported in mxrelay.queue.depth.
var priorities = []mxrelay.Priority{mxrelay.PriorityLow, mxrelay.PriorityNormal, mxrelay.PriorityHigh, mxrelay.PriorityCritical}

// Observe registers the gauges that read c.Stats() at each collection:
// queue depth by priority, the oldest waiting email's age, emails in
// flight, events dropped. One Client per Instrumentation: a second call
// fails, as does a call after Close. Close unregisters them.
func (i *Instrumentation) Observe(c *mxrelay.Client) error {
	if c == nil {
		return errors.New("mxrelayotel: Observe: Client is nil")
	}
	i.mu.Lock()
	defer i.mu.Unlock()
	switch {
	case i.closed:
		return errors.New("mxrelayotel: Observe after Close")
	case i.reg != nil:
		return errors.New("mxrelayotel: Observe: this Instrumentation already observes a Client")
	}
	m := &i.m
	byPriority := make([]metric.ObserveOption, len(priorities))
	for n, p := range priorities {
		byPriority[n] = metric.WithAttributes(i.with(priority(p))...)
	}
	plain := metric.WithAttributes(i.with()...)
	reg, err := m.meter.RegisterCallback(func(_ context.Context, o metric.Observer) error {
		st := c.Stats()
		for n, p := range priorities {
			o.ObserveInt64(m.depth, int64(st.QueuedByPriority[p]), byPriority[n])
		}
		o.ObserveInt64(m.inFlight, int64(st.InFlight), plain)
		o.ObserveInt64(m.window, int64(st.Window), plain)
		o.ObserveFloat64(m.rate, st.SendRate, plain)
		o.ObserveFloat64(m.oldest, st.OldestQueued.Seconds(), plain)
		o.ObserveInt64(m.dropped, st.EventsDropped, plain)
		return nil
	}, m.depth, m.inFlight, m.window, m.rate, m.oldest, m.dropped)
	if err != nil {
		return err
	}
	i.reg = reg
	return nil
}
