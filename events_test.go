package mxrelay_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mxrelay/mxrelay"
	"github.com/mxrelay/mxrelay/internal/testkit"
	"github.com/mxrelay/mxrelay/relaytest"
)

func TestEventsAndStates(t *testing.T) {
	s := testkit.NewRelay(t, nil)
	rec := &testkit.Recorder{}
	c, err := mxrelay.New(s.URL, s.APIKey, testkit.Fast(&mxrelay.Options{OnEvent: rec.On}))
	require.NoError(t, err)
	res, err := c.Send(testkit.Ctx(t), testkit.Mail("events"))
	require.NoError(t, err)
	require.NoError(t, c.Close(testkit.Ctx(t)))

	types := rec.Types()
	want := []mxrelay.EventType{
		mxrelay.EventQueueProcessingStarted,
		mxrelay.EventSessionQueued, mxrelay.EventConnecting, mxrelay.EventConnected, mxrelay.EventAuthenticated,
		mxrelay.EventSessionStarted, mxrelay.EventEmailProcessed, mxrelay.EventQueueProcessingCompleted,
		mxrelay.EventSessionCompleted, mxrelay.EventDisconnected,
	}
	var got []mxrelay.EventType
	for _, ty := range types {
		if ty != mxrelay.EventStateChanged {
			got = append(got, ty)
		}
	}
	assert.Equal(t, want, got)

	// Every change of state is announced by one event: connecting,
	// connected and authenticated for theirs, stateChanged for the others;
	// each goes from the state the last one went to.
	var states []mxrelay.ConnState
	from := mxrelay.StateDisconnected
	for _, e := range rec.Events() {
		switch e.Type {
		case mxrelay.EventStateChanged, mxrelay.EventConnecting, mxrelay.EventConnected, mxrelay.EventAuthenticated:
			assert.Equal(t, from, e.From, "%v to %v", e.Type, e.To)
			assert.NotEqual(t, e.From, e.To)
			from = e.To
			states = append(states, e.To)
			assert.Equal(t, 1, e.Worker)
		}
		switch e.Type {
		case mxrelay.EventConnecting:
			assert.Equal(t, mxrelay.StateConnecting, e.To)
		case mxrelay.EventConnected:
			assert.Equal(t, mxrelay.StateConnected, e.To)
		case mxrelay.EventAuthenticated:
			assert.Equal(t, mxrelay.StateAuthenticating, e.From)
			assert.Equal(t, mxrelay.StateAuthenticated, e.To)
		case mxrelay.EventStateChanged:
			assert.NotContains(t, []mxrelay.ConnState{mxrelay.StateConnecting, mxrelay.StateConnected}, e.To, "announced twice")
			assert.False(t, e.From == mxrelay.StateAuthenticating && e.To == mxrelay.StateAuthenticated, "announced twice")
		case mxrelay.EventEmailProcessed:
			assert.Equal(t, res.EmailID, e.EmailID)
			assert.Same(t, res, e.Result)
			assert.Greater(t, e.Duration, time.Duration(0), "response time")
			assert.NotEmpty(t, e.SessionID)
		case mxrelay.EventSessionCompleted:
			require.Len(t, e.Results, 1)
			assert.Equal(t, res.EmailID, e.Results[0].EmailID)
		case mxrelay.EventSessionStarted:
			assert.Equal(t, 1, e.EmailCount)
		}
		assert.False(t, e.Time.IsZero())
	}
	assert.Equal(t, []mxrelay.ConnState{
		mxrelay.StateConnecting, mxrelay.StateConnected, mxrelay.StateAuthenticating, mxrelay.StateAuthenticated,
		mxrelay.StateChannelOpening, mxrelay.StateChannelReady, mxrelay.StateChannelClosed, mxrelay.StateAuthenticated,
		mxrelay.StateDisconnected,
	}, states)
	assert.Equal(t, "CHANNEL_READY", mxrelay.StateChannelReady.String())
	assert.Equal(t, "emailProcessed", mxrelay.EventEmailProcessed.String())
	assert.Equal(t, "PROCESSING", mxrelay.SessionProcessing.String())
}

