package spool

import (
	"bytes"
	"fmt"
	"io"
	"maps"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mxrelay/mxrelay/internal/store"
	"github.com/mxrelay/mxrelay/internal/store/storetest"
)

// everything is a Filter of every state.
var everything = store.Filter{States: store.States}

func newReader(t *testing.T, dir string) *Reader {
	t.Helper()
	r, err := NewReader(dir)
	require.NoError(t, err)
	return r
}

// listing is what r lists of every state: each ID's state.
func listing(t *testing.T, r *Reader) map[string]store.State {
	t.Helper()
	all, err := r.List(ctx, everything)
	require.NoError(t, err)
	got := map[string]store.State{}
	for _, i := range all {
		_, twice := got[i.ID]
		require.False(t, twice, "%s listed twice", i.ID)
		got[i.ID] = i.State
	}
	return got
}

// TestReaderReadsTodaysFormat: a directory a Client before the seam left
// is read as Open reads it, and the Reader writes nothing to it.
func TestReaderReadsTodaysFormat(t *testing.T) {
	dir := todaysFormat(t)
	before := dirState(t, dir)
	r := newReader(t, dir)
	assert.Equal(t, map[string]store.State{"ea": store.StateReady, "eb": store.StateReady,
		"ec": store.StateFinished, "old": store.StateFinished}, listing(t, r))
	ea, err := r.Inspect(ctx, "ea")
	require.NoError(t, err)
	assert.Equal(t, &store.Progress{Attempts: 1, Accepted: []string{"b@example.com"}, Rejected: map[string]string{"d@example.com": "550 no"}, Pending: []string{"c@example.com"}}, ea.Progress)
	assert.Equal(t, 1, ea.Unanswered)
	assert.Equal(t, 2, ea.Attempts(), "the unanswered end of data was an attempt")
	assert.Equal(t, 1, ea.Priority)
	assert.EqualValues(t, len("body a"), ea.BodySize)
	ec, err := r.Inspect(ctx, "ec")
	require.NoError(t, err)
	assert.Equal(t, "mxrelay: refused", ec.LastError())
	old, err := r.Inspect(ctx, "old")
	require.NoError(t, err)
	assert.Equal(t, store.Reply{Code: 250, Message: "2.0.0 ok"}, old.Result.Reply)
	n, err := r.Counts(ctx)
	require.NoError(t, err)
	assert.Equal(t, map[store.State]int{store.StateReady: 2, store.StateDeferred: 0, store.StateClaimed: 0, store.StateHeld: 0, store.StateFinished: 2}, n)
	body, err := r.Body(ctx, "eb")
	require.NoError(t, err)
	b, err := io.ReadAll(body)
	require.NoError(t, err)
	body.Close()
	assert.Equal(t, "body b", string(b))
	_, err = r.Body(ctx, "ec")
	assert.ErrorIs(t, err, store.ErrNotFound, "finished")
	assert.Equal(t, before, dirState(t, dir), "the Reader wrote nothing")
}

// dirState is the names, sizes and times of the files in dir.
func dirState(t *testing.T, dir string) []string {
	t.Helper()
	es, err := os.ReadDir(dir)
	require.NoError(t, err)
	var out []string
	for _, e := range es {
		fi, err := e.Info()
		require.NoError(t, err)
		out = append(out, fmt.Sprintf("%s %d %v", e.Name(), fi.Size(), fi.ModTime()))
	}
	return out
}

