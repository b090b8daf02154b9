package spool

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mxrelay/mxrelay/internal/spoolcheck"
	"github.com/mxrelay/mxrelay/internal/store"
	"github.com/mxrelay/mxrelay/internal/store/storetest"
)

var ctx = context.Background()

// open opens dir, closed when t ends.
func open(t *testing.T, dir string) *Store {
	t.Helper()
	s, err := Open(dir, nil)
	require.NoError(t, err)
	t.Cleanup(func() { s.Close() })
	return s
}

// reopen closes s, as a process that dies would, and opens its directory
// again.
func reopen(t *testing.T, s *Store) *Store {
	t.Helper()
	require.NoError(t, s.Close())
	return open(t, s.dir)
}

// msgFiles lists the .msg files in dir.
func msgFiles(t *testing.T, dir string) []string {
	t.Helper()
	names, err := filepath.Glob(filepath.Join(dir, "*.msg"))
	require.NoError(t, err)
	return names
}

// records reads every result record in dir: results.log, then the
// journal's, where spoolcheck, which reads them for the tests at both
// levels, looks for them.
func records(t *testing.T, dir string) []Record {
	t.Helper()
	require.Equal(t, []string{resultsName, journalName}, []string{spoolcheck.ResultsLog, spoolcheck.Journal},
		"spoolcheck reads the records under other names")
	return spoolcheck.Records[Record](t, dir)
}

// finish claims and finishes every ready email of s, delivered.
func finish(t *testing.T, s *Store) {
	t.Helper()
	for _, c := range storetest.Claim(t, s, "w", 1000) {
		require.NoError(t, s.Finish(ctx, c.Token, &store.Result{ID: c.ID, Delivered: true, Attempts: 1}))
	}
}

// breakJournal makes every later journal write of s fail, as a full disk
// or a lost file system would.
func breakJournal(s *Store) {
	s.jmu.Lock()
	s.journal.Close()
	s.jmu.Unlock()
}

func TestOpenIsLocked(t *testing.T) {
	dir := t.TempDir()
	s := open(t, dir)
	before := spoolcheck.OpenIn(t, dir)
	_, err := Open(dir, nil)
	require.ErrorContains(t, err, "in use by another Client")
	assert.ElementsMatch(t, before, spoolcheck.OpenIn(t, dir), "an Open that failed left files open")
	require.NoError(t, s.Close())
	open(t, dir) // free once closed
}

// TestCloseClosesItsFiles: after Close, nothing in the directory is open:
// not the lock, the journal, results.log, nor the files of bodies read.
func TestCloseClosesItsFiles(t *testing.T) {
	dir := t.TempDir()
	s := open(t, dir)
	storetest.Accept(t, s, "e1", 0, "body")
	storetest.Accept(t, s, "e2", 0, "body")
	r, err := s.Body(ctx, "e1")
	require.NoError(t, err)
	_, err = io.ReadAll(r)
	require.NoError(t, err)
	r.Close()
	finish(t, s)
	s = reopen(t, s)
	storetest.Accept(t, s, "e3", 0, "body")
	require.NotEmpty(t, spoolcheck.OpenIn(t, dir))
	require.NoError(t, s.Close())
	assert.Empty(t, spoolcheck.OpenIn(t, dir))
}

// TestResultNotWrittenKeepsTheFile: a result that cannot be written to
// the journal must not cost the email its file, or the email would be
// neither finished on disk nor sent again; nor may another claim of this
// Store take it (its holder may try again); the next Open sends it.
func TestResultNotWrittenKeepsTheFile(t *testing.T) {
	s := open(t, t.TempDir())
	storetest.Accept(t, s, "e1", 0, "x")
	c := storetest.Claim(t, s, "w1", 1)[0]
	breakJournal(s)
	require.Error(t, s.Finish(ctx, c.Token, &store.Result{ID: "e1", Delivered: true}))
	require.Len(t, msgFiles(t, s.dir), 1, "the file went without its result on disk")
	_, err := s.Result(ctx, "e1")
	assert.ErrorIs(t, err, store.ErrNotFinished)
	got, next, err := s.Claim(ctx, "w2", 1, time.Nanosecond)
	require.NoError(t, err)
	assert.Empty(t, got, "held for the rest of this Store's life")
	assert.True(t, next.IsZero(), "no lease to wait for: %v", next)

	s = reopen(t, s)
	require.Len(t, s.Recovered(), 1)
	assert.Equal(t, "e1", s.Recovered()[0].ID)
	assert.Equal(t, []string{"e1"}, storetest.IDs(storetest.Claim(t, s, "w3", 1)), "sent again by the next Open")
}

