package testkit

import (
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mxrelay/mxrelay"
	"github.com/mxrelay/mxrelay/internal/fakesmtp"
	"github.com/mxrelay/mxrelay/relaytest"
)

// In a Bubble a client sends through a relay in memory, and its idle
// timeout passes on the bubble's clock, to the nanosecond.
func TestBubble(t *testing.T) {
	Bubble(t, func(t *testing.T) {
		s := NewRelay(t, nil)
		rec := &Recorder{}
		c := NewClient(t, s, &mxrelay.Options{IdleTimeout: time.Minute, OnEvent: rec.On})
		start := time.Now()
		_, err := c.Send(Ctx(t), Mail("in memory"))
		require.NoError(t, err)
		assert.Zero(t, time.Since(start), "nothing waited on the clock")
		assert.Equal(t, []string{"in memory"}, Subjects(s))
		time.Sleep(time.Minute - time.Nanosecond)
		synctest.Wait()
		assert.Equal(t, mxrelay.StateAuthenticated, c.ConnState())
		time.Sleep(time.Nanosecond)
		synctest.Wait()
		assert.Equal(t, mxrelay.StateDisconnected, c.ConnState(), "idle for a minute")
		assert.Equal(t, 1, rec.Count(mxrelay.EventDisconnected))
	})
}

// A Bubble's upstream is on its network too.
func TestBubbleUpstream(t *testing.T) {
	Bubble(t, func(t *testing.T) {
		u := NewUpstream(t, (&fakesmtp.Session{Ext: []string{"PIPELINING", "CHUNKING"}}).Serve)
		s := NewRelay(t, &relaytest.Options{UpstreamAddr: u.Addr})
		c := NewClient(t, s, nil)
		_, err := c.Send(Ctx(t), Mail("upstream in memory"))
		require.NoError(t, err)
		assert.True(t, u.Saw("BDAT"), "%q", u.Transcript())
	})
}

// Outside a Bubble everything is on loopback TCP.
func TestOutsideABubble(t *testing.T) {
	u := NewUpstream(t, (&fakesmtp.Session{}).Serve)
	s := NewRelay(t, &relaytest.Options{UpstreamAddr: u.Addr})
	assert.Nil(t, ClientOptions(s, nil).HTTPClient)
	c := NewClient(t, s, nil)
	_, err := c.Send(Ctx(t), Mail("over TCP"))
	require.NoError(t, err)
	assert.True(t, u.Saw("DATA"))
}
