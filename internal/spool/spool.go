// Package spool is the durable queue of one process in a directory
// (the Client's Options.SpoolDir), behind the store seam (internal/store):
// every email accepted is on disk, fsync'd, before Commit returns, and the
// next Open on the directory finds what the last one accepted and did not
// finish. Its format, version 1, is docs/spool.md's:
//
//	lock            flock'd by the one Store using the directory
//	<time>-<n>.msg  one accepted email (msg.go): written once under a .tmp
//	                name, fsync'd, named, the directory fsync'd; never
//	                changed; removed once its result is recorded
//	journal         the steps of the emails (journal.go): E before an end
//	                of data, D for progress, R for a result, H and U for
//	                a hold and its release
//	results.log     the results of earlier journals, moved there by each
//	                compaction (compact.go)
//
// # What it promises
//
// Nothing accepted is lost to a crash of the process (SIGKILL, a panic,
// the OOM killer): an email whose Commit returned is in the directory.
// Nothing refused is accepted: a Draft aborted, or whose Commit failed or
// came after Close, leaves no .msg file, except for a crash between the
// rename that accepts the file and Commit's return, which no file system
// can close. An end of data is recorded (an "E" line, by Ending) before
// it may be written, and a takeover of an email with such a record and
// nothing answering it (a "D" or an "R" line) is an unknown outcome
// (store.Claimed.Unanswered): at Open, every email is taken over. A
// result is recorded before the email's file is removed, and an Open
// that finds both removes the file. A result that cannot be recorded (a
// full disk) leaves the file, and the email, for the next Open. A .msg
// file that does not parse was damaged after it was named: Open sets it
// aside as <name>.msg.bad (SetAside) and neither sends nor deletes it.
//
// Journal lines are written with write(2) before the step they record,
// so they survive any crash of the process; with Options.SyncAll each is
// fsync'd too, so that they survive a power loss.
//
// # What the seam adds
//
// Envelope.IdempotencyKey is kept in the header ("key"); Open rebuilds
// the index of keys from the .msg files and the results within the
// retention time. Result and WaitResult answer by ID for
// Options.ResultRetention: Open indexes results.log (the records' places,
// not the records), and a result is read from disk when asked for. The
// meta given to Commit is kept in the header too ("meta"), at most
// MaxMeta bytes; files written before it was kept have none
// (store.Claimed.Meta nil).
//
// One process owns the directory: Open takes an exclusive flock on
// <dir>/lock and fails while another Store holds it, in this process or
// another. The kernel drops the lock when the process dies, so a restart
// after a crash is never blocked by it. Claims, leases and fencing are
// kept in memory (internal/store/ledger): they are the process's own, and
// a new Open starts with every email released, its tokens counted anew.
//
// # The operator's side
//
// Store is a store.Admin (admin.go): its changes are journal lines,
// written under the lock, so an operator's tool makes them by opening the
// directory (OpenExisting) while no Client runs. Reader (read.go) is a
// store.Inspector that reads the directory without the lock and without
// writing, while a Client runs; what one read returns is true of one
// moment.
package spool

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"encoding/json"

	"github.com/mxrelay/mxrelay/internal/store"
	"github.com/mxrelay/mxrelay/internal/store/ledger"
)

// The directory's names.
const (
	journalName = "journal"
	resultsName = "results.log"
	lockName    = "lock"
	msgGlob     = "*.msg"
	tmpSuffix   = ".tmp" // a .msg file being written, not yet accepted
	badSuffix   = ".bad" // a .msg file found damaged, set aside
)

// ErrLocked is matched by Open's error when another Store holds the
// directory's lock, in this process or another (a Client running on it).
var ErrLocked = errors.New("mxrelay: spool: its lock is held")

// ErrNotSpool is matched by the error of NewReader and OpenExisting for
// a directory no Store has opened: it has no lock file.
var ErrNotSpool = errors.New("mxrelay: spool: not a spool directory (no lock file: no Client has opened it)")

