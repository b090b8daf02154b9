package testkit

import (
	"context"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/assert"

	"github.com/mxrelay/mxrelay"
)

// Await returns once a Write makes the text match, or when its context
// ends.
func TestLogBufferAwait(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var l LogBuffer
		got := make(chan bool)
		go func() {
			got <- l.Await(context.Background(), func(s string) bool { return strings.Contains(s, "ready") })
		}()
		l.Write([]byte("starting\n"))
		synctest.Wait()
		select {
		case <-got:
			t.Fatal("Await returned before the text matched")
		default:
		}
		l.Write([]byte("ready\n"))
		assert.True(t, <-got)

		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		assert.False(t, l.Await(ctx, func(s string) bool { return strings.Contains(s, "never") }))
	})
}

func TestRecorder(t *testing.T) {
	var r Recorder
	r.On(mxrelay.Event{Type: mxrelay.EventConnecting})
	r.On(mxrelay.Event{Type: mxrelay.EventConnected})
	r.On(mxrelay.Event{Type: mxrelay.EventConnecting})
	assert.Equal(t, []mxrelay.EventType{mxrelay.EventConnecting, mxrelay.EventConnected, mxrelay.EventConnecting}, r.Types())
	assert.Equal(t, 2, r.Count(mxrelay.EventConnecting))
	assert.Len(t, r.Events(), 3)
}
