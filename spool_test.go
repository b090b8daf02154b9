package mxrelay_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mxrelay/mxrelay"
	"github.com/mxrelay/mxrelay/internal/spool"
	"github.com/mxrelay/mxrelay/internal/spoolcheck"
	"github.com/mxrelay/mxrelay/internal/store"
	"github.com/mxrelay/mxrelay/internal/testkit"
	"github.com/mxrelay/mxrelay/relaytest"
)

// handBack fills a spool with emails that a relay which is down cannot
// take, and closes the client: they stay in the spool.
func handBack(t *testing.T, s *relaytest.Server, dir string, subjects ...string) {
	t.Helper()
	s.SetDown(true)
	defer s.SetDown(false)
	c, err := mxrelay.New(s.URL, s.APIKey, testkit.Fast(&mxrelay.Options{SpoolDir: dir, ReconnectInterval: time.Hour}))
	require.NoError(t, err)
	var hs []*mxrelay.Handle
	for _, sub := range subjects {
		h, err := c.Enqueue(testkit.Mail(sub, "b@example.com", "c@example.com"), mxrelay.WithPriority(mxrelay.PriorityHigh))
		require.NoError(t, err)
		hs = append(hs, h)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	require.Error(t, c.Close(ctx))
	for _, h := range hs {
		res, err := h.Wait(testkit.Ctx(t))
		require.ErrorIs(t, err, mxrelay.ErrClosed)
		require.ErrorIs(t, err, mxrelay.ErrSpooled)
		assert.False(t, res.MaybeDelivered)
	}
	require.Len(t, testkit.SpoolFiles(t, dir), len(subjects))
	require.Empty(t, testkit.SpoolResults(t, dir), "an email handed back has no result in the spool")
}

func TestSpoolKeepsWhatCloseHandsBack(t *testing.T) {
	s := testkit.NewRelay(t, nil)
	dir := t.TempDir()
	handBack(t, s, dir, "one", "two", "three")

	c := testkit.NewClient(t, s, &mxrelay.Options{SpoolDir: dir})
	rec := c.Recovered()
	require.Len(t, rec, 3)
	for i, h := range rec {
		res, err := h.Wait(testkit.Ctx(t))
		require.NoError(t, err)
		assert.Equal(t, []string{"b@example.com", "c@example.com"}, res.Accepted)
		assert.Equal(t, mxrelay.PriorityHigh, res.Priority, "the priority survives")
		assert.Equal(t, []string{"one", "two", "three"}[i], testkit.SubjectOf(s.Mailbox()[i].Data), "in the order accepted")
	}
	assert.Empty(t, testkit.SpoolFiles(t, dir))
	res := testkit.SpoolResults(t, dir)
	require.Len(t, res, 3)
	for _, r := range res {
		assert.True(t, r.Delivered)
		assert.Equal(t, 1, r.Attempts)
	}
	assert.Equal(t, []string{"one", "two", "three"}, testkit.Subjects(s))
}

func TestSpoolIsLocked(t *testing.T) {
	s := testkit.NewRelay(t, nil)
	dir := t.TempDir()
	testkit.NewClient(t, s, &mxrelay.Options{SpoolDir: dir})
	_, err := mxrelay.New(s.URL, s.APIKey, &mxrelay.Options{SpoolDir: dir})
	require.ErrorContains(t, err, "in use by another Client")
}

// TestSpoolEndOfDataMarker: an email whose end of data the previous
// Client recorded as written is an unknown outcome after a restart: failed
// at once, or sent again (and flagged) with RetryUnknown.
func TestSpoolEndOfDataMarker(t *testing.T) {
	for _, retry := range []bool{false, true} {
		t.Run(map[bool]string{false: "fail", true: "RetryUnknown"}[retry], func(t *testing.T) {
			s := testkit.NewRelay(t, nil)
			dir := t.TempDir()
			handBack(t, s, dir, "ended", "not ended")
			files := testkit.SpoolFiles(t, dir)
			j, err := os.OpenFile(filepath.Join(dir, "journal"), os.O_WRONLY|os.O_APPEND, 0)
			require.NoError(t, err)
			_, err = j.WriteString("E " + filepath.Base(files[0]) + "\n")
			require.NoError(t, err)
			require.NoError(t, j.Close())

			c := testkit.NewClient(t, s, &mxrelay.Options{SpoolDir: dir, RetryUnknown: retry})
			rec := c.Recovered()
			require.Len(t, rec, 2)
			res, err := rec[0].Wait(testkit.Ctx(t))
			require.True(t, res.MaybeDelivered)
			if retry {
				require.NoError(t, err)
				assert.Equal(t, 2, res.Attempts, "the earlier attempt counts")
				assert.Equal(t, 1, testkit.CountSubject(s, "ended"))
			} else {
				require.ErrorIs(t, err, mxrelay.ErrUnknownOutcome)
				assert.Equal(t, 0, testkit.CountSubject(s, "ended"), "not sent again")
			}
			res, err = rec[1].Wait(testkit.Ctx(t))
			require.NoError(t, err)
			assert.False(t, res.MaybeDelivered)
			assert.Empty(t, testkit.SpoolFiles(t, dir))
		})
	}
}

// recoverOnly starts a Client on dir and checks that it recovers and
// sends exactly the email with the subject want, and leaves no .msg file.
func recoverOnly(t *testing.T, s *relaytest.Server, dir, want string) {
	t.Helper()
	c := testkit.NewClient(t, s, &mxrelay.Options{SpoolDir: dir})
	rec := c.Recovered()
	require.Len(t, rec, 1)
	_, err := rec[0].Wait(testkit.Ctx(t))
	require.NoError(t, err)
	assert.Equal(t, []string{want}, testkit.Subjects(s))
	assert.Empty(t, testkit.SpoolFiles(t, dir))
}

func TestSpoolDropsATornFile(t *testing.T) {
	s := testkit.NewRelay(t, nil)
	dir := t.TempDir()
	handBack(t, s, dir, "whole", "torn")
	files := testkit.SpoolFiles(t, dir)
	st, err := os.Stat(files[1])
	require.NoError(t, err)
	// A crash in the middle of Enqueue: the trailer never made it, and
	// the file never got its name.
	torn := files[1] + ".tmp"
	require.NoError(t, os.Rename(files[1], torn))
	require.NoError(t, os.Truncate(torn, st.Size()-3))

	recoverOnly(t, s, dir, "whole")
	assert.NoFileExists(t, torn)
}

func TestSpoolDeadlineSurvivesARestart(t *testing.T) {
	testkit.Bubble(t, testSpoolDeadlineSurvivesARestart)
}

func testSpoolDeadlineSurvivesARestart(t *testing.T) {
	s := testkit.NewRelay(t, nil)
	dir := t.TempDir()
	s.SetDown(true)
	c, err := mxrelay.New(s.URL, s.APIKey, testkit.ClientOptions(s, &mxrelay.Options{SpoolDir: dir, ReconnectInterval: time.Hour}))
	require.NoError(t, err)
	_, err = c.Enqueue(testkit.Mail("late"), mxrelay.WithTimeout(50*time.Millisecond))
	require.NoError(t, err)
	ctx, cancel := context.WithTimeout(context.Background(), time.Millisecond)
	defer cancel()
	c.Close(ctx)
	s.SetDown(false)
	require.Len(t, testkit.SpoolFiles(t, dir), 1, "handed back at Close, 1 ms after Enqueue on the bubble's clock")
	time.Sleep(60 * time.Millisecond) // past the deadline, counted from Enqueue

	c = testkit.NewClient(t, s, &mxrelay.Options{SpoolDir: dir})
	rec := c.Recovered()
	require.Len(t, rec, 1)
	_, err = rec[0].Wait(testkit.Ctx(t))
	require.ErrorIs(t, err, context.DeadlineExceeded)
	assert.ErrorContains(t, err, "email timeout of 50ms", "the timeout given, not what was left of it")
	assert.Empty(t, testkit.Subjects(s))
}

func TestSpoolRefusesWhatItCannotStore(t *testing.T) {
	s := testkit.NewRelay(t, nil)
	dir := t.TempDir()
	c := testkit.NewClient(t, s, &mxrelay.Options{SpoolDir: dir})
	_, err := c.Enqueue(mxrelay.Email{From: "a@example.com", To: []string{"b@example.com"}, Body: strings.NewReader("bare\nLF\r\n")})
	require.ErrorIs(t, err, mxrelay.ErrBareLineEnding)
	assert.Empty(t, testkit.SpoolFiles(t, dir), "a refused email leaves nothing behind")
	res, err := c.Send(testkit.Ctx(t), testkit.Mail("fine"))
	require.NoError(t, err)
	assert.True(t, res.Delivered())
	assert.Empty(t, testkit.SpoolFiles(t, dir))
}

// TestSpoolCompactionCanBeRepeated: a compaction cut after it appended to
// results.log (some of it, or all) but before the new journal replaced
// the old one runs again at the next start and writes each result once.
func TestSpoolCompactionCanBeRepeated(t *testing.T) {
	s := testkit.NewRelay(t, nil)
	dir := t.TempDir()
	handBack(t, s, dir, "one", "two")
	open := func() {
		c, err := mxrelay.New(s.URL, s.APIKey, testkit.Fast(&mxrelay.Options{SpoolDir: dir}))
		require.NoError(t, err)
		for _, h := range c.Recovered() {
			_, err := h.Wait(testkit.Ctx(t))
			require.NoError(t, err)
		}
		require.NoError(t, c.Close(testkit.Ctx(t)))
	}
	open() // sends both: two R lines in the journal
	old, err := os.ReadFile(filepath.Join(dir, "journal"))
	require.NoError(t, err)
	require.Equal(t, 2, strings.Count(string(old), "\nR "))

	open() // compacts: both move to results.log
	require.Len(t, testkit.SpoolResults(t, dir), 2)
	// As if that compaction had stopped before its rename, after writing
	// results.log and a torn line more.
	require.NoError(t, os.WriteFile(filepath.Join(dir, "journal"), old, 0o600))
	f, err := os.OpenFile(filepath.Join(dir, "results.log"), os.O_WRONLY|os.O_APPEND, 0)
	require.NoError(t, err)
	_, err = f.WriteString(`{"file":"torn`)
	require.NoError(t, err)
	require.NoError(t, f.Close())

	open()
	res := testkit.SpoolResults(t, dir)
	require.Len(t, res, 2, "each result once")
	assert.Equal(t, []string{"one", "two"}, testkit.Subjects(s))
}

// TestSpoolJournalStaysInItsDirectory: the journal names files, and a
// crafted or corrupted one must not make New remove (or look at) anything
// outside SpoolDir.
func TestSpoolJournalStaysInItsDirectory(t *testing.T) {
	s := testkit.NewRelay(t, nil)
	spoolcheck.StaysInItsDirectory(t, "journal", func(dir string) int {
		return len(testkit.NewClient(t, s, &mxrelay.Options{SpoolDir: dir}).Recovered())
	})
}

// TestSpoolSetsACorruptFileAside: a .msg file only gets its name once it
// is whole and fsync'd, so one that does not parse was damaged afterwards:
// it is an accepted email, and it is set aside (.bad), not deleted, nor
// sent. Garbage that is large, without any newline, is refused without
// being read whole.
func TestSpoolSetsACorruptFileAside(t *testing.T) {
	s := testkit.NewRelay(t, nil)
	dir := t.TempDir()
	handBack(t, s, dir, "whole", "damaged")
	files := testkit.SpoolFiles(t, dir)
	data, err := os.ReadFile(files[1])
	require.NoError(t, err)
	data[len(data)-3] ^= 1 // a digit of the trailer
	require.NoError(t, os.WriteFile(files[1], data, 0o600))
	garbage := filepath.Join(dir, "0000000000000000-000001.msg")
	require.NoError(t, os.WriteFile(garbage, bytes.Repeat([]byte("x"), 8<<20), 0o600))

	recoverOnly(t, s, dir, "whole")
	kept, err := os.ReadFile(files[1] + ".bad")
	require.NoError(t, err, "a damaged email was deleted")
	assert.Equal(t, data, kept)
	assert.FileExists(t, garbage+".bad")
}

// TestSpoolClosesItsFiles: after Close, nothing in the spool is open: not
// the lock, the journal, nor the files of emails delivered, failed,
// recovered or handed back.
func TestSpoolClosesItsFiles(t *testing.T) {
	s := testkit.NewRelay(t, nil)
	dir := t.TempDir()
	handBack(t, s, dir, "one", "two")
	require.Empty(t, spoolcheck.OpenIn(t, dir), "after a Close that handed back")

	c, err := mxrelay.New(s.URL, s.APIKey, testkit.Fast(&mxrelay.Options{SpoolDir: dir}))
	require.NoError(t, err)
	open := spoolcheck.OpenIn(t, dir)
	require.NotEmpty(t, open)
	_, err = mxrelay.New(s.URL, s.APIKey, &mxrelay.Options{SpoolDir: dir})
	require.ErrorContains(t, err, "in use by another Client")
	require.ElementsMatch(t, open, spoolcheck.OpenIn(t, dir), "a New that failed left files open")
	for _, h := range c.Recovered() {
		_, err := h.Wait(testkit.Ctx(t))
		require.NoError(t, err)
	}
	_, err = c.Send(testkit.Ctx(t), testkit.Mail("three"))
	require.NoError(t, err)
	_, err = c.Send(testkit.Ctx(t), mxrelay.Email{From: "a@example.com", To: []string{"b@example.com"}, Body: strings.NewReader("bare\n")})
	require.Error(t, err)
	require.NoError(t, c.Close(testkit.Ctx(t)))
	assert.Empty(t, spoolcheck.OpenIn(t, dir), "after a Close that sent everything")
}

// TestSpoolRemembersAnsweredEndOfData: an end of data whose reply came
// (a 4xx to it, or a 250 with some recipients still to retry) is not an
// unknown outcome after a restart: the email is retried for what is left,
// and a recipient that has it does not get it again.
func TestSpoolRemembersAnsweredEndOfData(t *testing.T) {
	for _, tc := range []struct {
		name  string
		fault relaytest.Fault
		to    []string
	}{
		{"4xx to the end of data", relaytest.Fault{Kind: relaytest.ReplaceReply, Command: ".", Reply: "451 4.3.0 try again"}, []string{"b@example.com"}},
		{"one recipient 4xx", relaytest.Fault{Kind: relaytest.ReplaceReply, Command: "RCPT", Recipient: "c@example.com", Reply: "450 4.2.1 busy"}, []string{"b@example.com", "c@example.com"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := testkit.NewRelay(t, nil)
			dir := t.TempDir()
			s.Inject(tc.fault)
			retrying := make(chan struct{}, 1)
			c, err := mxrelay.New(s.URL, s.APIKey, testkit.Fast(&mxrelay.Options{SpoolDir: dir, RetryInterval: time.Hour, MaxRetryInterval: time.Hour,
				OnEvent: func(e mxrelay.Event) {
					if e.Type == mxrelay.EventEmailRetrying {
						retrying <- struct{}{}
					}
				}}))
			require.NoError(t, err)
			h, err := c.Enqueue(testkit.Mail("answered", tc.to...))
			require.NoError(t, err)
			<-retrying
			ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
			defer cancel()
			require.Error(t, c.Close(ctx))
			res, err := h.Wait(testkit.Ctx(t))
			if len(tc.to) == 1 {
				require.ErrorIs(t, err, mxrelay.ErrSpooled)
			} else {
				// Delivered to b: a delivery, with c handed back.
				require.NoError(t, err)
				require.Len(t, res.Rejected, 1)
				assert.Equal(t, "c@example.com", res.Rejected[0].Address)
				assert.ErrorIs(t, res.Rejected[0].Err, mxrelay.ErrSpooled)
			}
			require.Empty(t, testkit.SpoolResults(t, dir), "handed back: no result on disk yet")

			c = testkit.NewClient(t, s, &mxrelay.Options{SpoolDir: dir})
			rec := c.Recovered()
			require.Len(t, rec, 1)
			res, err = rec[0].Wait(testkit.Ctx(t))
			require.NoError(t, err, "an answered end of data is not an unknown outcome")
			assert.False(t, res.MaybeDelivered)
			assert.ElementsMatch(t, tc.to, res.Accepted)
			assert.Equal(t, 2, res.Attempts)
			got := map[string]int{}
			for _, m := range s.Mailbox() {
				for _, to := range m.To {
					got[to]++
				}
			}
			for _, to := range tc.to {
				assert.Equal(t, 1, got[to], "%s: copies", to)
			}
			r := testkit.SpoolResults(t, dir)
			require.Len(t, r, 1)
			assert.True(t, r[0].Delivered)
			assert.ElementsMatch(t, tc.to, r[0].Accepted)
		})
	}
}

// TestSpoolRulesOfTheNextLife: an email accepted under FixLineEndings
// and found by a Client without it breaks that Client's rules: it fails at
// once with ErrInvalidEmail and one result, and is not sent.
func TestSpoolRulesOfTheNextLife(t *testing.T) {
	s := testkit.NewRelay(t, nil)
	dir := t.TempDir()
	s.SetDown(true)
	c, err := mxrelay.New(s.URL, s.APIKey, testkit.Fast(&mxrelay.Options{SpoolDir: dir, FixLineEndings: true, ReconnectInterval: time.Hour}))
	require.NoError(t, err)
	_, err = c.Enqueue(mxrelay.Email{From: "a@example.com", To: []string{"b@example.com"}, Body: strings.NewReader("Subject: bare\n\nLF\n")})
	require.NoError(t, err)
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	require.Error(t, c.Close(ctx))
	s.SetDown(false)

	c = testkit.NewClient(t, s, &mxrelay.Options{SpoolDir: dir})
	require.Len(t, c.Recovered(), 1)
	_, err = c.Recovered()[0].Wait(testkit.Ctx(t))
	require.ErrorIs(t, err, mxrelay.ErrInvalidEmail)
	require.ErrorIs(t, err, mxrelay.ErrBareLineEnding)
	assert.Empty(t, s.Mailbox())
	assert.Empty(t, testkit.SpoolFiles(t, dir))
	require.Len(t, testkit.SpoolResults(t, dir), 1)
}

// TestSpoolOverRawTunnel: the spool's markers and results are the same
// through a raw tunnel.
func TestSpoolOverRawTunnel(t *testing.T) {
	s := testkit.NewRelay(t, &relaytest.Options{RawTunnel: true})
	dir := t.TempDir()
	c := testkit.NewClient(t, s, &mxrelay.Options{SpoolDir: dir, RawTunnel: true})
	for i := range 5 {
		_, err := c.Send(testkit.Ctx(t), testkit.Mail("t"+strconv.Itoa(i)))
		require.NoError(t, err)
	}
	require.NoError(t, c.Close(testkit.Ctx(t)))
	assert.Empty(t, testkit.SpoolFiles(t, dir))
	res := testkit.SpoolResults(t, dir)
	require.Len(t, res, 5)
	j, err := os.ReadFile(filepath.Join(dir, "journal"))
	require.NoError(t, err)
	assert.Equal(t, 5, strings.Count(string(j), "\nE "), "an end-of-data marker per email")
}

// TestSpoolDirIsRelativeToWhereNewRan: a relative SpoolDir names the
// directory as of New; a process that changes directory afterwards (as a
// daemon does) still uses that one.
func TestSpoolDirIsRelativeToWhereNewRan(t *testing.T) {
	s := testkit.NewRelay(t, nil)
	root := t.TempDir()
	t.Chdir(root)
	c := testkit.NewClient(t, s, &mxrelay.Options{SpoolDir: "spool"})
	t.Chdir(t.TempDir())
	_, err := c.Send(testkit.Ctx(t), testkit.Mail("moved"))
	require.NoError(t, err)
	require.NoError(t, c.Close(testkit.Ctx(t)))
	assert.Len(t, testkit.SpoolResults(t, filepath.Join(root, "spool")), 1)
	assert.NoDirExists(t, "spool")
}

// TestSpoolPermissions: the directory it makes is 0700 and its files
// 0600: emails are private.
func TestSpoolPermissions(t *testing.T) {
	s := testkit.NewRelay(t, nil)
	dir := filepath.Join(t.TempDir(), "spool")
	handBack(t, s, dir, "private")
	spoolcheck.Private(t, dir)
}

// TestSpoolEnqueueRacingClose: Enqueues from several goroutines race
// Close; then a new Client takes the directory. Every email accepted has
// its result (sent, or handed back and sent by the new Client), and no
// email refused is ever sent.
func TestSpoolEnqueueRacingClose(t *testing.T) {
	s := testkit.NewRelay(t, nil)
	dir := t.TempDir()
	c, err := mxrelay.New(s.URL, s.APIKey, testkit.Fast(&mxrelay.Options{SpoolDir: dir}))
	require.NoError(t, err)
	var mu sync.Mutex
	accepted, refused := map[string]*mxrelay.Handle{}, map[string]bool{}
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Go(func() {
			for i := range 40 {
				id := fmt.Sprintf("g%d-%d", g, i)
				e := testkit.Mail(id)
				e.ID = id
				h, err := c.Enqueue(e)
				mu.Lock()
				if err != nil {
					assert.ErrorIs(t, err, mxrelay.ErrClosed)
					refused[id] = true
				} else {
					accepted[id] = h
				}
				mu.Unlock()
			}
		})
	}
	for {
		mu.Lock()
		n := len(accepted)
		mu.Unlock()
		if n >= 20 {
			break
		}
		runtime.Gosched()
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Millisecond)
	defer cancel()
	c.Close(ctx)
	wg.Wait()
	handedBack := 0
	for _, h := range accepted {
		_, err := h.Wait(testkit.Ctx(t))
		if errors.Is(err, mxrelay.ErrSpooled) {
			handedBack++
		}
	}

	c = testkit.NewClient(t, s, &mxrelay.Options{SpoolDir: dir})
	require.Len(t, c.Recovered(), handedBack)
	for _, h := range c.Recovered() {
		_, err := h.Wait(testkit.Ctx(t))
		require.NoError(t, err)
	}
	require.NoError(t, c.Close(testkit.Ctx(t)))
	for _, sub := range testkit.Subjects(s) {
		assert.False(t, refused[sub], "%s: refused, yet sent", sub)
		assert.NotNil(t, accepted[sub], "%s: sent, never accepted", sub)
	}
	assert.Equal(t, len(accepted), len(testkit.SpoolResults(t, dir)), "one result per accepted email")
	assert.Empty(t, testkit.SpoolFiles(t, dir))
	t.Logf("%d accepted (%d handed back), %d refused", len(accepted), handedBack, len(refused))
}

