package mxrelay

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/mxrelay/mxrelay/relaytest"
)

// Regression: waitForWork decided "nothing left" from a look at the queue
// taken before emails were accepted and Close was called, and returned:
// Close then handed back emails that should have gone (seen once in CI).
func TestCloseRightAfterEnqueueStillSends(t *testing.T) {
	relay := relaytest.NewServer(nil)
	defer relay.Close()
	looked := make(chan struct{})
	release := make(chan struct{})
	var once sync.Once
	testHookIdle = func() {
		once.Do(func() {
			close(looked)
			<-release // the worker pauses right after finding the queue empty
		})
	}
	defer func() { testHookIdle = nil }()
	c, err := New(relay.URL, relay.APIKey, nil)
	require.NoError(t, err)
	<-looked
	h, err := c.Enqueue(Email{From: "a@example.com", To: []string{"b@example.com"}, Body: strings.NewReader("Subject: x\r\n\r\n.\r\n")})
	require.NoError(t, err)
	closed := make(chan error, 1)
	go func() { closed <- c.Close(context.Background()) }()
	require.Eventually(t, func() bool { // Close has closed draining
		select {
		case <-c.draining:
			return true
		default:
			return false
		}
	}, 5*time.Second, time.Millisecond)
	close(release)
	require.NoError(t, <-closed, "nothing handed back")
	res, err := h.Wait(context.Background())
	require.NoError(t, err)
	require.True(t, res.Delivered())
}