// Options configures a Store. The zero value is useful.
type Options struct {
	// SyncAll fsyncs the journal after each record (an end of data
	// about to be written, progress, a result), so that they survive a
	// power loss or a kernel crash too. Accepted emails are always
	// fsync'd.
	SyncAll bool
	// ResultRetention is how long a result is kept after it was
	// recorded, for Result and WaitResult, and its IdempotencyKey taken.
	// results.log keeps every record whatever it says. Zero: 7 days.
	ResultRetention time.Duration
	// Logger receives what the store cannot return: a compaction of the
	// journal that failed after the result it followed was recorded.
	// Nil: silent.
	Logger *slog.Logger
	// MaxJournal is the journal's size past which a result compacts it.
	// Zero: 16 MiB.
	MaxJournal int64
}

// Store is a store.Store in a directory. Its methods are safe for
// concurrent use within the process that opened it.
type Store struct {
	dir  string
	opts Options
	log  *slog.Logger
	lock *os.File
	l    *ledger.Ledger[*file, *resultLoc]

	commitMu sync.RWMutex // read-held by a Commit naming its file
	closed   bool         // under commitMu

	nameMu   sync.Mutex
	lastName int64 // the time in the last name made
	counter  int

	jmu            sync.Mutex // the journal, its size, and where results are
	journal        *os.File
	size           int64
	resultsLog     *os.File             // results.log, for reading
	journalResults map[int64]*resultLoc // the results in the journal, by offset

	recovered []store.Accepted
	setAside  []string
}

var _ store.Store = (*Store)(nil)

// Open takes dir (created 0700 if missing; a relative name is taken
// from the working directory of now) for the calling process, compacts
// its journal and finds the emails and results a previous Store left
// there. It fails when another Store holds the directory.
func Open(dir string, opts *Options) (*Store, error) {
	var o Options
	if opts != nil {
		o = *opts
	}
	if o.ResultRetention < 0 {
		return nil, errors.New("mxrelay: spool: ResultRetention cannot be negative")
	}
	if o.ResultRetention == 0 {
		o.ResultRetention = 7 * 24 * time.Hour
	}
	if o.MaxJournal <= 0 {
		o.MaxJournal = maxJournal
	}
	log := o.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	dir, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("mxrelay: spool: %w", err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("mxrelay: spool: %w", err)
	}
	lock, err := os.OpenFile(filepath.Join(dir, lockName), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, fmt.Errorf("mxrelay: spool: %w", err)
	}
	if err := lockFile(lock); err != nil {
		lock.Close()
		return nil, fmt.Errorf("mxrelay: spool %s is in use by another Client: %w", dir, err)
	}
	s := &Store{
		dir: dir, opts: o, log: log, lock: lock,
		l:              ledger.New[*file, *resultLoc](ledger.Options{Retention: o.ResultRetention}),
		journalResults: map[int64]*resultLoc{},
	}
	if err := s.start(); err != nil {
		s.Close()
		return nil, err
	}
	return s, nil
}

// OpenExisting is Open for a directory a Store opened before: it creates
// nothing where there is no spool, and fails with ErrNotSpool (or an
// error matching os.ErrNotExist).
func OpenExisting(dir string, opts *Options) (*Store, error) {
	if err := isSpool(dir); err != nil {
		return nil, err
	}
	return Open(dir, opts)
}

// isSpool checks that dir is a directory with a lock file.
func isSpool(dir string) error {
	fi, err := os.Stat(dir)
	if err != nil {
		return fmt.Errorf("mxrelay: spool: %w", err)
	}
	if !fi.IsDir() {
		return fmt.Errorf("mxrelay: spool: %s is not a directory", dir)
	}
	if _, err := os.Lstat(filepath.Join(dir, lockName)); errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("%w: %s", ErrNotSpool, dir)
	} else if err != nil {
		return fmt.Errorf("mxrelay: spool: %w", err)
	}
	return nil
}

// start reads what a previous Store left, in four steps.
func (s *Store) start() error {
	s.jmu.Lock()
	defer s.jmu.Unlock()
	states, err := s.compact(true)
	if err != nil {
		return err
	}
	s.removeTemps()
	if err := s.indexResults(); err != nil {
		return err
	}
	return s.restore(states)
}

