package mxrelayotel_test

import (
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"

	"github.com/mxrelay/mxrelay"
	mxrelayotel "github.com/mxrelay/mxrelay/otel"
)

func TestSpans(t *testing.T) {
	tm := newTelemetry()
	results, _ := sendBatch(t, tm)

	sessions := map[string]sdktrace.ReadOnlySpan{}
	for _, s := range tm.spansNamed(mxrelayotel.SessionSpanName) {
		sessions[attrs(s)["mxrelay.session.id"].AsString()] = s
		assert.Equal(t, trace.SpanKindClient, s.SpanKind())
		assert.Equal(t, codes.Unset, s.Status().Code)
		assert.Equal(t, "smtp", attrs(s)["network.protocol.name"].AsString())
	}
	require.Len(t, sessions, 2, "the batch, then the retry")
	first := sessions[results["normal"].SessionID]
	require.NotNil(t, first)
	a := attrs(first)
	assert.Equal(t, int64(5), a["mxrelay.session.emails"].AsInt64())
	assert.Equal(t, int64(3), a["mxrelay.session.emails.delivered"].AsInt64())
	assert.Equal(t, int64(1), a["mxrelay.session.emails.failed"].AsInt64(), "refused; busy went on to be retried")
	require.Len(t, first.Events(), 1)
	assert.Equal(t, "mxrelay.session.started", first.Events()[0].Name)

	emails := tm.spansNamed(mxrelayotel.EmailSpanName)
	require.Len(t, emails, len(batch))
	for _, s := range emails {
		a := attrs(s)
		r := results[a["mxrelay.email.id"].AsString()]
		require.NotNil(t, r, "a span per email")
		assert.True(t, s.StartTime().Equal(r.Queued), "starts when the email was queued")
		assert.True(t, s.EndTime().Equal(r.Queued.Add(r.Duration)), "ends at its result")
		assert.False(t, s.Parent().IsValid(), "a root span")
		assert.Equal(t, strings.ToLower(r.Priority.String()), a["mxrelay.email.priority"].AsString())
		assert.Equal(t, int64(r.Attempts), a["mxrelay.email.attempts"].AsInt64())
		assert.False(t, a["mxrelay.email.maybe_delivered"].AsBool())

		require.Len(t, s.Links(), 1, r.EmailID)
		session := sessions[r.SessionID]
		require.NotNil(t, session)
		assert.Equal(t, session.SpanContext(), s.Links()[0].SpanContext, "linked to its last session")

		for _, kv := range append(s.Attributes(), session.Attributes()...) {
			assert.NotContains(t, kv.Value.Emit(), "@", "no address in %s", kv.Key)
		}
		if r.EmailID == "refused" {
			assert.Equal(t, codes.Error, s.Status().Code)
			assert.Equal(t, "550", s.Status().Description)
			assert.Equal(t, int64(550), a["mxrelay.smtp.reply.code"].AsInt64())
			assert.Equal(t, "550", a["error.type"].AsString())
			assert.Equal(t, int64(1), a["mxrelay.email.recipients.rejected"].AsInt64())
			continue
		}
		assert.Equal(t, codes.Unset, s.Status().Code, r.EmailID)
		assert.Equal(t, int64(250), a["mxrelay.smtp.reply.code"].AsInt64())
		assert.Equal(t, int64(1), a["mxrelay.email.recipients.accepted"].AsInt64())
	}
	assert.Equal(t, int64(2), attrs(spanOf(emails, "busy"))["mxrelay.email.attempts"].AsInt64())
	assert.NotEqual(t, results["normal"].SessionID, results["busy"].SessionID, "busy was delivered by the retry")
}

// spanOf is the email span of id.
func spanOf(spans []sdktrace.ReadOnlySpan, id string) sdktrace.ReadOnlySpan {
	for _, s := range spans {
		if attrs(s)["mxrelay.email.id"].AsString() == id {
			return s
		}
	}
	return nil
}