func TestReaderNeedsADirectory(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "nope")
	_, err := NewReader(missing)
	require.ErrorIs(t, err, os.ErrNotExist)
	assert.NoDirExists(t, missing, "not created")
	file := filepath.Join(t.TempDir(), "f")
	require.NoError(t, os.WriteFile(file, nil, 0o600))
	_, err = NewReader(file)
	require.Error(t, err)
	empty := t.TempDir()
	_, err = NewReader(empty)
	require.ErrorIs(t, err, ErrNotSpool, "no Store opened it")
	_, err = OpenExisting(empty, nil)
	require.ErrorIs(t, err, ErrNotSpool)
	assert.Equal(t, []string(nil), dirState(t, empty), "nothing created")

	s := open(t, empty)
	n, err := newReader(t, empty).Counts(ctx)
	require.NoError(t, err, "opened once: a spool")
	assert.Zero(t, n[store.StateReady])
	_, err = OpenExisting(empty, nil)
	require.ErrorIs(t, err, ErrLocked, "s holds it")
	require.NoError(t, s.Close())
	s, err = OpenExisting(empty, nil)
	require.NoError(t, err)
	s.Close()
}

// TestReaderSeesTwinsAndDamage: two files of one ID are listed as Open
// keeps them, and a damaged file is reported, not listed.
func TestReaderSeesTwinsAndDamage(t *testing.T) {
	s := open(t, t.TempDir())
	storetest.Accept(t, s, "e2", 0, "second")
	storetest.Accept(t, s, "e3", 0, "third")
	storetest.Accept(t, s, "damaged", 0, "x")
	files := msgFiles(t, s.dir)
	data, err := os.ReadFile(files[1])
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(files[1], bytes.Replace(data, []byte(`"id":"e3"`), []byte(`"id":"e2"`), 1), 0o600))
	data, err = os.ReadFile(files[2])
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(files[2], data[:len(data)-2], 0o600))

	r := newReader(t, s.dir)
	twin := "e2 (" + filepath.Base(files[1]) + ")"
	assert.Equal(t, map[string]store.State{"e2": store.StateReady, twin: store.StateReady}, listing(t, r))
	bad, err := r.Damaged(ctx)
	require.NoError(t, err)
	assert.Equal(t, []string{filepath.Base(files[2])}, bad)
	body, err := r.Body(ctx, twin)
	require.NoError(t, err)
	b, _ := io.ReadAll(body)
	body.Close()
	assert.Equal(t, "third", string(b))

	s = reopen(t, s)
	assert.Equal(t, []string{"e2", twin}, storetest.IDs(storetest.Claim(t, s, "w1", 10)), "the IDs Open gives")
}

// TestHoldIsAJournalLine: Hold and Release write "H" and "U" lines; a
// compaction keeps the hold, and an Open finds it.
func TestHoldIsAJournalLine(t *testing.T) {
	s := open(t, t.TempDir())
	storetest.Accept(t, s, "e1", 0, "x")
	storetest.Accept(t, s, "e2", 0, "x")
	name := filepath.Base(msgFiles(t, s.dir)[0])
	_, _, err := s.Hold(ctx, "e1", false)
	require.NoError(t, err)
	assert.Contains(t, journalLines(t, s.dir), "H "+name)

	s.jmu.Lock()
	_, err = s.compact(false)
	s.jmu.Unlock()
	require.NoError(t, err)
	assert.Equal(t, []string{"B 0", "H " + name}, journalLines(t, s.dir), "the compacted journal keeps the hold")
	s = reopen(t, s)
	assert.Equal(t, []string{"e2"}, storetest.IDs(storetest.Claim(t, s, "w1", 10)))
	require.Len(t, s.Recovered(), 1, "what a claim can take: not e1")
	assert.Equal(t, "e2", s.Recovered()[0].ID)
	_, _, err = s.Release(ctx, "e1")
	require.NoError(t, err)
	assert.Equal(t, []string{"B 0", "H " + name, "U " + name}, journalLines(t, s.dir))
	assert.Equal(t, []string{"e1"}, storetest.IDs(storetest.Claim(t, s, "w1", 10)))
}

func journalLines(t *testing.T, dir string) []string {
	t.Helper()
	j, err := os.ReadFile(filepath.Join(dir, journalName))
	require.NoError(t, err)
	return strings.Split(strings.TrimSuffix(string(j), "\n"), "\n")
}

