package mxrelay

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
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

// breakJournal makes every later journal write of s fail, as a full disk
// or a lost file system would.
func breakJournal(s *spool) {
	s.mu.Lock()
	s.journal.Close()
	s.mu.Unlock()
}

// TestSpoolResultNotWrittenKeepsTheFile: a result that cannot be written
// to the journal must not cost the email its file, or the email would be
// neither finished on disk nor sent again.
func TestSpoolResultNotWrittenKeepsTheFile(t *testing.T) {
	dir := t.TempDir()
	s, left, err := openSpool(dir, false)
	require.NoError(t, err)
	require.Empty(t, left)
	defer s.close()
	b, name, err := s.store(&spoolHeader{ID: "x", From: "a@example.com", To: []string{"b@example.com"}}, strings.NewReader("Subject: x\r\n\r\n.\r\n"), bodyRules{})
	require.NoError(t, err)
	require.NoError(t, s.commit(b, name))
	b.release()
	breakJournal(s)
	require.Error(t, s.finished(name, &Result{EmailID: "x", Attempts: 1}))
	require.FileExists(t, filepath.Join(dir, name), "the file went without its result on disk")
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
	c, err := New(relay.URL, relay.APIKey, &Options{SpoolDir: dir})
	require.NoError(t, err)
	breakJournal(c.spool)
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

// FuzzParseSpooled: whatever a .msg file holds, parsing it does not
// panic, and what it accepts is consistent with the file's size.
func FuzzParseSpooled(f *testing.F) {
	whole := spoolMagic + `{"id":"x","from":"a@example.com","to":["b@example.com"]}` + "\n" + "body\r\n"
	f.Add([]byte(whole + string(trailer(6))))
	f.Add([]byte(whole + string(trailer(7))))
	f.Add([]byte(spoolMagic + "\n" + string(trailer(0))))
	f.Add([]byte("garbage"))
	f.Fuzz(func(t *testing.T, data []byte) {
		path := filepath.Join(t.TempDir(), "f.msg")
		require.NoError(t, os.WriteFile(path, data, 0o600))
		sp, err := readSpooled(path)
		if err != nil {
			return
		}
		defer sp.f.Close()
		require.Equal(t, int64(len(data)), sp.off+sp.size+trailerLen)
		require.True(t, strings.HasPrefix(string(data), spoolMagic))
	})
}

// TestSpoolCompactsWhileRunning: the journal is compacted at run time
// while other emails are in flight (their markers must be carried over),
// and every result is recorded exactly once.
func TestSpoolCompactsWhileRunning(t *testing.T) {
	defer func(n int64) { maxJournal = n }(maxJournal)
	maxJournal = 2 << 10
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
	log, err := os.ReadFile(filepath.Join(dir, resultsName))
	require.NoError(t, err)
	require.NotEmpty(t, log, "no compaction ran")

	c, err = New(relay.URL, relay.APIKey, &Options{SpoolDir: dir})
	require.NoError(t, err)
	require.Empty(t, c.Recovered())
	require.NoError(t, c.Close(ctx))
	log, err = os.ReadFile(filepath.Join(dir, resultsName))
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

// TestSpoolHugeJournalIsStreamed: a start reads the journal line by line
// and keeps only what concerns files still there, so a huge or hostile
// journal (here 32 MiB of markers naming files that do not exist, and a
// line with no end) does not cost its size in memory.
func TestSpoolHugeJournalIsStreamed(t *testing.T) {
	dir := t.TempDir()
	f, err := os.Create(filepath.Join(dir, journalName))
	require.NoError(t, err)
	w := bufio.NewWriter(f)
	w.WriteString("B 0\n")
	for i := 0; w.Buffered()+int(must(f.Seek(0, io.SeekCurrent))) < 32<<20; i++ {
		fmt.Fprintf(w, "E %016x-%06d.msg\n", i, i%1e6)
	}
	w.WriteString("R " + strings.Repeat("x", 1<<20)) // no newline
	require.NoError(t, w.Flush())
	require.NoError(t, f.Close())

	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	s, left, err := openSpool(dir, false)
	runtime.ReadMemStats(&after)
	require.NoError(t, err)
	defer s.close()
	require.Empty(t, left)
	require.Less(t, after.TotalAlloc-before.TotalAlloc, uint64(16<<20), "bytes allocated to read a 33 MiB journal")
	require.Less(t, s.size, int64(1<<10), "the new journal keeps nothing of it")
}

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}
