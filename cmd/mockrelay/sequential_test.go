package main

import (
	"context"
	"flag"
	"fmt"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mxrelay/mxrelay"
)

var seqRuns = flag.Int("seq.runs", 5, "runs of 40 sequential Sends in TestSequentialSendsDoNotStall (.ci/run: 200)")

// Sequential Sends stalled 5–7 s about once in 17 runs of 40: the last
// channel's SMTP_CHANNEL_CLOSE, written in the background, could reach the
// relay after the next SMTP_CHANNEL_OPEN, the relay closed the new
// channel, and the worker waited a whole ReconnectInterval on a healthy
// WebSocket. Each run is a new Client sending 40 emails one after the
// other, each Send given 1 s; on a healthy relay no set-up may fail and no
// reconnect may be scheduled, and each Client uses one WebSocket.
func TestSequentialSendsDoNotStall(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	var stdout, stderr syncBuffer
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, []string{"-addr", "127.0.0.1:0", "-key", "mock-key-123456"}, &stdout, &stderr)
	}()
	defer func() { cancel(); require.NoError(t, <-done) }()
	url := waitFor(t, &stdout, regexp.MustCompile(`relay URL: (\S+)`))[1]

	var slowest time.Duration
	for r := range *seqRuns {
		var mu sync.Mutex
		var bad []string
		c, err := mxrelay.New(url, "mock-key-123456", &mxrelay.Options{
			OnEvent: func(e mxrelay.Event) {
				switch e.Type {
				case mxrelay.EventSessionFailed, mxrelay.EventReconnecting:
					mu.Lock()
					bad = append(bad, fmt.Sprintf("%s: %v", e.Type, e.Err))
					mu.Unlock()
				}
			},
		})
		require.NoError(t, err)
		for i := range 40 {
			sctx, scancel := context.WithTimeout(ctx, time.Second)
			start := time.Now()
			_, err := c.Send(sctx, mxrelay.Email{From: "a@example.com", To: []string{"b@example.com"},
				Body: strings.NewReader(fmt.Sprintf("Subject: run %d email %d\r\n\r\nhello\r\n", r, i))})
			slowest = max(slowest, time.Since(start))
			scancel()
			require.NoError(t, err, "run %d, email %d", r, i)
		}
		cctx, ccancel := context.WithTimeout(ctx, 5*time.Second)
		require.NoError(t, c.Close(cctx))
		ccancel()
		mu.Lock()
		assert.Empty(t, bad, "run %d: a healthy relay, and yet", r)
		mu.Unlock()
	}
	t.Logf("%d runs of 40 sequential Sends; slowest Send %v", *seqRuns, slowest)
}