// removeTemps removes the files a Store was writing when it stopped:
// never accepted.
func (s *Store) removeTemps() {
	tmps, _ := filepath.Glob(filepath.Join(s.dir, msgGlob+tmpSuffix))
	for _, path := range tmps {
		if isName(strings.TrimSuffix(filepath.Base(path), tmpSuffix)) {
			os.Remove(path)
		}
	}
}

// restore gives the ledger the emails of the .msg files, in the order of
// their names (of acceptance), resumed where the journal's states leave
// them. A damaged file is set aside.
func (s *Store) restore(states map[string]fileState) error {
	names, err := filepath.Glob(filepath.Join(s.dir, msgGlob))
	if err != nil {
		return fmt.Errorf("mxrelay: spool: %w", err)
	}
	slices.Sort(names)
	for _, path := range names {
		name := filepath.Base(path)
		if !isName(name) {
			continue // not one of ours: left alone
		}
		s.lastName = max(s.lastName, nameTime(name))
		m, err := readMsg(path)
		if err != nil {
			// A file only has its name once it is whole: this one was
			// damaged since. Set aside for a human, neither sent nor lost.
			if os.Rename(path, path+badSuffix) == nil {
				s.setAside = append(s.setAside, name+badSuffix)
			}
			continue
		}
		e := entryOf(name, m, states[name])
		if !s.l.Restore(e) {
			e.Env.ID = twinID(e.Env.ID, name)
			s.l.Restore(e)
		}
		if !e.OnHold {
			s.recovered = append(s.recovered, store.Accepted{ID: e.Env.ID, Queued: e.Queued})
		}
	}
	return nil
}

// entryOf is the email of file name, whose header is m's, as the
// journal's st leaves it: on hold or not, its progress and retry time,
// and its unanswered "E" lines.
func entryOf(name string, m *msg, st fileState) *ledger.Entry[*file] {
	e := &ledger.Entry[*file]{
		Env: m.hdr.Envelope, Queued: m.hdr.Queued, Meta: m.hdr.Meta, BodySize: m.size,
		Ends: st.ends, OnHold: st.onHold,
		Data: &file{name: name, off: m.off, size: m.size},
	}
	if st.progress != nil {
		var p progressLine
		if json.Unmarshal(st.progress, &p) == nil {
			e.Progress, e.NotBefore = &p.Progress, p.NotBefore
		} else {
			e.Ends++ // not readable: at least as uncertain as an E
		}
	}
	return e
}

// twinID is the ID of the email of file name when an earlier file has
// its ID (a previous Client did not refuse duplicate IDs): the later one
// is kept under a name of its own rather than lost.
func twinID(id, name string) string { return fmt.Sprintf("%s (%s)", id, name) }

// Recovered returns the emails Open found in the directory, accepted by
// a previous Store and not finished, in the order of acceptance: those a
// claim can take, not those on hold.
func (s *Store) Recovered() []store.Accepted { return slices.Clone(s.recovered) }

// SetAside returns the names of the damaged files Open set aside
// (<name>.msg.bad): for a human to look at; the store ignores them.
func (s *Store) SetAside() []string { return slices.Clone(s.setAside) }

// Dir is the directory, as an absolute path.
func (s *Store) Dir() string { return s.dir }

// Close waits for a Commit in progress and refuses those that come
// after, then closes the journal and lets the directory go. Emails stay
// as they are, held ones with their records: the next Open takes them
// over. Safe to call more than once.
func (s *Store) Close() error {
	s.commitMu.Lock()
	first := !s.closed
	s.closed = true
	s.commitMu.Unlock()
	if !first {
		return nil
	}
	s.l.Close()
	s.jmu.Lock()
	for _, f := range []*os.File{s.journal, s.resultsLog} {
		if f != nil {
			f.Close()
		}
	}
	s.journal, s.resultsLog = nil, nil
	s.jmu.Unlock()
	unlockFile(s.lock)
	return s.lock.Close()
}