// TestSpoolKeepsTheLastErrorOfARetry: an email waiting for its retry
// has the temporary refusal that deferred it in the spool's records,
// where an operator's listing (mxrelay-queue list) reads it while the
// Client runs.
func TestSpoolKeepsTheLastErrorOfARetry(t *testing.T) {
	s := testkit.NewRelay(t, nil)
	s.Inject(relaytest.Fault{Kind: relaytest.ReplaceReply, Command: "RCPT", Recipient: "b@example.com", Reply: "450 4.2.1 mailbox busy, come back later"})
	dir := t.TempDir()
	retrying := make(chan struct{}, 1)
	c := testkit.NewClient(t, s, &mxrelay.Options{SpoolDir: dir, RetryInterval: time.Hour, MaxRetryInterval: time.Hour,
		OnEvent: func(e mxrelay.Event) {
			if e.Type == mxrelay.EventEmailRetrying {
				select {
				case retrying <- struct{}{}:
				default:
				}
			}
		}})
	h, err := c.Enqueue(testkit.Mail("deferred", "b@example.com"))
	require.NoError(t, err)
	select {
	case <-retrying:
	case <-testkit.Ctx(t).Done():
		t.Fatal("no retry")
	}
	r, err := spool.NewReader(dir)
	require.NoError(t, err)
	infos, err := r.List(testkit.Ctx(t), store.Filter{States: []store.State{store.StateDeferred}})
	require.NoError(t, err)
	require.Len(t, infos, 1)
	assert.Equal(t, h.ID(), infos[0].ID)
	require.NotNil(t, infos[0].Progress)
	assert.Contains(t, infos[0].Progress.Error, "450")
	assert.Contains(t, infos[0].Progress.Error, "mailbox busy, come back later")
	h.Cancel()
}
