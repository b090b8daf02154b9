package mxrelay_test

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mxrelay/mxrelay"
	"github.com/mxrelay/mxrelay/internal/fakesmtp"
	"github.com/mxrelay/mxrelay/internal/testkit"
	"github.com/mxrelay/mxrelay/relaytest"
)

// Stats tells the queue's depth by priority and the oldest email's age,
// and counts the emails Close handed back.
func TestStatsQueueDepthAndHandedBack(t *testing.T) {
	s := testkit.NewRelay(t, nil)
	s.SetDown(true)
	c, err := mxrelay.New(s.URL, s.APIKey, &mxrelay.Options{ReconnectInterval: time.Hour})
	require.NoError(t, err)
	for p, n := range map[mxrelay.Priority]int{mxrelay.PriorityLow: 2, mxrelay.PriorityNormal: 3, mxrelay.PriorityCritical: 1} {
		for range n {
			_, err := c.Enqueue(testkit.Mail("queued"), mxrelay.WithPriority(p))
			require.NoError(t, err)
		}
	}
	st := c.Stats()
	assert.Equal(t, map[mxrelay.Priority]int{mxrelay.PriorityLow: 2, mxrelay.PriorityNormal: 3, mxrelay.PriorityHigh: 0, mxrelay.PriorityCritical: 1}, st.QueuedByPriority)
	assert.Equal(t, 6, st.QueueSize)
	assert.Positive(t, st.OldestQueued)
	assert.Zero(t, st.Delayed)

	ctx, cancel := context.WithCancel(context.Background())
	cancel() // hand back at once
	c.Close(ctx)
	st = c.Stats()
	assert.Equal(t, int64(6), st.EmailsHandedBack)
	assert.Equal(t, int64(6), st.EmailsFailed)
	assert.Zero(t, st.OldestQueued)
	assert.Zero(t, st.EmailsUnknown)
}

// An email whose end of data went out and was never answered counts as
// an unknown outcome.
func TestStatsCountsUnknownOutcomes(t *testing.T) {
	u := fakesmtp.Listen(t, func(c *fakesmtp.Conn) {
		c.Say("220 mx.test ESMTP")
		c.Commands(func(verb, _ string) bool {
			switch verb {
			case "DATA":
				c.Say("354 go ahead")
				for {
					l, ok := c.Line()
					if !ok || l == "." {
						return false // read, never answered
					}
				}
			}
			return c.Say("250 ok")
		})
	})
	s := testkit.NewRelay(t, &relaytest.Options{UpstreamAddr: u.Addr})
	c := testkit.NewClient(t, s, nil)
	res, err := c.Send(testkit.Ctx(t), testkit.Mail("cut"))
	require.Error(t, err)
	assert.Equal(t, mxrelay.OutcomeUnknown, res.Outcome)
	assert.True(t, res.MaybeDelivered)
	st := c.Stats()
	assert.Equal(t, int64(1), st.EmailsUnknown)
	assert.Equal(t, int64(1), st.EmailsFailed)
	assert.Equal(t, int64(1), st.EmailsMaybeDelivered)
	assert.Zero(t, st.EmailsHandedBack)
}