// TestEndingFailureRecordsNothing: an end of data that cannot be recorded
// must not be written; nothing counts it, now or after a reopen.
func TestEndingFailureRecordsNothing(t *testing.T) {
	s := open(t, t.TempDir())
	storetest.Accept(t, s, "e1", 0, "x")
	c := storetest.Claim(t, s, "w1", 1)[0]
	breakJournal(s)
	_, err := s.Ending(ctx, []store.Token{c.Token})
	require.Error(t, err)
	s = reopen(t, s)
	c = storetest.Claim(t, s, "w1", 1)[0]
	assert.Zero(t, c.Unanswered)
}

// TestJournalLinesAreTheRecords: what each call writes to the journal, in
// the format of docs/spool.md.
func TestJournalLinesAreTheRecords(t *testing.T) {
	s := open(t, t.TempDir())
	for _, id := range []string{"e1", "e2"} {
		storetest.Accept(t, s, id, 0, "x")
	}
	names := msgFiles(t, s.dir)
	cs := storetest.Claim(t, s, "w1", 2)
	errs, err := s.Ending(ctx, []store.Token{cs[0].Token, cs[1].Token})
	require.NoError(t, err)
	require.Equal(t, []error{nil, nil}, errs)
	p := &store.Progress{Attempts: 1, Pending: []string{"b@example.com"}}
	require.NoError(t, s.Requeue(ctx, cs[0].Token, p, time.Time{}))
	require.NoError(t, s.HandBack(ctx, cs[1].Token, nil))
	c := storetest.Claim(t, s, "w1", 1)[0]
	require.NoError(t, s.Finish(ctx, c.Token, &store.Result{ID: "e1", Delivered: true, Attempts: 2,
		Reply: store.Reply{Code: 250, Message: "ok"}}))

	j, err := os.ReadFile(filepath.Join(s.dir, journalName))
	require.NoError(t, err)
	lines := strings.Split(strings.TrimSuffix(string(j), "\n"), "\n")
	require.Len(t, lines, 5, "%s", j)
	assert.Equal(t, "B 0", lines[0])
	assert.Equal(t, "E "+filepath.Base(names[0])+"\nE "+filepath.Base(names[1]), lines[1]+"\n"+lines[2], "one write for the window")
	assert.JSONEq(t, fmt.Sprintf(`{"file":%q,"attempts":1,"pending":["b@example.com"]}`, filepath.Base(names[0])), strings.TrimPrefix(lines[3], "D "))
	var rec Record
	require.NoError(t, json.Unmarshal([]byte(strings.TrimPrefix(lines[4], "R ")), &rec))
	assert.Equal(t, filepath.Base(names[0]), rec.File)
	assert.Equal(t, "250 ok", rec.Reply, "as SpoolResult says it")
	assert.NoFileExists(t, names[0], "removed with its result")
}

// todaysFormat is a directory as the Client before the seam left it
// (headers with neither key nor meta, a D line, an E line after it,
// results in results.log and in the journal): ea with progress and an E
// after it, eb with an E line, ec finished in the journal, and old in
// results.log.
func todaysFormat(t *testing.T) string {
	dir := t.TempDir()
	const a, b, c = "0000000000000001-000001.msg", "0000000000000002-000002.msg", "0000000000000003-000003.msg"
	file := func(name, id, body string) {
		hdr := fmt.Sprintf(`{"id":%q,"from":"a@example.com","to":["b@example.com","c@example.com"],"priority":1,"retries":3,"queued":"2030-01-02T03:04:05Z"}`, id)
		data := magic + hdr + "\n" + body + string(trailer(int64(len(body))))
		require.NoError(t, os.WriteFile(filepath.Join(dir, name), []byte(data), 0o600))
	}
	file(a, "ea", "body a")
	file(b, "eb", "body b")
	file(c, "ec", "body c")
	results := `{"file":"0000000000000000-000000.msg","id":"old","delivered":true,"attempts":1,"reply":"250 2.0.0 ok","time":"` +
		time.Now().UTC().Format(time.RFC3339Nano) + `"}` + "\n"
	require.NoError(t, os.WriteFile(filepath.Join(dir, resultsName), []byte(results), 0o600))
	journal := fmt.Sprintf("B %d\n", len(results)) +
		`D {"file":"` + a + `","attempts":1,"accepted":["b@example.com"],"rejected":{"d@example.com":"550 no"},"pending":["c@example.com"]}` + "\n" +
		"E " + a + "\n" +
		"E " + b + "\n" +
		`R {"file":"` + c + `","id":"ec","delivered":false,"attempts":1,"error":"mxrelay: refused","time":"` + time.Now().UTC().Format(time.RFC3339Nano) + `"}` + "\n"
	require.NoError(t, os.WriteFile(filepath.Join(dir, journalName), []byte(journal), 0o600))
	require.NoError(t, os.WriteFile(filepath.Join(dir, lockName), nil, 0o600))
	return dir
}

