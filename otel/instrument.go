package mxrelayotel

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"sync"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"

	"github.com/mxrelay/mxrelay"
)

// ScopeName is the instrumentation scope of the meter and the tracer.
const ScopeName = "github.com/mxrelay/mxrelay/otel"

// DefaultMaxSessions is Config.MaxSessions's zero value.
const DefaultMaxSessions = 1024

// Config configures an Instrumentation. The zero value is useful.
type Config struct {
	// MeterProvider makes the meter. Nil: otel.GetMeterProvider().
	MeterProvider metric.MeterProvider
	// TracerProvider makes the tracer. Nil: otel.GetTracerProvider().
	TracerProvider trace.TracerProvider
	// Attributes are added to every measurement and span: set one (a client
	// name) to tell apart several Clients reporting to one provider. Zero:
	// none.
	Attributes []attribute.KeyValue
	// MaxSessions bounds the session spans kept to link email spans to:
	// open ones and recently ended ones. Zero: DefaultMaxSessions.
	MaxSessions int
}

// Instrumentation reports one Client. Its methods are safe for concurrent
// use.
type Instrumentation struct {
	attrs  []attribute.KeyValue
	m      instruments
	tracer trace.Tracer

	mu       sync.Mutex
	closed   bool
	reg      metric.Registration // set by Observe
	sessions sessionSpans
}

// Instrument makes an Instrumentation and sets o.OnEvent to report every
// event, then to call the OnEvent o had, if any. Call it before
// mxrelay.New(url, key, o). It fails when o is nil, MaxSessions is
// negative, or the meter refuses an instrument.
func Instrument(o *mxrelay.Options, cfg Config) (*Instrumentation, error) {
	if o == nil {
		return nil, errors.New("mxrelayotel: Options is nil")
	}
	if cfg.MaxSessions < 0 {
		return nil, errors.New("mxrelayotel: MaxSessions is negative")
	}
	if cfg.MaxSessions == 0 {
		cfg.MaxSessions = DefaultMaxSessions
	}
	mp, tp := cfg.MeterProvider, cfg.TracerProvider
	if mp == nil {
		mp = otel.GetMeterProvider()
	}
	if tp == nil {
		tp = otel.GetTracerProvider()
	}
	m, err := newInstruments(mp.Meter(ScopeName))
	if err != nil {
		return nil, err
	}
	i := &Instrumentation{
		attrs:    append([]attribute.KeyValue(nil), cfg.Attributes...),
		m:        m,
		tracer:   tp.Tracer(ScopeName),
		sessions: newSessionSpans(cfg.MaxSessions),
	}
	next := o.OnEvent
	o.OnEvent = func(e mxrelay.Event) {
		i.record(e)
		if next != nil {
			next(e)
		}
	}
	return i, nil
}

// record reports e, unless i is closed.
func (i *Instrumentation) record(e mxrelay.Event) {
	ctx := context.Background()
	i.mu.Lock()
	defer i.mu.Unlock()
	if i.closed {
		return
	}
	i.recordMetrics(ctx, e)
	i.recordSpans(e)
}

// Close stops reporting: it unregisters the gauges of Observe and ends the
// session spans still open, at the time of the call. Events that arrive
// afterwards are passed to the previous OnEvent only. Close the Client
// first, so that its last events are reported. Safe to call more than
// once.
func (i *Instrumentation) Close() error {
	i.mu.Lock()
	defer i.mu.Unlock()
	if i.closed {
		return nil
	}
	i.closed = true
	i.sessions.endAll()
	if i.reg == nil {
		return nil
	}
	return i.reg.Unregister()
}

// with returns the configured attributes followed by kv.
func (i *Instrumentation) with(kv ...attribute.KeyValue) []attribute.KeyValue {
	return append(append(make([]attribute.KeyValue, 0, len(i.attrs)+len(kv)), i.attrs...), kv...)
}

// Attribute keys of this package; error.type and network.protocol.name
// are the semantic conventions'.
const (
	keyPriority       = attribute.Key("mxrelay.email.priority")
	keyEmailID        = attribute.Key("mxrelay.email.id")
	keyAttempts       = attribute.Key("mxrelay.email.attempts")
	keyOutcome        = attribute.Key("mxrelay.email.outcome")
	keyMaybeDelivered = attribute.Key("mxrelay.email.maybe_delivered")
	keyAccepted       = attribute.Key("mxrelay.email.recipients.accepted")
	keyRejected       = attribute.Key("mxrelay.email.recipients.rejected")
	keyReplyCode      = attribute.Key("mxrelay.smtp.reply.code")
	keySessionID      = attribute.Key("mxrelay.session.id")
	keySessionEmails  = attribute.Key("mxrelay.session.emails")
	keySessionOK      = attribute.Key("mxrelay.session.emails.delivered")
	keySessionFailed  = attribute.Key("mxrelay.session.emails.failed")
)

// priority is p's attribute: low, normal, high, critical.
func priority(p mxrelay.Priority) attribute.KeyValue {
	return keyPriority.String(strings.ToLower(p.String()))
}

// outcome is o's attribute: delivered, failed, unknown, handed_back.
func outcome(o mxrelay.Outcome) attribute.KeyValue {
	return keyOutcome.String(strings.ToLower(o.String()))
}

// resultErrorType is error.type for an email not delivered: unknown_outcome
// or closed (handed back) by its Outcome, otherwise its error's.
func resultErrorType(r *mxrelay.Result) attribute.KeyValue {
	switch r.Outcome {
	case mxrelay.OutcomeUnknown:
		return semconv.ErrorTypeKey.String("unknown_outcome")
	case mxrelay.OutcomeHandedBack:
		return semconv.ErrorTypeKey.String("closed")
	}
	return errorType(r.Err)
}

// errorType classifies err for error.type, with few values: the SMTP reply
// code, or a word for the library's error kinds.
func errorType(err error) attribute.KeyValue {
	var se *mxrelay.SMTPError
	var ce *mxrelay.ConnectError
	var v string
	switch {
	case errors.Is(err, mxrelay.ErrUnknownOutcome):
		v = "unknown_outcome"
	case errors.As(err, &se):
		v = strconv.Itoa(se.Code)
	case errors.Is(err, mxrelay.ErrClosed):
		v = "closed"
	case errors.Is(err, mxrelay.ErrCanceled), errors.Is(err, context.Canceled):
		v = "canceled"
	case errors.Is(err, context.DeadlineExceeded):
		v = "timeout"
	case errors.Is(err, mxrelay.ErrAuthFailed):
		v = "auth_failed"
	case errors.As(err, &ce):
		v = "connect"
	case errors.Is(err, mxrelay.ErrInvalidEmail):
		v = "invalid_email"
	default:
		return semconv.ErrorTypeOther
	}
	return semconv.ErrorTypeKey.String(v)
}

// replyCode is the SMTP reply code that decided r, 0 when none did.
func replyCode(r *mxrelay.Result) int {
	if r.Reply.Code != 0 {
		return r.Reply.Code
	}
	var se *mxrelay.SMTPError
	if errors.As(r.Err, &se) {
		return se.Code
	}
	return 0
}
