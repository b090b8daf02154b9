package mxrelayotel

import (
	"context"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"

	"github.com/mxrelay/mxrelay"
)

// Span names.
const (
	SessionSpanName = "mxrelay.session"
	EmailSpanName   = "mxrelay.email"
)

// recordSpans starts, annotates and ends spans for e. i.mu is held.
func (i *Instrumentation) recordSpans(e mxrelay.Event) {
	switch e.Type {
	case mxrelay.EventSessionQueued:
		i.startSession(e.SessionID, e.Time)
	case mxrelay.EventSessionStarted:
		if s := i.sessions.open(e.SessionID); s != nil {
			n := keySessionEmails.Int(e.EmailCount)
			s.SetAttributes(n)
			s.AddEvent("mxrelay.session.started", trace.WithTimestamp(e.Time), trace.WithAttributes(n))
		}
	case mxrelay.EventSessionCompleted, mxrelay.EventSessionFailed:
		s := i.sessions.open(e.SessionID)
		if s == nil {
			// Its EventSessionQueued was dropped, or the session was
			// forgotten: Duration says when it began.
			s = i.startSession(e.SessionID, e.Time.Add(-e.Duration))
		}
		ok := 0
		for _, r := range e.Results {
			if r.Outcome == mxrelay.OutcomeDelivered {
				ok++
			}
		}
		s.SetAttributes(keySessionOK.Int(ok), keySessionFailed.Int(len(e.Results)-ok))
		if e.Type == mxrelay.EventSessionFailed {
			failed(s, e.Err)
		}
		s.End(trace.WithTimestamp(e.Time))
		i.sessions.ended(e.SessionID)
	case mxrelay.EventEmailProcessed, mxrelay.EventEmailFailed:
		if e.Result != nil {
			i.emailSpan(e.Result)
		}
	}
}

// startSession starts the span of session id at start and keeps it.
func (i *Instrumentation) startSession(id string, start time.Time) trace.Span {
	_, s := i.tracer.Start(context.Background(), SessionSpanName,
		trace.WithNewRoot(), trace.WithTimestamp(start), trace.WithSpanKind(trace.SpanKindClient),
		trace.WithAttributes(i.with(keySessionID.String(id), semconv.NetworkProtocolName("smtp"))...))
	i.sessions.add(id, s)
	return s
}

// emailSpan records the span of an email, from its Queued time to its
// result, linked to the span of its last attempt's session.
func (i *Instrumentation) emailSpan(r *mxrelay.Result) {
	attrs := i.with(
		keyEmailID.String(r.EmailID),
		priority(r.Priority),
		keyAttempts.Int(r.Attempts),
		outcome(r.Outcome),
		keyMaybeDelivered.Bool(r.MaybeDelivered),
		keyAccepted.Int(len(r.Accepted)),
		keyRejected.Int(len(r.Rejected)),
	)
	if code := replyCode(r); code != 0 {
		attrs = append(attrs, keyReplyCode.Int(code))
	}
	opts := []trace.SpanStartOption{trace.WithNewRoot(), trace.WithTimestamp(r.Queued), trace.WithAttributes(attrs...)}
	if sc, ok := i.sessions.context(r.SessionID); ok {
		opts = append(opts, trace.WithLinks(trace.Link{SpanContext: sc, Attributes: []attribute.KeyValue{keySessionID.String(r.SessionID)}}))
	}
	_, s := i.tracer.Start(context.Background(), EmailSpanName, opts...)
	if r.Outcome != mxrelay.OutcomeDelivered {
		failedAs(s, resultErrorType(r))
	}
	s.End(trace.WithTimestamp(r.Queued.Add(r.Duration)))
}

// failed marks s as failed with err's error.type: never err's text, where
// SMTP replies quote addresses.
func failed(s trace.Span, err error) { failedAs(s, errorType(err)) }

// failedAs marks s as failed with error.type t.
func failedAs(s trace.Span, t attribute.KeyValue) {
	s.SetAttributes(t)
	s.SetStatus(codes.Error, t.Value.AsString())
}

// sessionSpans are the session spans by session ID, open or ended, the
// oldest forgotten past max. Its user holds the Instrumentation's lock.
type sessionSpans struct {
	max   int
	byID  map[string]*sessionSpan
	order []string // IDs, oldest first
}

type sessionSpan struct {
	span trace.Span // nil once ended
	sc   trace.SpanContext
}

func newSessionSpans(max int) sessionSpans {
	return sessionSpans{max: max, byID: map[string]*sessionSpan{}}
}

// add keeps s as session id's span, forgetting the oldest past max (and
// ending it if it is open).
func (ss *sessionSpans) add(id string, s trace.Span) {
	if old, ok := ss.byID[id]; ok && old.span != nil {
		old.span.End()
	}
	if _, ok := ss.byID[id]; !ok {
		ss.order = append(ss.order, id)
	}
	ss.byID[id] = &sessionSpan{span: s, sc: s.SpanContext()}
	for len(ss.order) > ss.max {
		if old := ss.byID[ss.order[0]]; old.span != nil {
			old.span.End()
		}
		delete(ss.byID, ss.order[0])
		ss.order = ss.order[1:]
	}
}

// open is session id's span if it is open, else nil.
func (ss *sessionSpans) open(id string) trace.Span {
	if s, ok := ss.byID[id]; ok {
		return s.span
	}
	return nil
}

// context is session id's span context, if it is known.
func (ss *sessionSpans) context(id string) (trace.SpanContext, bool) {
	s, ok := ss.byID[id]
	if !ok {
		return trace.SpanContext{}, false
	}
	return s.sc, true
}

// ended records that session id's span has ended; its context stays for
// the links of emails that finish later.
func (ss *sessionSpans) ended(id string) {
	if s, ok := ss.byID[id]; ok {
		s.span = nil
	}
}

// endAll ends the spans still open, now.
func (ss *sessionSpans) endAll() {
	for _, id := range ss.order {
		if s := ss.byID[id]; s.span != nil {
			s.span.End()
			s.span = nil
		}
	}
}
