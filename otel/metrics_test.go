package mxrelayotel_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"

	"github.com/mxrelay/mxrelay"
	mxrelayotel "github.com/mxrelay/mxrelay/otel"
	"github.com/mxrelay/mxrelay/relaytest"
)

const (
	keyPriority  = attribute.Key("mxrelay.email.priority")
	keyErrorType = attribute.Key("error.type")
	keyOutcome   = attribute.Key("mxrelay.email.outcome")
)

func TestCountersAndHistograms(t *testing.T) {
	tm := newTelemetry()
	results, _ := sendBatch(t, tm)
	require.Error(t, results["refused"].Err)
	m := tm.collect(t)

	assert.Equal(t, map[string]int64{"normal": 1, "high": 1, "low": 1, "critical": 1}, points(t, m["mxrelay.emails.delivered"], keyPriority))
	assert.Equal(t, map[string]int64{"high": 1}, points(t, m["mxrelay.emails.failed"], keyPriority))
	assert.Equal(t, map[string]int64{"550": 1}, points(t, m["mxrelay.emails.failed"], keyErrorType))
	assert.Equal(t, map[string]int64{"failed": 1}, points(t, m["mxrelay.emails.failed"], keyOutcome))
	assert.NotContains(t, m, "mxrelay.emails.unknown", "nothing was maybe delivered")
	assert.NotContains(t, m, "mxrelay.emails.maybe_delivered")
	assert.Equal(t, map[string]int64{"": 1}, points(t, m["mxrelay.email.retries"], ""))
	assert.Equal(t, map[string]int64{"": 2}, points(t, m["mxrelay.sessions.completed"], ""), "the batch, then the retry")
	assert.NotContains(t, m, "mxrelay.sessions.failed")

	assert.Equal(t, uint64(5), histogramCount(t, m["mxrelay.email.send.duration"]), "every result")
	assert.Equal(t, uint64(4), histogramCount(t, m["mxrelay.email.transaction.duration"]), "every delivery")
	for _, name := range []string{"mxrelay.email.send.duration", "mxrelay.email.transaction.duration"} {
		assert.Equal(t, "s", m[name].Unit, name)
	}
	assert.Equal(t, "{email}", m["mxrelay.emails.delivered"].Unit)

	// Observed after Close: nothing waits, nothing is in flight.
	assert.Equal(t, map[string]int64{"low": 0, "normal": 0, "high": 0, "critical": 0}, points(t, m["mxrelay.queue.depth"], keyPriority))
	assert.Equal(t, map[string]int64{"": 0}, points(t, m["mxrelay.emails.in_flight"], ""))
	assert.Equal(t, map[string]int64{"": 0}, points(t, m["mxrelay.events.dropped"], ""))
}

func TestGauges(t *testing.T) {
	tm := newTelemetry()
	// The first MAIL is never answered: its email stays in flight, in a
	// session of one, and the emails after it wait.
	mailSeen := make(chan struct{})
	var once bool
	relay := relaytest.NewServer(&relaytest.Options{OnSMTPData: func(d relaytest.SMTPData) {
		if !d.FromServer && !once && strings.Contains(string(d.Data), "MAIL FROM") {
			once = true
			close(mailSeen)
		}
	}})
	t.Cleanup(relay.Close)
	relay.Inject(relaytest.Fault{Kind: relaytest.StallReply, Command: "MAIL"})

	o := &mxrelay.Options{MaxEmailsPerSession: 1, CommandTimeout: time.Minute}
	inst, err := mxrelayotel.Instrument(o, tm.cfg)
	require.NoError(t, err)
	c := newClient(t, relay, o)
	require.NoError(t, inst.Observe(c))
	require.Error(t, inst.Observe(c), "one Client per Instrumentation")

	_, err = c.Enqueue(email("stalled", "alice@example.net"), mxrelay.WithPriority(mxrelay.PriorityCritical))
	require.NoError(t, err)
	select {
	case <-mailSeen:
	case <-ctxT(t).Done():
		t.Fatal("the relay saw no MAIL")
	}
	start := time.Now()
	for _, p := range []mxrelay.Priority{mxrelay.PriorityLow, mxrelay.PriorityLow, mxrelay.PriorityHigh} {
		_, err := c.Enqueue(email(p.String(), "bob@example.net"), mxrelay.WithPriority(p))
		require.NoError(t, err)
	}

	m := tm.collect(t)
	assert.Equal(t, map[string]int64{"low": 2, "normal": 0, "high": 1, "critical": 0}, points(t, m["mxrelay.queue.depth"], keyPriority))
	assert.Equal(t, map[string]int64{"": 1}, points(t, m["mxrelay.emails.in_flight"], ""))
	assert.Equal(t, map[string]int64{"": 32}, points(t, m["mxrelay.pipeline.window"], ""), "a first session's adaptive window")
	rate := m["mxrelay.send.rate"].Data.(metricdata.Gauge[float64]).DataPoints
	require.Len(t, rate, 1)
	assert.Zero(t, rate[0].Value, "not throttled")
	oldest := m["mxrelay.queue.oldest_age"].Data.(metricdata.Gauge[float64]).DataPoints
	require.Len(t, oldest, 1)
	assert.Greater(t, oldest[0].Value, 0.0)
	assert.LessOrEqual(t, oldest[0].Value, time.Since(start).Seconds())
	assert.Equal(t, "s", m["mxrelay.queue.oldest_age"].Unit)

	// Close at once: every email is handed back.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	c.Close(ctx)
	m = tm.collect(t)
	assert.Equal(t, map[string]int64{"low": 0, "normal": 0, "high": 0, "critical": 0}, points(t, m["mxrelay.queue.depth"], keyPriority))
	assert.Equal(t, map[string]int64{"": 0}, points(t, m["mxrelay.emails.in_flight"], ""))
	assert.Equal(t, map[string]int64{"low": 2, "high": 1, "critical": 1}, points(t, m["mxrelay.emails.failed"], keyPriority))
	// The stalled email's end of data went out with its MAIL (pipelined
	// BDAT): it may have been delivered.
	assert.Equal(t, map[string]int64{"closed": 3, "unknown_outcome": 1}, points(t, m["mxrelay.emails.failed"], keyErrorType))
	assert.Equal(t, map[string]int64{"handed_back": 3, "unknown": 1}, points(t, m["mxrelay.emails.failed"], keyOutcome))
	assert.Equal(t, map[string]int64{"critical": 1}, points(t, m["mxrelay.emails.unknown"], keyPriority))
	assert.Equal(t, map[string]int64{"critical": 1}, points(t, m["mxrelay.emails.maybe_delivered"], keyPriority))
	assert.Equal(t, map[string]int64{"": 1}, points(t, m["mxrelay.sessions.failed"], ""), "the stalled session")

	// Close unregisters the gauges.
	require.NoError(t, inst.Close())
	require.NoError(t, inst.Close(), "twice")
	m = tm.collect(t)
	for _, name := range []string{"mxrelay.queue.depth", "mxrelay.emails.in_flight", "mxrelay.queue.oldest_age"} {
		if g, ok := m[name]; ok {
			assert.Empty(t, points(t, g, ""), name)
		}
	}
}