// TestReadsTodaysFormat: todaysFormat's directory is read as it says.
func TestReadsTodaysFormat(t *testing.T) {
	dir := todaysFormat(t)
	const c = "0000000000000003-000003.msg"
	s := open(t, dir)
	got := map[string]*store.Claimed{}
	for _, c := range storetest.Claim(t, s, "w1", 10) {
		got[c.ID] = c
	}
	require.Len(t, got, 2, "ec has its result")
	assert.NoFileExists(t, filepath.Join(dir, c))
	ea := got["ea"]
	assert.Equal(t, []string{"b@example.com", "c@example.com"}, ea.To)
	assert.Equal(t, 1, ea.Priority)
	assert.Equal(t, 3, ea.Retries)
	assert.Nil(t, ea.Meta, "written before meta was kept")
	assert.Equal(t, &store.Progress{Attempts: 1, Accepted: []string{"b@example.com"}, Rejected: map[string]string{"d@example.com": "550 no"}, Pending: []string{"c@example.com"}}, ea.Progress)
	assert.Equal(t, 1, ea.Unanswered, "the E after the D")
	assert.Equal(t, 1, got["eb"].Unanswered)
	assert.Nil(t, got["eb"].Progress)
	r, err := s.Body(ctx, "eb")
	require.NoError(t, err)
	body, err := io.ReadAll(r)
	require.NoError(t, err)
	r.Close()
	assert.Equal(t, "body b", string(body))

	res, err := s.Result(ctx, "old")
	require.NoError(t, err)
	assert.Equal(t, store.Reply{Code: 250, Message: "2.0.0 ok"}, res.Reply)
	res, err = s.Result(ctx, "ec")
	require.NoError(t, err)
	assert.Equal(t, "mxrelay: refused", res.Error)
}

// TestHeaderIsVersion1: the header a Store writes has the fields of the
// format's version 1 under their names, and its own (key, meta) beside
// them, so that a Client of before can read the file.
func TestHeaderIsVersion1(t *testing.T) {
	s := open(t, t.TempDir())
	storetest.AcceptEnv(t, s, &store.Envelope{ID: "e1", IdempotencyKey: "k", From: "a@example.com", To: []string{"b@example.com"},
		Priority: 2, Retries: 4, Deadline: time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)}, "body")
	data, err := os.ReadFile(msgFiles(t, s.dir)[0])
	require.NoError(t, err)
	line, _, _ := strings.Cut(strings.TrimPrefix(string(data), magic), "\n")
	var h map[string]any
	require.NoError(t, json.Unmarshal([]byte(line), &h))
	for _, k := range []string{"id", "from", "to", "priority", "retries", "deadline", "queued", "key", "meta"} {
		assert.Contains(t, h, k)
	}
	assert.Equal(t, "bWV0YTplMQ==", h["meta"], "base64 of meta:e1")
	assert.True(t, strings.HasSuffix(string(data), "body"+string(trailer(4))))
}

func TestMetaIsBounded(t *testing.T) {
	s := open(t, t.TempDir())
	d, err := s.Accept(ctx, &store.Envelope{ID: "big"})
	require.NoError(t, err)
	_, err = d.Commit(ctx, make([]byte, MaxMeta+1))
	require.Error(t, err)
	assert.Empty(t, msgFiles(t, s.dir), "refused, and nothing left")

	meta := bytes.Repeat([]byte{0xff}, MaxMeta)
	d, err = s.Accept(ctx, &store.Envelope{ID: "fits"})
	require.NoError(t, err)
	_, err = d.Commit(ctx, meta)
	require.NoError(t, err)
	s = reopen(t, s)
	assert.Equal(t, meta, storetest.Claim(t, s, "w1", 1)[0].Meta)
}

