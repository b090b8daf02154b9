package mxrelay_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mxrelay/mxrelay"
	"github.com/mxrelay/mxrelay/internal/smtpsink"
	"github.com/mxrelay/mxrelay/internal/testkit"
	"github.com/mxrelay/mxrelay/relaytest"
)

// newSinkRelay is relaytest in front of smtpsink, which words its replies
// as Postfix does (MAIL 2.1.0, RCPT 2.1.5, NOOP 2.0.0): a NOOP's 250
// confirms the replies before it, so a session may linger.
func newSinkRelay(t *testing.T, o *smtpsink.Options) (*relaytest.Server, *smtpsink.Server) {
	t.Helper()
	sink, err := smtpsink.New(o)
	require.NoError(t, err)
	t.Cleanup(func() { sink.Close() })
	return testkit.NewRelay(t, &relaytest.Options{UpstreamAddr: sink.Addr}), sink
}

// A Send on a lingering session goes out in the session the last one
// used, and its result comes without the session ending: the NOOP after
// its end of data confirms it.
func TestLingeringSessionTakesTheNextEmail(t *testing.T) {
	s, sink := newSinkRelay(t, nil)
	for _, sessions := range []int{1, 3} {
		t.Run(fmt.Sprint(sessions, " workers"), func(t *testing.T) {
			before := sink.Stats().Sessions
			c := testkit.NewClient(t, s, &mxrelay.Options{Linger: time.Minute, MaxConcurrentSessions: sessions})
			var first string
			for i := range 5 {
				res, err := c.Send(testkit.Ctx(t), testkit.Mail(fmt.Sprint("warm ", i)))
				require.NoError(t, err)
				assert.True(t, res.Delivered())
				if i == 0 {
					first = res.SessionID
				}
				assert.Equal(t, first, res.SessionID)
				assert.Zero(t, c.Stats().SessionsCompleted, "the session is still open")
			}
			assert.Equal(t, int64(1), sink.Stats().Sessions-before, "one SMTP session for all five Sends")
			assert.Zero(t, c.Stats().SessionsFailed)
		})
	}
}

// Past Linger the session ends with QUIT, and the next email opens
// another.
func TestLingerEnds(t *testing.T) {
	s, sink := newSinkRelay(t, nil)
	ev := make(chan mxrelay.Event, 64)
	c := testkit.NewClient(t, s, &mxrelay.Options{Linger: 50 * time.Millisecond, OnEvent: func(e mxrelay.Event) {
		if e.Type == mxrelay.EventSessionCompleted {
			ev <- e
		}
	}})
	for i := range 2 {
		_, err := c.Send(testkit.Ctx(t), testkit.Mail(fmt.Sprint("linger ", i)))
		require.NoError(t, err)
		select {
		case e := <-ev:
			assert.Len(t, e.Results, 1)
		case <-testkit.Ctx(t).Done():
			t.Fatal("the session did not end after Linger")
		}
	}
	assert.Equal(t, int64(2), sink.Stats().Sessions)
	assert.Equal(t, int64(2), c.Stats().SessionsCompleted)
}

// The upstream ends a lingering session (its idle timeout): not a
// failure, no backoff, and the next email goes in a new session.
func TestLingeringSessionEndedByTheUpstream(t *testing.T) {
	s, sink := newSinkRelay(t, &smtpsink.Options{IdleTimeout: 100 * time.Millisecond})
	var reconnecting, failed int
	done := make(chan struct{}, 8)
	c := testkit.NewClient(t, s, &mxrelay.Options{Linger: time.Minute, OnEvent: func(e mxrelay.Event) {
		switch e.Type {
		case mxrelay.EventReconnecting:
			reconnecting++
		case mxrelay.EventSessionFailed:
			failed++
		case mxrelay.EventSessionCompleted:
			done <- struct{}{}
		}
	}})
	_, err := c.Send(testkit.Ctx(t), testkit.Mail("first"))
	require.NoError(t, err)
	select {
	case <-done: // the sink's idle timeout closed it
	case <-testkit.Ctx(t).Done():
		t.Fatal("the session was not ended by the upstream")
	}
	_, err = c.Send(testkit.Ctx(t), testkit.Mail("second"))
	require.NoError(t, err)
	require.NoError(t, c.Close(testkit.Ctx(t)))
	st := c.Stats()
	assert.Zero(t, st.SessionsFailed)
	assert.Zero(t, reconnecting)
	assert.Zero(t, failed)
	assert.Equal(t, int64(2), sink.Stats().Sessions)
	assert.Equal(t, int64(2), sink.Stats().Messages)
}

// Against a server that answers every command alike (relaytest's go-smtp
// upstream) a NOOP confirms nothing: the session does not linger, and a
// Send's result comes with QUIT's 221, long before Linger.
func TestNoLingerWhereOnlyQuitConfirms(t *testing.T) {
	s := testkit.NewRelay(t, nil)
	c := testkit.NewClient(t, s, &mxrelay.Options{Linger: time.Hour})
	var sessions []string
	for i := range 2 {
		res, err := c.Send(testkit.Ctx(t), testkit.Mail(fmt.Sprint("cold ", i)))
		require.NoError(t, err)
		sessions = append(sessions, res.SessionID)
	}
	assert.NotEqual(t, sessions[0], sessions[1], "each Send's session ended with QUIT")
}

// Close ends a lingering session at once, with QUIT.
func TestCloseEndsALingeringSession(t *testing.T) {
	s, _ := newSinkRelay(t, nil)
	c, err := mxrelay.New(s.URL, s.APIKey, testkit.Fast(&mxrelay.Options{Linger: time.Hour}))
	require.NoError(t, err)
	_, err = c.Send(testkit.Ctx(t), testkit.Mail("then close"))
	require.NoError(t, err)
	require.NoError(t, c.Close(testkit.Ctx(t)))
	assert.Equal(t, int64(1), c.Stats().SessionsCompleted)
}

// A retry whose delay ends while its session lingers goes in that session
// at once, not after Linger.
func TestLingeringSessionTakesADueRetry(t *testing.T) {
	s := testkit.NewRelay(t, nil)
	s.Inject(relaytest.Fault{Kind: relaytest.ReplaceReply, Command: "MAIL", Reply: "451 4.3.0 try again"})
	c := testkit.NewClient(t, s, &mxrelay.Options{Linger: time.Hour, RetryInterval: 20 * time.Millisecond})
	ctx, cancel := context.WithTimeout(testkit.Ctx(t), 5*time.Second)
	defer cancel()
	res, err := c.Send(ctx, testkit.Mail("retried while lingering"))
	require.NoError(t, err)
	assert.Equal(t, 2, res.Attempts)
}
