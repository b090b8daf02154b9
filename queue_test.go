package mxrelay_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mxrelay/mxrelay"
	"github.com/mxrelay/mxrelay/internal/testkit"
)

func TestPriorityOrder(t *testing.T) {
	s := testkit.NewRelay(t, nil)
	c := testkit.NewClient(t, s, &mxrelay.Options{MaxEmailsPerSession: 8, BatchWait: 10 * time.Second})
	prios := []mxrelay.Priority{mxrelay.PriorityLow, mxrelay.PriorityNormal, mxrelay.PriorityHigh, mxrelay.PriorityNormal,
		mxrelay.PriorityLow, mxrelay.PriorityHigh, mxrelay.PriorityNormal, mxrelay.PriorityCritical}
	var hs []*mxrelay.Handle
	for i, p := range prios {
		h, err := c.Enqueue(testkit.Mail(fmt.Sprintf("%d-%s", i, p)), mxrelay.WithPriority(p))
		require.NoError(t, err)
		hs = append(hs, h)
	}
	for _, h := range hs {
		_, err := h.Wait(testkit.Ctx(t))
		require.NoError(t, err)
	}
	assert.Equal(t, []string{"7-CRITICAL", "2-HIGH", "5-HIGH", "1-NORMAL", "3-NORMAL", "6-NORMAL", "0-LOW", "4-LOW"}, testkit.Subjects(s))
	assert.Equal(t, 1, s.Stats().Channels)
}

func TestQueueFull(t *testing.T) {
	s := testkit.NewRelay(t, nil)
	s.SetDown(true)
	c := testkit.NewClient(t, s, &mxrelay.Options{MaxQueueSize: 3, ReconnectInterval: time.Hour, MaxReconnectAttempts: 100})
	for i := range 3 {
		_, err := c.Enqueue(testkit.Mail(fmt.Sprint(i)))
		require.NoError(t, err)
	}
	_, err := c.Enqueue(testkit.Mail("one too many"))
	require.ErrorIs(t, err, mxrelay.ErrQueueFull)
	res, err := c.Send(testkit.Ctx(t), testkit.Mail("also"))
	require.ErrorIs(t, err, mxrelay.ErrQueueFull)
	assert.Nil(t, res)
	assert.Equal(t, 3, c.Stats().QueueSize)
}