// TestDropsATornFile: a crash in the middle of an Accept leaves a .tmp
// file: never accepted, removed by the next Open.
func TestDropsATornFile(t *testing.T) {
	s := open(t, t.TempDir())
	storetest.Accept(t, s, "whole", 0, "x")
	storetest.Accept(t, s, "torn", 0, "x")
	files := msgFiles(t, s.dir)
	torn := files[1] + tmpSuffix
	require.NoError(t, os.Rename(files[1], torn))
	require.NoError(t, os.Truncate(torn, 40))

	s = reopen(t, s)
	assert.Equal(t, []string{"whole"}, storetest.IDs(storetest.Claim(t, s, "w1", 10)))
	assert.NoFileExists(t, torn)
}

// TestSetsACorruptFileAside: a .msg file only gets its name once it is
// whole and fsync'd, so one that does not parse was damaged afterwards:
// it is an accepted email, and it is set aside (.bad), not deleted, nor
// sent. Garbage that is large, without any newline, is refused without
// being read whole.
func TestSetsACorruptFileAside(t *testing.T) {
	s := open(t, t.TempDir())
	storetest.Accept(t, s, "whole", 0, "x")
	storetest.Accept(t, s, "damaged", 0, "x")
	files := msgFiles(t, s.dir)
	data, err := os.ReadFile(files[1])
	require.NoError(t, err)
	data[len(data)-3] ^= 1 // a digit of the trailer
	require.NoError(t, os.WriteFile(files[1], data, 0o600))
	garbage := filepath.Join(s.dir, "0000000000000000-000001.msg")
	require.NoError(t, os.WriteFile(garbage, bytes.Repeat([]byte("x"), 8<<20), 0o600))

	s = reopen(t, s)
	assert.Equal(t, []string{"whole"}, storetest.IDs(storetest.Claim(t, s, "w1", 10)))
	kept, err := os.ReadFile(files[1] + badSuffix)
	require.NoError(t, err, "a damaged email was deleted")
	assert.Equal(t, data, kept)
	assert.FileExists(t, garbage+badSuffix)
	assert.ElementsMatch(t, []string{filepath.Base(garbage) + badSuffix, filepath.Base(files[1]) + badSuffix}, s.SetAside())
}

// TestCompactionCanBeRepeated: a compaction cut after it appended to
// results.log (some of it, or all) but before the new journal replaced
// the old one runs again at the next Open and writes each result once.
func TestCompactionCanBeRepeated(t *testing.T) {
	s := open(t, t.TempDir())
	storetest.Accept(t, s, "one", 0, "x")
	storetest.Accept(t, s, "two", 0, "x")
	finish(t, s)
	dir := s.dir
	require.NoError(t, s.Close())
	old, err := os.ReadFile(filepath.Join(dir, journalName))
	require.NoError(t, err)
	require.Equal(t, 2, strings.Count(string(old), "\nR "))

	s = open(t, dir) // compacts: both move to results.log
	require.Len(t, records(t, dir), 2)
	require.NoError(t, s.Close())
	// As if that compaction had stopped before its rename, after writing
	// results.log and a torn line more.
	require.NoError(t, os.WriteFile(filepath.Join(dir, journalName), old, 0o600))
	f, err := os.OpenFile(filepath.Join(dir, resultsName), os.O_WRONLY|os.O_APPEND, 0)
	require.NoError(t, err)
	_, err = f.WriteString(`{"file":"torn`)
	require.NoError(t, err)
	require.NoError(t, f.Close())

	s = open(t, dir)
	require.Len(t, records(t, dir), 2, "each result once")
	for _, id := range []string{"one", "two"} {
		r, err := s.Result(ctx, id)
		require.NoError(t, err)
		assert.True(t, r.Delivered)
	}
}

// TestJournalStaysInItsDirectory: the journal names files, and a crafted
// or corrupted one must not make Open remove (or look at) anything
// outside the directory.
func TestJournalStaysInItsDirectory(t *testing.T) {
	spoolcheck.StaysInItsDirectory(t, journalName, func(dir string) int {
		return len(open(t, dir).Recovered())
	})
}

