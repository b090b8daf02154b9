package mxrelay_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mxrelay/mxrelay"
	"github.com/mxrelay/mxrelay/internal/fakesmtp"
	"github.com/mxrelay/mxrelay/internal/testkit"
	"github.com/mxrelay/mxrelay/relaytest"
)

// With two workers, each has its own states, its events say which it is,
// and each worker's connection events go from the state its last one
// went to; the client's states aggregate theirs, and Stats counts the
// emails their sessions hold as in flight.
func TestWorkersHaveStatesOfTheirOwn(t *testing.T) {
	release := make(chan struct{})
	atMail := make(chan struct{}, 2)
	u := testkit.NewUpstream(t, func(c *fakesmtp.Conn) {
		c.Say("220 mx.test ESMTP")
		c.Commands(func(verb, _ string) bool {
			switch verb {
			case "MAIL":
				atMail <- struct{}{}
				<-release // both sessions are held here
			case "DATA":
				c.Say("354 go ahead")
				if _, ok := c.Body(); !ok {
					return false
				}
				return c.Say("250 2.0.0 queued")
			}
			return c.Say("250 ok")
		})
	})
	releaseAll := sync.OnceFunc(func() { close(release) })
	t.Cleanup(releaseAll) // before the upstream's own cleanup, which waits for it
	s := testkit.NewRelay(t, &relaytest.Options{UpstreamAddr: u.Addr})
	rec := &testkit.Recorder{}
	started := make(chan int, 2)
	c := testkit.NewClient(t, s, &mxrelay.Options{MaxConcurrentSessions: 2, MaxEmailsPerSession: 1, OnEvent: func(e mxrelay.Event) {
		rec.On(e)
		if e.Type == mxrelay.EventSessionStarted {
			started <- e.Worker
		}
	}})
	assert.Equal(t, []mxrelay.WorkerState{
		{Worker: 1, ConnState: mxrelay.StateDisconnected, SessionState: mxrelay.SessionIdle},
		{Worker: 2, ConnState: mxrelay.StateDisconnected, SessionState: mxrelay.SessionIdle},
	}, c.Workers())

	var hs []*mxrelay.Handle
	for _, subject := range []string{"one", "two"} {
		h, err := c.Enqueue(testkit.Mail(subject))
		require.NoError(t, err)
		hs = append(hs, h)
	}
	ctx := testkit.Ctx(t)
	var workers []int
	for range 2 {
		select {
		case n := <-started:
			workers = append(workers, n)
		case <-ctx.Done():
			t.Fatal("two sessions did not start")
		}
	}
	assert.ElementsMatch(t, []int{1, 2}, workers, "one session per worker")
	for range 2 {
		select {
		case <-atMail:
		case <-ctx.Done():
			t.Fatal("two MAILs did not come")
		}
	}
	st := c.Stats()
	assert.Equal(t, 2, st.InFlight, "each session holds its email")
	assert.Zero(t, st.QueueSize, "both taken")
	assert.Equal(t, []mxrelay.WorkerState{
		{Worker: 1, ConnState: mxrelay.StateChannelReady, SessionState: mxrelay.SessionProcessing},
		{Worker: 2, ConnState: mxrelay.StateChannelReady, SessionState: mxrelay.SessionProcessing},
	}, c.Workers())
	assert.Equal(t, mxrelay.StateChannelReady, c.ConnState())
	assert.Equal(t, mxrelay.SessionProcessing, c.SessionState())

	releaseAll()
	for _, h := range hs {
		_, err := h.Wait(ctx)
		require.NoError(t, err)
	}
	require.NoError(t, c.Close(ctx))
	assert.Zero(t, c.Stats().InFlight)
	for _, w := range c.Workers() {
		assert.Equal(t, mxrelay.StateDisconnected, w.ConnState, "worker %d", w.Worker)
		assert.Equal(t, mxrelay.SessionIdle, w.SessionState, "worker %d", w.Worker)
	}
	assert.Equal(t, mxrelay.StateDisconnected, c.ConnState())
	assert.Equal(t, mxrelay.SessionIdle, c.SessionState())

	// Each worker's changes form a chain of their own.
	last := map[int]mxrelay.ConnState{1: mxrelay.StateDisconnected, 2: mxrelay.StateDisconnected}
	for _, e := range rec.Events() {
		switch e.Type {
		case mxrelay.EventConnecting, mxrelay.EventConnected, mxrelay.EventAuthenticated, mxrelay.EventStateChanged:
			require.Contains(t, last, e.Worker, "%v from no worker", e.Type)
			assert.Equal(t, last[e.Worker], e.From, "worker %d: %v to %v", e.Worker, e.Type, e.To)
			last[e.Worker] = e.To
		case mxrelay.EventDisconnected, mxrelay.EventSessionQueued, mxrelay.EventSessionCompleted:
			assert.Contains(t, last, e.Worker, "%v from no worker", e.Type)
		case mxrelay.EventEmailProcessed, mxrelay.EventQueueProcessingStarted, mxrelay.EventQueueProcessingCompleted:
			assert.Zero(t, e.Worker, "%v is no worker's", e.Type)
		}
	}
	assert.Equal(t, map[int]mxrelay.ConnState{1: mxrelay.StateDisconnected, 2: mxrelay.StateDisconnected}, last)
}

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

// Stats.Window is the pipeline window: the adaptive one starts at 32,
// FixedWindow keeps PipelineWindow.
func TestStatsWindow(t *testing.T) {
	for _, tc := range []struct {
		fixed bool
		want  int
	}{{false, 32}, {true, 256}} {
		s := testkit.NewRelay(t, nil)
		c := testkit.NewClient(t, s, &mxrelay.Options{FixedWindow: tc.fixed})
		assert.Zero(t, c.Stats().Window, "no session yet")
		_, err := c.Send(testkit.Ctx(t), testkit.Mail("window"))
		require.NoError(t, err)
		assert.Equal(t, tc.want, c.Stats().Window, "FixedWindow %v", tc.fixed)
	}
}
