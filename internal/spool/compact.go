package spool

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
)

// maxJournal is Options.MaxJournal's default; a variable for tests.
var maxJournal int64 = 16 << 20

// fileState is what the journal says of one file still in the spool.
type fileState struct {
	progress []byte // the last "D" line's JSON, if any
	ends     int    // "E" lines after it
	onHold   bool   // an "H" line with no "U" line after it
}

// compact moves the journal's results to results.log, removes the .msg
// files that have one, and replaces the journal with one that holds, for
// each file still there, its last "D" line, the "E" lines after it and
// its "H" line if it is on hold, which it returns. It runs at Open
// (atOpen), where the "D" lines lose their retry times (every email is
// ready at Open), and when a result takes the journal past
// Options.MaxJournal. s.jmu is held.
//
// It can be cut anywhere and run again: the journal's first line says how
// long results.log was when the journal began, so a second run first cuts
// results.log back to that length, and only the rename of the new journal
// makes the move count. The old journal stays in use until then, so that
// a compaction that fails at run time costs nothing.
func (s *Store) compact(atOpen bool) (map[string]fileState, error) {
	fail := func(err error) (map[string]fileState, error) { return nil, fmt.Errorf("mxrelay: spool: %w", err) }
	present, err := s.present()
	if err != nil {
		return fail(err)
	}
	old, err := openJournal(filepath.Join(s.dir, journalName))
	if err != nil {
		return fail(err)
	}
	defer old.close()
	results, err := s.openResults(old.base)
	if err != nil {
		return fail(err)
	}
	states := s.replay(old, present, results)
	if atOpen {
		for name, st := range states {
			st.progress = withoutRetryTime(st.progress)
			states[name] = st
		}
	}
	if err := results.finish(); err != nil {
		return fail(err)
	}
	if err := old.lines.errOf(); err != nil {
		return fail(err)
	}
	if err := s.replaceJournal(results.end(), states); err != nil {
		return fail(err)
	}
	return states, nil
}

// present is the set of .msg files in the directory: only the journal's
// lines about them matter, the journal is read a line at a time, and
// nothing else is kept, however long it is.
func (s *Store) present() (map[string]bool, error) {
	names, err := filepath.Glob(filepath.Join(s.dir, msgGlob))
	if err != nil {
		return nil, err
	}
	present := map[string]bool{}
	for _, path := range names {
		present[filepath.Base(path)] = true
	}
	return present, nil
}

// oldJournal is the journal being compacted, opened for reading, and
// the length of results.log its first line gives (-1 when it gives none).
type oldJournal struct {
	f     *os.File
	lines *lineReader
	first []byte // its first line, when it is not a "B" line: a record
	base  int64
}

// openJournal opens the journal at path; a missing one is empty.
func openJournal(path string) (*oldJournal, error) {
	j := &oldJournal{base: -1}
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return j, nil
	}
	if err != nil {
		return nil, err
	}
	j.f, j.lines = f, newLineReader(f)
	first, _, ok := j.lines.next()
	if verb, arg, _ := bytes.Cut(first, []byte(" ")); ok && string(verb) == "B" {
		j.base, _ = strconv.ParseInt(string(arg), 10, 64)
	} else if ok {
		j.first = slices.Clone(first)
	}
	return j, nil
}

// next is the journal's next record and the offset of its argument.
func (j *oldJournal) next() (verb, arg []byte, off int64, ok bool) {
	var line []byte
	if j.first != nil {
		line, j.first, ok = j.first, nil, true
	} else {
		line, off, ok = j.lines.next()
	}
	verb, arg, _ = bytes.Cut(line, []byte(" "))
	return verb, arg, off + int64(len(verb)) + 1, ok
}

func (j *oldJournal) close() {
	if j.f != nil {
		j.f.Close()
	}
}

// errOf is the read error that ended the lines, if any. It is nil-safe.
func (j *lineReader) errOf() error {
	if j == nil {
		return nil
	}
	return j.err
}

// resultsAppender appends records to results.log, from the length the
// journal's "B" line gives: a compaction interrupted and run again writes
// each result once.
type resultsAppender struct {
	f    *os.File
	w    *bufio.Writer
	base int64
	n    int64 // bytes appended
}