// The original client's queue events: started when the client goes from
// no email to one, completed when every accepted email has its result,
// alternating, once per busy spell.
func TestQueueProcessingEvents(t *testing.T) {
	s := testkit.NewRelay(t, nil)
	rec := &testkit.Recorder{}
	// A session starts when the five emails of a round are queued, so
	// that none is delivered before the last is enqueued (which would end
	// the busy spell early).
	c := testkit.NewClient(t, s, &mxrelay.Options{OnEvent: rec.On, BatchWait: time.Minute, MaxEmailsPerSession: 5})
	for round := range 2 {
		var hs []*mxrelay.Handle
		for i := range 5 {
			h, err := c.Enqueue(testkit.Mail(fmt.Sprint("round", round, "email", i)))
			require.NoError(t, err)
			hs = append(hs, h)
		}
		for _, h := range hs {
			_, err := h.Wait(testkit.Ctx(t))
			require.NoError(t, err)
		}
		require.Eventually(t, func() bool { return rec.Count(mxrelay.EventQueueProcessingCompleted) == round+1 },
			5*time.Second, time.Millisecond, "round %d never completed", round)
	}
	assert.Zero(t, c.QueueSize())
	var spells []mxrelay.EventType
	delivered := 0
	for _, ty := range rec.Types() {
		switch ty {
		case mxrelay.EventQueueProcessingStarted, mxrelay.EventQueueProcessingCompleted:
			spells = append(spells, ty)
			if ty == mxrelay.EventQueueProcessingCompleted {
				assert.Equal(t, 5*len(spells)/2, delivered, "completed before every email had its result")
			}
		case mxrelay.EventEmailProcessed:
			delivered++
		}
	}
	assert.Equal(t, []mxrelay.EventType{
		mxrelay.EventQueueProcessingStarted, mxrelay.EventQueueProcessingCompleted,
		mxrelay.EventQueueProcessingStarted, mxrelay.EventQueueProcessingCompleted,
	}, spells)
	assert.Equal(t, "queueProcessingStarted", mxrelay.EventQueueProcessingStarted.String())
}

func TestSlowListenerNeverStallsSending(t *testing.T) {
	s := testkit.NewRelay(t, nil)
	release := make(chan struct{})
	c, err := mxrelay.New(s.URL, s.APIKey, testkit.Fast(&mxrelay.Options{
		EventBuffer: 4,
		OnEvent:     func(mxrelay.Event) { <-release },
	}))
	require.NoError(t, err)
	for i := range 40 {
		_, err := c.Send(testkit.Ctx(t), testkit.Mail(string(rune('a'+i%26))))
		require.NoError(t, err)
	}
	st := c.Stats()
	assert.EqualValues(t, 40, st.EmailsDelivered)
	assert.Greater(t, st.EventsDropped, int64(0), "events past the buffer were dropped and counted")
	close(release)
	require.NoError(t, c.Close(testkit.Ctx(t)))
}

func TestPanickingListenerIsContained(t *testing.T) {
	s := testkit.NewRelay(t, nil)
	logs := &testkit.LogBuffer{}
	c, err := mxrelay.New(s.URL, s.APIKey, testkit.Fast(&mxrelay.Options{
		Logger:  logs.Logger(),
		OnEvent: func(mxrelay.Event) { panic("listener bug") },
	}))
	require.NoError(t, err)
	for range 3 {
		_, err := c.Send(testkit.Ctx(t), testkit.Mail("p"))
		require.NoError(t, err)
	}
	require.NoError(t, c.Close(testkit.Ctx(t)))
	assert.Contains(t, logs.String(), "OnEvent panicked")
}

func TestRetryEvents(t *testing.T) {
	s := testkit.NewRelay(t, nil)
	s.Inject(relaytest.Fault{Kind: relaytest.ReplaceReply, Command: "MAIL", Reply: "451 4.3.0 later"})
	s.Inject(relaytest.Fault{Kind: relaytest.FailChannel})
	rec := &testkit.Recorder{}
	c := testkit.NewClient(t, s, &mxrelay.Options{OnEvent: rec.On})
	_, err := c.Send(testkit.Ctx(t), testkit.Mail("retry"))
	require.NoError(t, err)
	require.NoError(t, c.Close(testkit.Ctx(t)))
	assert.Equal(t, 1, rec.Count(mxrelay.EventEmailRetrying))
	assert.Equal(t, 1, rec.Count(mxrelay.EventReconnecting))
	assert.GreaterOrEqual(t, rec.Count(mxrelay.EventSessionFailed), 1)
}
