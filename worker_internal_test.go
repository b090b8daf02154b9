package mxrelay

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/mxrelay/mxrelay/relaytest"
)

// A worker that claimed the next email leaves it to the others when
// throttle feedback then allows fewer sessions than its number: its
// session ends without taking it (session: w.n > c.fb.sessions()), and
// run releases the claim. The workers that looked while it held the claim
// left the email to it and sleep: the release must wake them, or the
// email waits for whatever wakes them next (a new email, an idle
// timeout; with no relay connection kept, nothing).
//
// The claim is set as waitForWork sets it, before the cut that makes
// worker 2 one too many; the release is run's, unclaim. (Red team 8
// found the email stranded.)
func TestReleasedClaimWakesTheOthers(t *testing.T) {
	relay := relaytest.NewServer(nil)
	defer relay.Close()
	looked := make(chan struct{}, 16)
	testHookIdle = func() {
		select {
		case looked <- struct{}{}:
		default:
		}
	}
	defer func() { testHookIdle = nil }()
	c, err := New(relay.URL, relay.APIKey, &Options{MaxConcurrentSessions: 2, Throttle: Throttle{MinRate: 1000}})
	require.NoError(t, err)
	defer c.Close(context.Background())
	<-looked
	<-looked // both workers have looked at the empty queue and sleep

	w2 := c.workers[1]
	c.mu.Lock()
	c.claimed++
	w2.claim = true
	c.mu.Unlock()
	now := time.Now()
	require.True(t, c.fb.cut(now, now))
	require.Equal(t, 1, c.fb.sessions(), "worker 2 is one too many now")
	<-looked
	<-looked // the cut's kick: both looked again, and sleep

	h, err := c.Enqueue(Email{From: "a@example.com", To: []string{"b@example.com"}, Body: strings.NewReader("Subject: x\r\n\r\nclaimed\r\n")})
	require.NoError(t, err)
	<-looked
	<-looked // worker 1 left it to worker 2's claim; worker 2 may not start

	w2.unclaim() // worker 2's session ended without it
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	res, err := h.Wait(ctx)
	require.NoError(t, err, "the email waited for a claim that was released")
	require.Equal(t, OutcomeDelivered, res.Outcome)
}