// TestHugeJournalIsStreamed: Open reads the journal line by line and
// keeps only what concerns files still there, so a huge or hostile
// journal (here 32 MiB of markers naming files that do not exist, and a
// line with no end) does not cost its size in memory.
func TestHugeJournalIsStreamed(t *testing.T) {
	dir := t.TempDir()
	f, err := os.Create(filepath.Join(dir, journalName))
	require.NoError(t, err)
	w := bufio.NewWriter(f)
	w.WriteString("B 0\n")
	for i := 0; ; i++ {
		if pos, _ := f.Seek(0, io.SeekCurrent); int(pos)+w.Buffered() >= 32<<20 {
			break
		}
		fmt.Fprintf(w, "E %016x-%06d.msg\n", i, i%1e6)
	}
	w.WriteString("R " + strings.Repeat("x", 1<<20)) // no newline
	require.NoError(t, w.Flush())
	require.NoError(t, f.Close())

	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	s := open(t, dir)
	runtime.ReadMemStats(&after)
	assert.Empty(t, s.Recovered())
	assert.Less(t, after.TotalAlloc-before.TotalAlloc, uint64(16<<20), "bytes allocated to read a 33 MiB journal")
	assert.Less(t, s.size, int64(1<<10), "the new journal keeps nothing of it")
}

// TestCompactsWhileRunning: the journal is compacted at run time while
// other emails are in flight (their records must be carried over), every
// result is recorded once, and a result moved to results.log is still
// read back by ID.
func TestCompactsWhileRunning(t *testing.T) {
	defer func(n int64) { maxJournal = n }(maxJournal)
	maxJournal = 2 << 10
	s := open(t, t.TempDir())
	const n = 60
	for i := range n {
		storetest.Accept(t, s, fmt.Sprintf("e%02d", i), 0, "x")
	}
	cs := storetest.Claim(t, s, "w1", n)
	require.Len(t, cs, n)
	var toks []store.Token
	for _, c := range cs {
		toks = append(toks, c.Token)
	}
	end(t, s, toks...)
	for _, c := range cs[:n-10] {
		require.NoError(t, s.Finish(ctx, c.Token, &store.Result{ID: c.ID, Delivered: true, Attempts: 1}))
	}
	logged, err := os.ReadFile(filepath.Join(s.dir, resultsName))
	require.NoError(t, err)
	require.NotEmpty(t, logged, "no compaction ran")
	for _, c := range cs[:n-10] {
		r, err := s.Result(ctx, c.ID)
		require.NoError(t, err, c.ID)
		assert.Equal(t, c.ID, r.ID)
	}

	s = reopen(t, s)
	left := storetest.Claim(t, s, "w2", n)
	require.Len(t, left, 10)
	for _, c := range left {
		assert.Equal(t, 1, c.Unanswered, "%s: its E line carried over", c.ID)
	}
	ids := map[string]int{}
	for _, r := range records(t, s.dir) {
		ids[r.ID]++
	}
	assert.Len(t, ids, n-10)
	for id, k := range ids {
		assert.Equal(t, 1, k, id)
	}
}

// end records the ends of data of toks, each of which must be recorded.
func end(t *testing.T, s *Store, toks ...store.Token) {
	t.Helper()
	errs, err := s.Ending(ctx, toks)
	require.NoError(t, err)
	require.Equal(t, make([]error, len(toks)), errs)
}

// TestResultsPastRetentionAreNotIndexed: Open indexes only the results
// recorded within ResultRetention; older ones free their IDs and keys.
func TestResultsPastRetentionAreNotIndexed(t *testing.T) {
	dir := t.TempDir()
	old := time.Now().Add(-8 * 24 * time.Hour).UTC().Format(time.RFC3339Nano)
	recent := time.Now().UTC().Format(time.RFC3339Nano)
	results := `{"file":"0000000000000000-000000.msg","id":"old","key":"k1","delivered":true,"time":"` + old + `"}` + "\n" +
		`{"file":"0000000000000000-000001.msg","id":"recent","key":"k2","delivered":true,"time":"` + recent + `"}` + "\n" +
		"not a record\n"
	require.NoError(t, os.WriteFile(filepath.Join(dir, resultsName), []byte(results), 0o600))
	s := open(t, dir)
	_, err := s.Result(ctx, "old")
	assert.ErrorIs(t, err, store.ErrNotFound)
	_, err = s.Result(ctx, "recent")
	assert.NoError(t, err)
	a := storetest.AcceptEnv(t, s, &store.Envelope{ID: "new", IdempotencyKey: "k1"}, "x")
	assert.False(t, a.Existing, "the key of a result past retention is free")
	d, err := s.Accept(ctx, &store.Envelope{ID: "again", IdempotencyKey: "k2"})
	require.NoError(t, err)
	_, ok := d.Existing()
	assert.True(t, ok)
	d.Abort()
}