// openResults opens results.log, cut back to base: without a "B" line
// (base < 0), or after someone cut results.log shorter, there is nothing
// of ours to take back.
func (s *Store) openResults(base int64) (*resultsAppender, error) {
	f, err := os.OpenFile(filepath.Join(s.dir, resultsName), os.O_CREATE|os.O_WRONLY, 0o600)
	if err != nil {
		return nil, err
	}
	st, err := f.Stat()
	if err == nil && (base < 0 || base > st.Size()) {
		base = st.Size()
	}
	if err == nil {
		err = f.Truncate(base)
	}
	if err == nil {
		_, err = f.Seek(base, io.SeekStart)
	}
	if err != nil {
		f.Close()
		return nil, err
	}
	return &resultsAppender{f: f, w: bufio.NewWriterSize(f, 64<<10), base: base}, nil
}

// add appends a record and returns its offset in results.log.
func (r *resultsAppender) add(rec []byte) int64 {
	off := r.end()
	r.w.Write(rec)
	r.w.WriteByte('\n')
	r.n += int64(len(rec)) + 1
	return off
}

// end is results.log's length once what was added is written.
func (r *resultsAppender) end() int64 { return r.base + r.n }

// finish writes what was added, fsyncs results.log and closes it.
func (r *resultsAppender) finish() error {
	err := r.w.Flush()
	if err == nil {
		err = r.f.Sync()
	}
	if cerr := r.f.Close(); err == nil {
		err = cerr
	}
	return err
}

// replay reads the old journal's records: the states of the files still
// present, each result appended to results (and its place moved there,
// if the ledger has it), and the file of each result removed.
func (s *Store) replay(old *oldJournal, present map[string]bool, results *resultsAppender) map[string]fileState {
	return scan(old, present, func(rec *Record, arg []byte, off int64, wasPresent bool) {
		at := results.add(arg)
		if loc := s.journalResults[off]; loc != nil {
			loc.inJournal, loc.off = false, at
		}
		if wasPresent {
			os.Remove(filepath.Join(s.dir, rec.File))
		}
	})
}

// scan reads a journal's records: the state of each file in present,
// and each result, passed to result with the offset of its JSON and
// whether its file is in present; the file then leaves present, and later
// lines about it are ignored. Compaction and Reader read a journal
// through it.
func scan(j *oldJournal, present map[string]bool, result func(rec *Record, arg []byte, off int64, wasPresent bool)) map[string]fileState {
	states := map[string]fileState{}
	for verb, arg, off, ok := j.next(); ok; verb, arg, off, ok = j.next() {
		switch string(verb) {
		case "E", "H", "U":
			if !present[string(arg)] { // no string made for a line about no file
				continue
			}
			name := string(arg)
			st := states[name]
			switch verb[0] {
			case 'E':
				st.ends++
			case 'H':
				st.onHold = true
			case 'U':
				st.onHold = false
			}
			states[name] = st
		case "D":
			var p progressLine
			if json.Unmarshal(arg, &p) == nil && present[p.File] {
				st := states[p.File]
				st.progress, st.ends = slices.Clone(arg), 0
				states[p.File] = st
			}
		case "R":
			// A result naming anything but one of our files is not ours:
			// it must not make us remove a file elsewhere.
			var rec Record
			if json.Unmarshal(arg, &rec) != nil || !isName(rec.File) {
				continue
			}
			wasPresent := present[rec.File]
			delete(states, rec.File)
			delete(present, rec.File)
			result(&rec, arg, off, wasPresent)
		}
	}
	return states
}

// replaceJournal writes the new journal, "B base" and the states, under
// a temporary name, fsyncs it, and gives it the journal's name: from then
// on it is the one appended to.
func (s *Store) replaceJournal(base int64, states map[string]fileState) error {
	nj := fmt.Appendf(nil, "B %d\n", base)
	for file, st := range states {
		if st.progress != nil {
			nj = fmt.Appendf(nj, "D %s\n", st.progress)
		}
		for range st.ends {
			nj = fmt.Appendf(nj, "E %s\n", file)
		}
		if st.onHold {
			nj = fmt.Appendf(nj, "H %s\n", file)
		}
	}
	path := filepath.Join(s.dir, journalName)
	tmp := path + ".tmp"
	if err := writeSynced(tmp, nj); err != nil {
		return err
	}
	j, err := os.OpenFile(tmp, os.O_RDWR|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		j.Close()
		return err
	}
	if s.journal != nil {
		s.journal.Close()
	}
	s.journal, s.size = j, int64(len(nj))
	clear(s.journalResults) // all moved to results.log
	return syncDir(s.dir)
}

// writeSynced writes data to a new file at path and fsyncs it.
func writeSynced(path string, data []byte) error {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	_, err = f.Write(data)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}
