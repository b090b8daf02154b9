package main

import (
	"context"
	"fmt"
	"io"
	"sort"
	"strings"
	"sync"

	"go.opentelemetry.io/otel/attribute"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"

	"github.com/mxrelay/mxrelay"
	mxrelayotel "github.com/mxrelay/mxrelay/otel"
	"github.com/mxrelay/mxrelay/relaytest"
)

// printer is a span exporter that keeps a line per span, for run to print
// once the Client is closed (spans end on the Client's event goroutine).
type printer struct {
	mu    sync.Mutex
	lines []string
}

func (p *printer) ExportSpans(_ context.Context, spans []sdktrace.ReadOnlySpan) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, s := range spans {
		p.lines = append(p.lines, fmt.Sprintf("span %s links=%d status=%s %s", s.Name(), len(s.Links()), s.Status().Code, kv(s.Attributes())))
	}
	return nil
}

func (*printer) Shutdown(context.Context) error { return nil }

// runOTel sends three emails (one refused) through a Client instrumented
// with the otel module, and prints its spans and metrics.
func runOTel(out io.Writer) error {
	relay := relaytest.NewServer(nil)
	defer relay.Close()
	relay.Inject(relaytest.Fault{Kind: relaytest.ReplaceReply, Command: "RCPT", Recipient: "nobody@example.net", Reply: "550 5.1.1 no such user", Times: -1})

	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	spans := &printer{}
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(spans))
	ctx := context.Background()
	defer mp.Shutdown(ctx)
	defer tp.Shutdown(ctx)

	opts := mxrelay.Options{}
	inst, err := mxrelayotel.Instrument(&opts, mxrelayotel.Config{MeterProvider: mp, TracerProvider: tp})
	if err != nil {
		return err
	}
	c, err := mxrelay.New(relay.URL, relay.APIKey, &opts)
	if err != nil {
		return err
	}
	if err := inst.Observe(c); err != nil {
		return err
	}
	for i, to := range []string{"alice@example.net", "bob@example.net", "nobody@example.net"} {
		body := fmt.Sprintf("From: app@example.com\r\nTo: %s\r\nSubject: %d\r\n\r\nHello.\r\n", to, i)
		_, err := c.Send(ctx, mxrelay.Email{From: "app@example.com", To: []string{to}, Body: strings.NewReader(body)})
		fmt.Fprintf(out, "send to %s: err=%v\n", to, err)
	}
	if err := c.Close(ctx); err != nil { // delivers the last events
		return err
	}

	var rm metricdata.ResourceMetrics
	if err := reader.Collect(ctx, &rm); err != nil {
		return err
	}
	if err := inst.Close(); err != nil {
		return err
	}
	spans.mu.Lock()
	lines := spans.lines
	spans.mu.Unlock()
	var metrics []string
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			metrics = append(metrics, fmt.Sprintf("metric %s %s", m.Name, values(m.Data)))
		}
	}
	sort.Strings(metrics)
	lines = append(lines, metrics...)
	fmt.Fprintln(out, strings.Join(lines, "\n"))
	return nil
}

// values prints a metric's data points: value (a histogram's count) and
// attributes.
func values(data metricdata.Aggregation) string {
	var out []string
	point := func(v any, set attribute.Set) {
		out = append(out, fmt.Sprintf("%v{%s}", v, kv(set.ToSlice())))
	}
	switch d := data.(type) {
	case metricdata.Sum[int64]:
		for _, p := range d.DataPoints {
			point(p.Value, p.Attributes)
		}
	case metricdata.Gauge[int64]:
		for _, p := range d.DataPoints {
			point(p.Value, p.Attributes)
		}
	case metricdata.Gauge[float64]:
		for _, p := range d.DataPoints {
			point(p.Value, p.Attributes)
		}
	case metricdata.Histogram[float64]:
		for _, p := range d.DataPoints {
			point(fmt.Sprintf("count=%d", p.Count), p.Attributes)
		}
	}
	sort.Strings(out)
	return strings.Join(out, " ")
}

// kv prints attributes as key=value.
func kv(attrs []attribute.KeyValue) string {
	var out []string
	for _, a := range attrs {
		out = append(out, fmt.Sprintf("%s=%s", a.Key, a.Value.Emit()))
	}
	return strings.Join(out, " ")
}