// TestRetryTimesDoNotSurviveOpen: the Reader shows the retry time the
// Store that recorded it keeps; an Open makes every email ready, as it
// always did, and the directory then says so.
func TestRetryTimesDoNotSurviveOpen(t *testing.T) {
	s := open(t, t.TempDir())
	storetest.Accept(t, s, "e1", 0, "x")
	c := storetest.Claim(t, s, "w1", 1)[0]
	p := &store.Progress{Attempts: 1, Pending: []string{"b@example.com"}, Error: "451 later"}
	at := time.Now().Add(time.Hour)
	require.NoError(t, s.Requeue(ctx, c.Token, p, at))
	r := newReader(t, s.dir)
	i, err := r.Inspect(ctx, "e1")
	require.NoError(t, err)
	assert.Equal(t, store.StateDeferred, i.State)
	assert.True(t, i.NotBefore.Equal(at), "%v %v", i.NotBefore, at)
	assert.Equal(t, "451 later", i.LastError())

	s = reopen(t, s)
	i, err = r.Inspect(ctx, "e1")
	require.NoError(t, err)
	assert.Equal(t, store.StateReady, i.State, "Open made it ready")
	assert.Equal(t, p, i.Progress, "with its progress")
	assert.Equal(t, p, storetest.Claim(t, s, "w1", 1)[0].Progress)
}

// TestReaderWhileCompacting: a Reader reads the directory again and again
// while its Store finishes, requeues and holds emails, compacting the
// journal at every result: each read lists every email once, and each
// change that returned before a read began is in it.
func TestReaderWhileCompacting(t *testing.T) {
	defer func(n int64) { maxJournal = n }(maxJournal)
	maxJournal = 0
	s := open(t, t.TempDir())
	const n = 300
	for i := range n {
		storetest.Accept(t, s, fmt.Sprintf("e%03d", i), 0, "x")
	}
	cs := storetest.Claim(t, s, "w1", n)
	require.Len(t, cs, n)

	var mu sync.Mutex
	changed := map[string]store.State{} // each email's state once its change returned
	order := map[string]int{}           // its change's place in the writer's order
	for i, c := range cs {
		order[c.ID] = i
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i, c := range cs {
			var err error
			st := []store.State{store.StateFinished, store.StateDeferred, store.StateHeld}[i%3]
			switch st {
			case store.StateFinished:
				err = s.Finish(ctx, c.Token, &store.Result{ID: c.ID, Delivered: true, Attempts: 1})
			case store.StateDeferred:
				err = s.Requeue(ctx, c.Token, &store.Progress{Attempts: 1, Pending: []string{"b@example.com"}}, time.Now().Add(time.Hour))
			case store.StateHeld:
				_, _, err = s.Hold(ctx, c.ID, true)
			}
			if !assert.NoError(t, err) {
				return
			}
			mu.Lock()
			changed[c.ID] = st
			mu.Unlock()
		}
	}()
	r := newReader(t, s.dir)
	reads := 0
	for running := true; running; reads++ {
		select {
		case <-done:
			running = false
		default:
		}
		mu.Lock()
		want := maps.Clone(changed)
		mu.Unlock()
		got := listing(t, r)
		require.Len(t, got, n, "every email once, in one state or another")
		for id, st := range want {
			require.Equal(t, st, got[id], "%s: its change returned before the read began", id)
		}
		// One moment: the changes seen are the writer's first ones.
		seen := 0
		for id, st := range got {
			if st != store.StateReady {
				seen = max(seen, order[id]+1)
			}
		}
		for _, c := range cs[:seen] {
			require.NotEqual(t, store.StateReady, got[c.ID], "%s changed before one the read saw changed", c.ID)
		}
	}
	got := listing(t, r)
	require.Equal(t, changed, got)
	t.Logf("%d reads while the Store wrote", reads)
}
