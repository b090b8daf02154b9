package spool

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/mxrelay/mxrelay/internal/store"
	"github.com/mxrelay/mxrelay/internal/store/ledger"
)

// Record is an "R" line of the journal and a line of results.log: the
// result of an email. Its fields and their JSON names are those of the
// root package's SpoolResult (file, id, delivered, maybeDelivered,
// attempts, accepted, rejected, reply, error, time), which tools read,
// and more: the email's key, the reply's enhanced code, the result's
// kind and the time of acceptance.
type Record struct {
	File           string            `json:"file"`
	ID             string            `json:"id"`
	Key            string            `json:"key,omitempty"`
	Delivered      bool              `json:"delivered"`
	MaybeDelivered bool              `json:"maybeDelivered,omitempty"`
	Attempts       int               `json:"attempts"`
	Accepted       []string          `json:"accepted,omitempty"`
	Rejected       map[string]string `json:"rejected,omitempty"`
	// Reply is the reply to the delivering end of data: its code, a
	// space and its text; empty when there was none.
	Reply    string    `json:"reply,omitempty"`
	Enhanced [3]int    `json:"enhanced,omitzero"`
	Error    string    `json:"error,omitempty"`
	Kind     string    `json:"kind,omitempty"`
	Queued   time.Time `json:"queued,omitzero"`
	Time     time.Time `json:"time"` // when it was recorded
}

// recordOf is the record of e's result r.
func recordOf(e *ledger.Entry[*file], r *store.Result) *Record {
	rec := &Record{
		File: e.Data.name, ID: e.Env.ID, Key: e.Env.IdempotencyKey,
		Delivered: r.Delivered, MaybeDelivered: r.MaybeDelivered, Attempts: r.Attempts,
		Accepted: r.Accepted, Rejected: r.Rejected, Enhanced: r.Reply.Enhanced,
		Error: r.Error, Kind: r.Kind, Queued: r.Queued, Time: r.Finished.UTC(),
	}
	if r.Reply.Code != 0 {
		rec.Reply = strconv.Itoa(r.Reply.Code) + " " + r.Reply.Message
	}
	return rec
}

// result is the store.Result the record says.
func (rec *Record) result() *store.Result {
	r := &store.Result{
		ID: rec.ID, Delivered: rec.Delivered, MaybeDelivered: rec.MaybeDelivered, Attempts: rec.Attempts,
		Accepted: rec.Accepted, Rejected: rec.Rejected, Error: rec.Error, Kind: rec.Kind,
		Queued: rec.Queued, Finished: rec.Time,
	}
	if rec.Reply != "" {
		code, text, _ := strings.Cut(rec.Reply, " ")
		r.Reply.Code, _ = strconv.Atoi(code)
		r.Reply.Message = text
		r.Reply.Enhanced = rec.Enhanced
	}
	return r
}

// resultLoc is where a result's record is: its JSON, n bytes at off of
// the journal (inJournal) or of results.log. Guarded by Store.jmu: a
// compaction moves the journal's records to results.log.
type resultLoc struct {
	inJournal bool
	off       int64
	n         int
}

// persistResult writes e's result r to the journal, then removes e's
// file: a crash in between leaves a file the next Open knows to be
// finished, never one it would send again. When the record cannot be
// written the file stays, and the email with it (see ledger.Finish).
func (s *Store) persistResult(e *ledger.Entry[*file], r *store.Result) (*resultLoc, error) {
	line, err := json.Marshal(recordOf(e, r))
	if err != nil {
		return nil, err
	}
	s.jmu.Lock()
	defer s.jmu.Unlock()
	off, err := s.appendLine("R", line)
	if err != nil {
		return nil, fmt.Errorf("%w: the result is not recorded and the email stays in the spool", err)
	}
	loc := &resultLoc{inJournal: true, off: off, n: len(line)}
	s.journalResults[off] = loc
	e.Data.gone.Store(true)
	os.Remove(filepath.Join(s.dir, e.Data.name))
	return loc, nil
}

// load reads the record at loc.
func (s *Store) load(loc *resultLoc) (*store.Result, error) {
	s.jmu.Lock()
	defer s.jmu.Unlock()
	f := s.resultsLog
	if loc.inJournal {
		f = s.journal
	}
	if f == nil {
		return nil, store.ErrClosed
	}
	line := make([]byte, loc.n)
	if _, err := f.ReadAt(line, loc.off); err != nil {
		return nil, fmt.Errorf("mxrelay: spool: reading a result: %w", err)
	}
	var rec Record
	if err := json.Unmarshal(line, &rec); err != nil {
		return nil, fmt.Errorf("mxrelay: spool: reading a result: %w", err)
	}
	return rec.result(), nil
}

// indexResults reads results.log, a line at a time, and gives the ledger
// the results within the retention time: their IDs, keys and places. s.jmu
// is held.
func (s *Store) indexResults() error {
	f, err := os.Open(filepath.Join(s.dir, resultsName))
	if err != nil {
		return fmt.Errorf("mxrelay: spool: %w", err)
	}
	s.resultsLog = f
	lines := newLineReader(f)
	for line, off, ok := lines.next(); ok; line, off, ok = lines.next() {
		var rec struct {
			ID     string    `json:"id"`
			Key    string    `json:"key"`
			Queued time.Time `json:"queued"`
			Time   time.Time `json:"time"`
		}
		if json.Unmarshal(line, &rec) != nil || rec.ID == "" {
			continue // not a record: a human's edit
		}
		s.l.RestoreResult(rec.ID, rec.Key, rec.Queued, rec.Time, &resultLoc{off: off, n: len(line)})
	}
	if lines.err != nil {
		return fmt.Errorf("mxrelay: spool: %s: %w", resultsName, lines.err)
	}
	return nil
}