// TestTwoFilesOfOneID: a Client of before did not refuse duplicate IDs;
// two files of one ID are both kept, the later under a name of its own.
func TestTwoFilesOfOneID(t *testing.T) {
	s := open(t, t.TempDir())
	storetest.Accept(t, s, "e1", 0, "first")
	finish(t, s)
	storetest.Accept(t, s, "e2", 0, "second")
	storetest.Accept(t, s, "e3", 0, "third")
	files := msgFiles(t, s.dir)
	data, err := os.ReadFile(files[1])
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(files[1], bytes.Replace(data, []byte(`"id":"e3"`), []byte(`"id":"e2"`), 1), 0o600))

	s = reopen(t, s)
	got := storetest.IDs(storetest.Claim(t, s, "w1", 10))
	assert.Equal(t, []string{"e2", "e2 (" + filepath.Base(files[1]) + ")"}, got)
}

// TestCloseRacingCommits: Commits from several goroutines race Close;
// then a new Store takes the directory. Every Commit that returned nil
// is there, and none that failed.
func TestCloseRacingCommits(t *testing.T) {
	s := open(t, t.TempDir())
	var mu sync.Mutex
	accepted, refused := map[string]bool{}, map[string]bool{}
	var wg sync.WaitGroup
	started := make(chan struct{}, 1)
	for g := range 4 {
		wg.Go(func() {
			for i := range 50 {
				id := fmt.Sprintf("g%d-%d", g, i)
				d, err := s.Accept(ctx, &store.Envelope{ID: id})
				if err == nil {
					d.Write([]byte("body"))
					_, err = d.Commit(ctx, nil)
				}
				mu.Lock()
				if err != nil {
					assert.ErrorIs(t, err, store.ErrClosed)
					refused[id] = true
				} else {
					accepted[id] = true
				}
				mu.Unlock()
				select {
				case started <- struct{}{}:
				default:
				}
			}
		})
	}
	<-started
	require.NoError(t, s.Close())
	wg.Wait()

	s = open(t, s.dir)
	got := map[string]bool{}
	for _, a := range s.Recovered() {
		got[a.ID] = true
	}
	assert.Equal(t, accepted, got, "exactly the emails whose Commit returned nil")
	left, _ := filepath.Glob(filepath.Join(s.dir, "*.tmp"))
	assert.Empty(t, left)
	t.Logf("%d accepted, %d refused", len(accepted), len(refused))
}

// TestPermissions: the directory it makes is 0700 and its files 0600:
// emails are private.
func TestPermissions(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "spool")
	s := open(t, dir)
	storetest.Accept(t, s, "e1", 0, "x")
	storetest.Accept(t, s, "e2", 0, "x")
	c := storetest.Claim(t, s, "w1", 1)[0]
	require.NoError(t, s.Finish(ctx, c.Token, &store.Result{ID: c.ID}))
	s = reopen(t, s)
	spoolcheck.Private(t, dir)
}

// TestDirIsRelativeToWhereOpenRan: a relative directory names the one of
// the working directory at Open; a process that changes directory
// afterwards (as a daemon does) still uses that one.
func TestDirIsRelativeToWhereOpenRan(t *testing.T) {
	root := t.TempDir()
	t.Chdir(root)
	s := open(t, "spool")
	t.Chdir(t.TempDir())
	storetest.Accept(t, s, "e1", 0, "x")
	finish(t, s)
	assert.Len(t, records(t, filepath.Join(root, "spool")), 1)
	assert.NoDirExists(t, "spool")
}

// FuzzParseMsg: whatever a .msg file holds, parsing it does not panic,
// and what it accepts is consistent with the file's size.
func FuzzParseMsg(f *testing.F) {
	whole := magic + `{"id":"x","from":"a@example.com","to":["b@example.com"]}` + "\n" + "body\r\n"
	f.Add([]byte(whole + string(trailer(6))))
	f.Add([]byte(whole + string(trailer(7))))
	f.Add([]byte(magic + "\n" + string(trailer(0))))
	f.Add([]byte("garbage"))
	f.Fuzz(func(t *testing.T, data []byte) {
		path := filepath.Join(t.TempDir(), "f.msg")
		require.NoError(t, os.WriteFile(path, data, 0o600))
		m, err := readMsg(path)
		if err != nil {
			return
		}
		require.Equal(t, int64(len(data)), m.off+m.size+trailerLen)
		require.True(t, strings.HasPrefix(string(data), magic))
		require.NotEmpty(t, m.hdr.ID)
	})
}
