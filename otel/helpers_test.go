package mxrelayotel_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/otel/attribute"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/mxrelay/mxrelay"
	mxrelayotel "github.com/mxrelay/mxrelay/otel"
	"github.com/mxrelay/mxrelay/relaytest"
)

// telemetry is an SDK meter and tracer provider over in-memory readers.
type telemetry struct {
	reader *sdkmetric.ManualReader
	spans  *tracetest.SpanRecorder
	cfg    mxrelayotel.Config
}

func newTelemetry() *telemetry {
	t := &telemetry{reader: sdkmetric.NewManualReader(), spans: tracetest.NewSpanRecorder()}
	t.cfg = mxrelayotel.Config{
		MeterProvider:  sdkmetric.NewMeterProvider(sdkmetric.WithReader(t.reader)),
		TracerProvider: sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(t.spans)),
	}
	return t
}

// collect returns the metrics now, by name.
func (tm *telemetry) collect(t *testing.T) map[string]metricdata.Metrics {
	t.Helper()
	var rm metricdata.ResourceMetrics
	require.NoError(t, tm.reader.Collect(context.Background(), &rm))
	out := map[string]metricdata.Metrics{}
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			out[m.Name] = m
		}
	}
	return out
}

// spansNamed returns the ended spans called name.
func (tm *telemetry) spansNamed(name string) []sdktrace.ReadOnlySpan {
	var out []sdktrace.ReadOnlySpan
	for _, s := range tm.spans.Ended() {
		if s.Name() == name {
			out = append(out, s)
		}
	}
	return out
}

// points are the values of an int64 sum or gauge by the value of key ("" when
// the point lacks it); with an empty key, the total.
func points(t *testing.T, m metricdata.Metrics, key attribute.Key) map[string]int64 {
	t.Helper()
	out := map[string]int64{}
	add := func(set attribute.Set, v int64) {
		val, _ := set.Value(key)
		out[val.Emit()] += v
	}
	switch d := m.Data.(type) {
	case metricdata.Sum[int64]:
		for _, p := range d.DataPoints {
			add(p.Attributes, p.Value)
		}
	case metricdata.Gauge[int64]:
		for _, p := range d.DataPoints {
			add(p.Attributes, p.Value)
		}
	default:
		t.Fatalf("%s: %T is not an int64 sum or gauge", m.Name, m.Data)
	}
	return out
}

// histogramCount is how many values the histogram m recorded.
func histogramCount(t *testing.T, m metricdata.Metrics) uint64 {
	t.Helper()
	d, ok := m.Data.(metricdata.Histogram[float64])
	require.True(t, ok, "%s: %T", m.Name, m.Data)
	var n uint64
	for _, p := range d.DataPoints {
		n += p.Count
	}
	return n
}

// attrs are a span's attributes by key.
func attrs(s sdktrace.ReadOnlySpan) map[attribute.Key]attribute.Value {
	out := map[attribute.Key]attribute.Value{}
	for _, kv := range s.Attributes() {
		out[kv.Key] = kv.Value
	}
	return out
}

// newClient returns a client of relay, with short intervals, closed when the
// test ends.
func newClient(t *testing.T, relay *relaytest.Server, o *mxrelay.Options) *mxrelay.Client {
	t.Helper()
	o.RetryInterval = 5 * time.Millisecond
	o.MaxRetryInterval = 20 * time.Millisecond
	o.IdleTimeout = time.Second
	c, err := mxrelay.New(relay.URL, relay.APIKey, o)
	require.NoError(t, err)
	t.Cleanup(func() { c.Close(context.Background()) })
	return c
}

// email is an email to one recipient.
func email(id, to string) mxrelay.Email {
	body := fmt.Sprintf("From: app@example.com\r\nTo: %s\r\nSubject: %s\r\n\r\nHello.\r\n", to, id)
	return mxrelay.Email{ID: id, From: "app@example.com", To: []string{to}, Body: strings.NewReader(body)}
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// batch are the emails of sendBatch: four delivered, one of them after a
// retry, and one refused for good.
var batch = []struct {
	id, to   string
	priority mxrelay.Priority
}{
	{"normal", "alice@example.net", mxrelay.PriorityNormal},
	{"high", "bob@example.net", mxrelay.PriorityHigh},
	{"low", "carol@example.net", mxrelay.PriorityLow},
	{"refused", "nobody@example.net", mxrelay.PriorityHigh},
	// Last, so that the batch is full when it comes, and CRITICAL, so
	// that its retry does not wait for BatchWait.
	{"busy", "busy@example.net", mxrelay.PriorityCritical},
}

// sendBatch sends batch through an instrumented client in one session
// (BatchWait holds it until all five wait), the retry of "busy" in a second
// one, closes the client and returns the results by email ID, and the
// events the previous OnEvent saw.
func sendBatch(t *testing.T, tm *telemetry) (map[string]*mxrelay.Result, []mxrelay.Event) {
	t.Helper()
	relay := relaytest.NewServer(nil)
	t.Cleanup(relay.Close)
	relay.Inject(relaytest.Fault{Kind: relaytest.ReplaceReply, Command: "RCPT", Recipient: "nobody@example.net", Reply: "550 5.1.1 <nobody@example.net>: no such user", Times: -1})
	relay.Inject(relaytest.Fault{Kind: relaytest.ReplaceReply, Command: "RCPT", Recipient: "busy@example.net", Reply: "450 4.2.1 <busy@example.net>: mailbox busy"})

	var seen []mxrelay.Event // by the OnEvent Instrument wraps, on one goroutine
	o := &mxrelay.Options{
		MaxEmailsPerSession: len(batch),
		BatchWait:           10 * time.Second,
		OnEvent:             func(e mxrelay.Event) { seen = append(seen, e) },
	}
	inst, err := mxrelayotel.Instrument(o, tm.cfg)
	require.NoError(t, err)
	c := newClient(t, relay, o)
	require.NoError(t, inst.Observe(c))

	var handles []*mxrelay.Handle
	for _, m := range batch {
		h, err := c.Enqueue(email(m.id, m.to), mxrelay.WithPriority(m.priority))
		require.NoError(t, err)
		handles = append(handles, h)
	}
	results := map[string]*mxrelay.Result{}
	for _, h := range handles {
		res, _ := h.Wait(ctxT(t))
		require.NotNil(t, res)
		results[res.EmailID] = res
	}
	require.NoError(t, c.Close(ctxT(t)))
	t.Cleanup(func() { require.NoError(t, inst.Close()) })
	return results, seen
}
