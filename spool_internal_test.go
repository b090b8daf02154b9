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

func spoolTestEmail(subject string) Email {
	return Email{From: "a@example.com", To: []string{"b@example.com"}, Body: strings.NewReader("Subject: " + subject + "\r\n\r\n.\r\n")}
}

// TestSpoolEnqueueRefusedByCloseIsNeverSent: an Enqueue that Close
// overtakes while it writes the body returns ErrClosed, and the email must
// then never be sent, not even by the next Client on the directory, which
// may start as soon as Close has returned.
func TestSpoolEnqueueRefusedByCloseIsNeverSent(t *testing.T) {
	relay := relaytest.NewServer(nil)
	defer relay.Close()
	dir := t.TempDir()
	stored := make(chan struct{})
	release := make(chan struct{})
	var once sync.Once
	testHookStored = func() {
		once.Do(func() {
			close(stored)
			<-release
		})
	}
	defer func() { testHookStored = nil }()

	c1, err := New(relay.URL, relay.APIKey, &Options{SpoolDir: dir})
	require.NoError(t, err)
	enqueued := make(chan error, 1)
	go func() {
		_, err := c1.Enqueue(spoolTestEmail("refused"))
		enqueued <- err
	}()
	<-stored
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	require.NoError(t, c1.Close(ctx))

	c2, err := New(relay.URL, relay.APIKey, &Options{SpoolDir: dir})
	require.NoError(t, err)
	close(release)
	require.ErrorIs(t, <-enqueued, ErrClosed)
	for _, h := range c2.Recovered() {
		h.Wait(ctx)
	}
	require.NoError(t, c2.Close(ctx))
	require.Empty(t, relay.Mailbox(), "an email refused with ErrClosed was sent")
}