// events are made by hand below: the session-span map's bounds do not
// need a relay.
func TestSessionSpansBounded(t *testing.T) {
	tm := newTelemetry()
	cfg := tm.cfg
	cfg.MaxSessions = 2
	cfg.Attributes = []attribute.KeyValue{attribute.String("client", "a")}
	o := &mxrelay.Options{}
	inst, err := mxrelayotel.Instrument(o, cfg)
	require.NoError(t, err)
	t0 := time.Now()
	at := func(d time.Duration) time.Time { return t0.Add(d * time.Millisecond) }

	// s1 never ends; s2 and s3 push it out: it ends, at the time it is
	// forgotten.
	for n, id := range []string{"s1", "s2", "s3"} {
		o.OnEvent(mxrelay.Event{Type: mxrelay.EventSessionQueued, SessionID: id, Time: at(time.Duration(n))})
	}
	ended := tm.spansNamed(mxrelayotel.SessionSpanName)
	require.Len(t, ended, 1)
	assert.Equal(t, "s1", attrs(ended[0])["mxrelay.session.id"].AsString())
	assert.Equal(t, "a", attrs(ended[0])["client"].AsString())

	// s2 fails: its span ends with the event's time, status Error.
	o.OnEvent(mxrelay.Event{Type: mxrelay.EventSessionFailed, SessionID: "s2", Time: at(10), Duration: 10 * time.Millisecond, Err: mxrelay.ErrAuthFailed})
	ended = tm.spansNamed(mxrelayotel.SessionSpanName)
	require.Len(t, ended, 2)
	s2 := ended[1]
	assert.True(t, s2.StartTime().Equal(at(1)))
	assert.True(t, s2.EndTime().Equal(at(10)))
	assert.Equal(t, codes.Error, s2.Status().Code)
	assert.Equal(t, "auth_failed", s2.Status().Description)

	// An email of the ended s2 still links to it.
	res := &mxrelay.Result{EmailID: "e1", SessionID: "s2", Outcome: mxrelay.OutcomeHandedBack, Queued: at(0), Duration: 20 * time.Millisecond, Attempts: 1,
		Err: &mxrelay.EmailError{EmailID: "e1", Attempts: 1, Err: mxrelay.ErrClosed}}
	o.OnEvent(mxrelay.Event{Type: mxrelay.EventEmailFailed, EmailID: "e1", SessionID: "s2", Result: res, Err: res.Err, Time: at(20)})
	emails := tm.spansNamed(mxrelayotel.EmailSpanName)
	require.Len(t, emails, 1)
	require.Len(t, emails[0].Links(), 1)
	assert.Equal(t, s2.SpanContext(), emails[0].Links()[0].SpanContext)
	assert.Equal(t, "closed", emails[0].Status().Description)
	assert.Equal(t, "handed_back", attrs(emails[0])["mxrelay.email.outcome"].AsString())
	_, hasCode := attrs(emails[0])["mxrelay.smtp.reply.code"]
	assert.False(t, hasCode, "no reply decided it")

	// A session whose start was lost (a dropped event) gets its span from
	// the end's Duration.
	o.OnEvent(mxrelay.Event{Type: mxrelay.EventSessionCompleted, SessionID: "s9", Time: at(30), Duration: 5 * time.Millisecond})
	ended = tm.spansNamed(mxrelayotel.SessionSpanName)
	require.Len(t, ended, 3)
	assert.True(t, ended[2].StartTime().Equal(at(25)))

	// Close ends s3, still open; later events make no span.
	require.NoError(t, inst.Close())
	require.Len(t, tm.spansNamed(mxrelayotel.SessionSpanName), 4)
	o.OnEvent(mxrelay.Event{Type: mxrelay.EventSessionQueued, SessionID: "s10", Time: at(40)})
	o.OnEvent(mxrelay.Event{Type: mxrelay.EventSessionCompleted, SessionID: "s10", Time: at(41)})
	assert.Len(t, tm.spans.Ended(), 5)
}
