package spool

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/mxrelay/mxrelay/internal/store"
	"github.com/mxrelay/mxrelay/internal/store/ledger"
)

// Reader reads a spool directory for an operator (store.Inspector)
// without taking its lock and without writing anything, so that it works
// while a Client runs on the directory. Each call reads the directory
// afresh, in an order that makes what it returns true of one moment
// whatever the Client does meanwhile:
//
//  1. the names of the .msg files, then their headers (written once,
//     named once whole: a header is never seen half-written; a file
//     removed meanwhile was finished);
//  2. the journal, a line at a time up to its last complete line: an
//     append-only file, or, if a compaction replaced it meanwhile,
//     either the old one (complete up to the replacement) or the new
//     one (which holds the state of every file still there);
//  3. results.log, up to the length the journal's first line gives:
//     what a compaction moved there before the journal read in 2 began.
//
// So a read says what the directory held at one moment, the end of the
// journal read in 2, of the emails whose files were there at 1 (one
// accepted meanwhile may be missing).
//
// Claims are not written to the directory: they live in the process that
// holds it. A Reader never reports an email claimed; while a Client runs,
// it holds every email that is ready, and one with an unanswered end of
// data (Info.Unanswered) may be waiting for its reply. A retry time
// (deferred) is that of the Client that recorded it: a Client that opens
// the spool anew makes every email ready. Results are those on disk
// (journal and results.log), however old.
type Reader struct {
	dir string
}

var _ store.Inspector = (*Reader)(nil)

// NewReader returns a Reader of dir, a directory a Store opened before
// (ErrNotSpool otherwise); a relative name is taken from the working
// directory of now.
func NewReader(dir string) (*Reader, error) {
	dir, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("mxrelay: spool: %w", err)
	}
	if err := isSpool(dir); err != nil {
		return nil, err
	}
	return &Reader{dir: dir}, nil
}

// Dir is the directory, as an absolute path.
func (r *Reader) Dir() string { return r.dir }

// snapshot is what one read of the directory found.
type snapshot struct {
	emails []*store.Info // not finished, in order of acceptance
	files  []string      // the file of each of emails
	// results are the records kept (those want chose), one per file;
	// finished counts the results on disk, each file once.
	results  map[string]*Record
	finished int
	// Damaged are the .msg files that do not parse: a Client sets them
	// aside when it opens the spool.
	damaged []string
}

// read reads the directory in the order the Reader's doc gives; want
// chooses the results it keeps (nil: none).
func (r *Reader) read(ctx context.Context, want func(*Record) bool) (*snapshot, error) {
	fail := func(err error) (*snapshot, error) { return nil, fmt.Errorf("mxrelay: spool: %w", err) }
	names, err := filepath.Glob(filepath.Join(r.dir, msgGlob))
	if err != nil {
		return fail(err)
	}
	slices.Sort(names)
	snap := &snapshot{results: map[string]*Record{}}
	present := map[string]bool{}
	msgs := map[string]*msg{}
	for _, path := range names {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		name := filepath.Base(path)
		if !isName(name) {
			continue
		}
		m, err := readMsg(path)
		switch {
		case errors.Is(err, os.ErrNotExist):
			present[name] = true // finished since the glob: its result says so
		case err != nil:
			snap.damaged = append(snap.damaged, name)
		default:
			present[name], msgs[name] = true, m
		}
	}

	// finishedFile is set for each file whose result is read.
	finishedFile := map[string]bool{}
	keep := func(rec *Record) {
		if !finishedFile[rec.File] {
			finishedFile[rec.File] = true
			snap.finished++
		}
		if want != nil && want(rec) {
			snap.results[rec.File] = rec
		}
	}
	j, err := openJournal(filepath.Join(r.dir, journalName))
	if err != nil {
		return fail(err)
	}
	states := scan(j, present, func(rec *Record, _ []byte, _ int64, _ bool) { keep(rec) })
	j.close()
	if err := j.lines.errOf(); err != nil {
		return fail(err)
	}
	if err := eachResult(r.dir, j.base, func(rec *Record) { keep(rec) }); err != nil {
		return fail(err)
	}

	now := time.Now()
	ids := map[string]bool{}
	for _, path := range names {
		name := filepath.Base(path)
		m := msgs[name]
		if m == nil || finishedFile[name] {
			continue
		}
		e := entryOf(name, m, states[name])
		if ids[e.Env.ID] {
			e.Env.ID = twinID(e.Env.ID, name)
		}
		ids[e.Env.ID] = true
		snap.emails = append(snap.emails, ledger.Describe(e, now))
		snap.files = append(snap.files, name)
	}
	return snap, nil
}

