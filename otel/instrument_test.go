package mxrelayotel_test

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mxrelay/mxrelay"
	mxrelayotel "github.com/mxrelay/mxrelay/otel"
)

func TestInstrumentKeepsOnEvent(t *testing.T) {
	tm := newTelemetry()
	results, seen := sendBatch(t, tm)
	var done int
	for _, e := range seen {
		if e.Type == mxrelay.EventEmailProcessed || e.Type == mxrelay.EventEmailFailed {
			done++
		}
	}
	assert.Equal(t, len(results), done, "the OnEvent Instrument wrapped saw every result")
}

func TestInstrumentRefuses(t *testing.T) {
	tests := []struct {
		name string
		o    *mxrelay.Options
		cfg  mxrelayotel.Config
	}{
		{"nil options", nil, mxrelayotel.Config{}},
		{"negative MaxSessions", &mxrelay.Options{}, mxrelayotel.Config{MaxSessions: -1}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := mxrelayotel.Instrument(tt.o, tt.cfg)
			require.Error(t, err)
		})
	}
}

func TestObserveRefuses(t *testing.T) {
	inst, err := mxrelayotel.Instrument(&mxrelay.Options{}, newTelemetry().cfg)
	require.NoError(t, err)
	require.Error(t, inst.Observe(nil))
	require.NoError(t, inst.Close())
	c, err := mxrelay.New("ws://127.0.0.1:1/smtp", "key", nil)
	require.NoError(t, err)
	t.Cleanup(func() { c.Close(t.Context()) })
	require.Error(t, inst.Observe(c), "after Close")
}

func TestDefaultsToGlobalProviders(t *testing.T) {
	// The globals are no-ops until set: instrumenting must still work.
	o := &mxrelay.Options{}
	inst, err := mxrelayotel.Instrument(o, mxrelayotel.Config{})
	require.NoError(t, err)
	o.OnEvent(mxrelay.Event{Type: mxrelay.EventSessionQueued, SessionID: "s1"})
	require.NoError(t, inst.Close())
}
