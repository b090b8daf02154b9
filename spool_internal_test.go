package mxrelay

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/mxrelay/mxrelay/internal/spool"
	"github.com/mxrelay/mxrelay/internal/store"
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

// endingFails is a store whose Ending records nothing and fails, as a
// spool whose journal cannot be written (a full disk).
type endingFails struct{ store.Store }

func (endingFails) Ending(context.Context, []store.Token) ([]error, error) {
	return nil, errors.New("the journal cannot be written")
}

// TestSpoolJournalFailureHandsBack: when the end-of-data marker cannot be
// written the email does not go (a restart could not know it might have)
// and it stays in the spool with ErrSpooled, for the next Client.
func TestSpoolJournalFailureHandsBack(t *testing.T) {
	relay := relaytest.NewServer(nil)
	defer relay.Close()
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	testHookStore = func(st store.Store) store.Store { return endingFails{st} }
	c, err := New(relay.URL, relay.APIKey, &Options{SpoolDir: dir})
	testHookStore = nil
	require.NoError(t, err)
	_, err = c.Send(ctx, spoolTestEmail("kept"))
	require.ErrorIs(t, err, ErrSpooled)
	require.NoError(t, c.Close(ctx))
	require.Empty(t, relay.Mailbox())
	files, _ := filepath.Glob(filepath.Join(dir, "*.msg"))
	require.Len(t, files, 1)

	c, err = New(relay.URL, relay.APIKey, &Options{SpoolDir: dir})
	require.NoError(t, err)
	require.Len(t, c.Recovered(), 1)
	res, err := c.Recovered()[0].Wait(ctx)
	require.NoError(t, err)
	require.False(t, res.MaybeDelivered)
	require.NoError(t, c.Close(ctx))
	require.Len(t, relay.Mailbox(), 1)
}

// TestSpoolCompactsWhileRunning: the journal is compacted at run time
// while other emails are in flight (their markers must be carried over),
// and every result is recorded exactly once.
func TestSpoolCompactsWhileRunning(t *testing.T) {
	testHookSpool = func(o *spool.Options) { o.MaxJournal = 2 << 10 }
	defer func() { testHookSpool = nil }()
	relay := relaytest.NewServer(&relaytest.Options{Latency: relaytest.Latency{ToClient: time.Millisecond}})
	defer relay.Close()
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c, err := New(relay.URL, relay.APIKey, &Options{SpoolDir: dir, MaxConcurrentSessions: 2})
	require.NoError(t, err)
	var hs []*Handle
	for i := range 60 {
		h, err := c.Enqueue(spoolTestEmail("m" + strconv.Itoa(i)))
		require.NoError(t, err)
		hs = append(hs, h)
	}
	for _, h := range hs {
		_, err := h.Wait(ctx)
		require.NoError(t, err)
	}
	require.NoError(t, c.Close(ctx))
	log, err := os.ReadFile(filepath.Join(dir, "results.log"))
	require.NoError(t, err)
	require.NotEmpty(t, log, "no compaction ran")

	c, err = New(relay.URL, relay.APIKey, &Options{SpoolDir: dir})
	require.NoError(t, err)
	require.Empty(t, c.Recovered())
	require.NoError(t, c.Close(ctx))
	log, err = os.ReadFile(filepath.Join(dir, "results.log"))
	require.NoError(t, err)
	ids := map[string]int{}
	for line := range strings.Lines(string(log)) {
		var r SpoolResult
		require.NoError(t, json.Unmarshal([]byte(line), &r))
		ids[r.EmailID]++
	}
	require.Len(t, ids, 60)
	for id, n := range ids {
		require.Equal(t, 1, n, id)
	}
	files, _ := filepath.Glob(filepath.Join(dir, "*.msg*"))
	require.Empty(t, files)
	require.Len(t, relay.Mailbox(), 60)
}
