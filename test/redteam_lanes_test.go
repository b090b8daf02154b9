package test

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mxrelay/mxrelay"
	"github.com/mxrelay/mxrelay/internal/testkit"
	"github.com/mxrelay/mxrelay/relaytest"
)

// Red team, round 7: the retry lanes after a restart. Emails a Client
// left in its spool come back with their attempts: those tried before go
// in the retry lane of their priority, the others in the fresh one.
// Stats count both lanes, an email cancelled from either leaves the
// others in their order, and the session takes fresh mail first, then
// turns, priority before all.
func TestRT7RecoveredRetriesTakeTheirLane(t *testing.T) {
	s := testkit.NewRelay(t, nil)
	dir := t.TempDir()
	s.Inject(relaytest.Fault{Kind: relaytest.ReplaceReply, Command: ".", Reply: "451 4.3.0 try again", Times: 2})
	retrying := make(chan struct{}, 2)
	c, err := mxrelay.New(s.URL, s.APIKey, testkit.Fast(&mxrelay.Options{SpoolDir: dir, RetryInterval: time.Hour, MaxRetryInterval: time.Hour,
		MaxConcurrentSessions: 1, OnEvent: func(e mxrelay.Event) {
			if e.Type == mxrelay.EventEmailRetrying {
				retrying <- struct{}{}
			}
		}}))
	require.NoError(t, err)
	var hs []*mxrelay.Handle
	enqueue := func(subject string, p mxrelay.Priority) {
		h, err := c.Enqueue(testkit.Mail(subject), mxrelay.WithPriority(p))
		require.NoError(t, err)
		hs = append(hs, h)
	}
	enqueue("retry-1", mxrelay.PriorityNormal)
	accepted := time.Now()
	enqueue("retry-2", mxrelay.PriorityNormal)
	for range 2 {
		select {
		case <-retrying:
		case <-testkit.Ctx(t).Done():
			t.Fatal("no retry")
		}
	}
	st := c.Stats()
	assert.Equal(t, 2, st.Delayed, "both wait for their retry")
	assert.Equal(t, 2, st.QueuedByPriority[mxrelay.PriorityNormal])
	// The relay goes down: what is enqueued now stays in the spool.
	s.SetDown(true)
	s.CloseClientConnections()
	enqueue("fresh-a", mxrelay.PriorityNormal)
	enqueue("fresh-b", mxrelay.PriorityNormal)
	enqueue("low", mxrelay.PriorityLow)
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	require.Error(t, c.Close(ctx))
	for _, h := range hs {
		_, err := h.Wait(testkit.Ctx(t))
		require.ErrorIs(t, err, mxrelay.ErrSpooled)
	}

	c = testkit.NewClient(t, s, &mxrelay.Options{SpoolDir: dir, MaxConcurrentSessions: 1, MaxReconnectAttempts: 1000,
		ReconnectInterval: 20 * time.Millisecond, MaxReconnectInterval: 20 * time.Millisecond})
	rec := c.Recovered()
	require.Len(t, rec, 5)
	age := time.Since(accepted)
	st = c.Stats()
	assert.Equal(t, 4, st.QueuedByPriority[mxrelay.PriorityNormal])
	assert.Equal(t, 1, st.QueuedByPriority[mxrelay.PriorityLow])
	assert.Zero(t, st.Delayed, "recovered emails wait for no delay")
	assert.GreaterOrEqual(t, st.OldestQueued, age, "the oldest is the first retry, accepted by the last Client")

	rec[1].Cancel() // retry-2, from the retry lane
	rec[3].Cancel() // fresh-b, from the fresh lane
	st = c.Stats()
	assert.Equal(t, 2, st.QueuedByPriority[mxrelay.PriorityNormal])
	assert.Equal(t, 1, st.QueuedByPriority[mxrelay.PriorityLow])

	s.SetDown(false)
	want := map[int]int{0: 2, 2: 1, 4: 1} // recovered index: attempts
	for i, h := range rec {
		res, err := h.Wait(testkit.Ctx(t))
		if _, ok := want[i]; !ok {
			require.ErrorIs(t, err, mxrelay.ErrCanceled)
			continue
		}
		require.NoError(t, err, "recovered %d", i)
		assert.Equal(t, want[i], res.Attempts, "recovered %d", i)
	}
	assert.Equal(t, []string{"fresh-a", "retry-1", "low"}, testkit.Subjects(s), "fresh first, then the retry, then the lower priority")
}