// eachResult calls fn with each record of results.log's first n octets
// (all of them when n < 0), a line at a time; a missing results.log has
// none.
func eachResult(dir string, n int64, fn func(*Record)) error {
	f, err := os.Open(filepath.Join(dir, resultsName))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	defer f.Close()
	var rd io.Reader = f
	if n >= 0 {
		rd = io.LimitReader(f, n)
	}
	lines := newLineReader(rd)
	for line, _, ok := lines.next(); ok; line, _, ok = lines.next() {
		var rec Record
		if json.Unmarshal(line, &rec) != nil || rec.ID == "" || !isName(rec.File) {
			continue // not a record: a human's edit
		}
		fn(&rec)
	}
	if lines.err != nil {
		return fmt.Errorf("%s: %w", resultsName, lines.err)
	}
	return nil
}

// finishedInfo is the Info of the email rec is the result of.
func finishedInfo(rec *Record) *store.Info {
	return &store.Info{
		Envelope: store.Envelope{ID: rec.ID, IdempotencyKey: rec.Key},
		State:    store.StateFinished, Queued: rec.Queued, Result: rec.result(),
	}
}

// List reads the directory and returns the emails in the states f lists.
// See store.Inspector.List.
func (r *Reader) List(ctx context.Context, f store.Filter) ([]*store.Info, error) {
	var want func(*Record) bool
	if f.Has(store.StateFinished) {
		want = func(*Record) bool { return true }
	}
	snap, err := r.read(ctx, want)
	if err != nil {
		return nil, err
	}
	var out []*store.Info
	for _, i := range snap.emails {
		if f.Has(i.State) {
			out = append(out, i)
		}
	}
	slices.SortStableFunc(out, func(a, b *store.Info) int { return cmp.Compare(b.Priority, a.Priority) })
	var done []*store.Info
	for _, rec := range snap.results {
		done = append(done, finishedInfo(rec))
	}
	slices.SortFunc(done, func(a, b *store.Info) int {
		return cmp.Or(b.Result.Finished.Compare(a.Result.Finished), strings.Compare(a.ID, b.ID))
	})
	return append(out, done...), nil
}

// Inspect reads the directory and returns email id's Info: its last
// result on disk once it has no file left. See store.Inspector.Inspect.
func (r *Reader) Inspect(ctx context.Context, id string) (*store.Info, error) {
	snap, err := r.read(ctx, func(rec *Record) bool { return rec.ID == id })
	if err != nil {
		return nil, err
	}
	for _, i := range snap.emails {
		if i.ID == id {
			return i, nil
		}
	}
	var last *Record
	for _, rec := range snap.results {
		if last == nil || rec.Time.After(last.Time) {
			last = rec
		}
	}
	if last == nil {
		return nil, fmt.Errorf("%w: %s", store.ErrNotFound, id)
	}
	return finishedInfo(last), nil
}

// Counts reads the directory and counts the emails in each state. See
// store.Inspector.Counts.
func (r *Reader) Counts(ctx context.Context) (map[store.State]int, error) {
	snap, err := r.read(ctx, nil)
	if err != nil {
		return nil, err
	}
	n := map[store.State]int{}
	for _, st := range store.States {
		n[st] = 0
	}
	for _, i := range snap.emails {
		n[i.State]++
	}
	n[store.StateFinished] = snap.finished
	return n, nil
}

// Damaged reads the directory and returns the names of the .msg files
// that do not parse: damaged since they were written, set aside by the
// next Client that opens the spool.
func (r *Reader) Damaged(ctx context.Context) ([]string, error) {
	snap, err := r.read(ctx, nil)
	if err != nil {
		return nil, err
	}
	return snap.damaged, nil
}

// Body reads email id's body from its file. See store.Inspector.Body.
func (r *Reader) Body(ctx context.Context, id string) (io.ReadCloser, error) {
	snap, err := r.read(ctx, nil)
	if err != nil {
		return nil, err
	}
	i := slices.IndexFunc(snap.emails, func(i *store.Info) bool { return i.ID == id })
	if i < 0 {
		return nil, fmt.Errorf("%w: %s", store.ErrNotFound, id)
	}
	f, err := os.Open(filepath.Join(r.dir, snap.files[i]))
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("%w: the file of %s is gone", store.ErrNotFound, id)
	}
	if err != nil {
		return nil, fmt.Errorf("mxrelay: spool: %w", err)
	}
	m, err := parseMsg(f)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("mxrelay: spool: %s: %w", snap.files[i], err)
	}
	return struct {
		io.Reader
		io.Closer
	}{io.NewSectionReader(f, m.off, m.size), f}, nil
}
