package mxrelay

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
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// The spool (Options.SpoolDir) keeps every accepted email on disk until its
// result is out. Its format, version 1, is documented in docs/spool.md:
//
//	lock                  held (flock) by the one Client using the directory
//	<time>-<n>.msg        one accepted email: magic line, JSON envelope line,
//	                      the body as given, a fixed-width trailer; written
//	                      once, fsync'd with its directory before Enqueue
//	                      returns, never changed, removed with its result
//	journal               "B <n>": results.log's length when it began;
//	                      "E <file>" before an end of data is written,
//	                      "D <json>" when an email goes back to the queue
//	                      after an end of data (where it stands),
//	                      "R <json>" when a result is out (before the .msg
//	                      file is removed); rewritten at start
//	results.log           the "R" lines of earlier journals, appended at each
//	                      compaction; the client never reads it
const (
	spoolMagic   = "MXRELAY-SPOOL 1\n"
	trailerLen   = int64(len("\nEND ") + 20 + 1)
	journalName  = "journal"
	resultsName  = "results.log"
	lockName     = "lock"
	spoolMsgGlob = "*.msg"
	tmpSuffix    = ".tmp" // a .msg file being written, not yet accepted
	badSuffix    = ".bad" // a .msg file found damaged, set aside
	maxEnvelope  = 64 << 20
)

// maxJournal is the journal size past which a result compacts it; a
// variable for tests.
var maxJournal int64 = 16 << 20

// ErrSpooled is wrapped by the result of an email that stays in
// Options.SpoolDir for the next Client on the same directory, which sends
// it: one that Close handed back (with ErrClosed), or one whose end of
// data was not sent because the spool's journal could not be written (a
// full disk). An email that some recipients already have is a delivery:
// ErrSpooled is then the error of the others in Result.Rejected, which
// the next Client sends it to. Do not submit it again yourself.
var ErrSpooled = errors.New("mxrelay: kept in the spool for the next Client")

// spoolHeader is the envelope line of a .msg file.
type spoolHeader struct {
	ID        string                  `json:"id"`
	From      string                  `json:"from"`
	To        []string                `json:"to"`
	Mail      *MailOptions            `json:"mail,omitempty"`
	Rcpt      map[string]*RcptOptions `json:"rcpt,omitempty"`
	Priority  Priority                `json:"priority"`
	Retries   int                     `json:"retries"`
	Immediate bool                    `json:"immediate,omitempty"`
	Deadline  time.Time               `json:"deadline,omitzero"`
	Queued    time.Time               `json:"queued"`
}

// SpoolResult is one "R" line of the journal and of results.log: the
// result of a spooled email, as Result says it.
type SpoolResult struct {
	File           string            `json:"file"`
	EmailID        string            `json:"id"`
	Delivered      bool              `json:"delivered"`
	MaybeDelivered bool              `json:"maybeDelivered,omitempty"`
	Attempts       int               `json:"attempts"`
	Accepted       []string          `json:"accepted,omitempty"`
	Rejected       map[string]string `json:"rejected,omitempty"`
	Reply          string            `json:"reply,omitempty"`
	Error          string            `json:"error,omitempty"`
	Time           time.Time         `json:"time"`
}

// spool is an open SpoolDir. Journal writes and .msg removals are
// serialised by mu, so that a compaction sees every result with its file
// gone.
type spool struct {
	dir     string
	syncAll bool
	lock    *os.File
	n       atomic.Uint64

	mu      sync.Mutex
	journal *os.File
	size    int64

	bad []string // damaged files set aside at start
}

// spoolProgress is a "D" line of the journal: where an email stood when
// it went back to the queue for a retry after an end of data whose reply
// came (or, with RetryUnknown, did not: Unknown). A start resumes from
// the last one, counting the "E" lines after it as unknown outcomes.
type spoolProgress struct {
	File     string            `json:"file"`
	Attempts int               `json:"attempts"`
	Unknown  bool              `json:"unknown,omitempty"`
	Accepted []string          `json:"accepted,omitempty"`
	Rejected map[string]string `json:"rejected,omitempty"`
	Pending  []string          `json:"pending"`
}

// journalState is what the journal says of one file still in the spool.
type journalState struct {
	progress []byte // the last "D" line's JSON, if any
	ends     int    // "E" lines after it
}

// spooled is an email found in the spool at start.
type spooled struct {
	file     string
	hdr      spoolHeader
	f        *os.File
	off      int64 // where the body starts
	size     int64
	progress *spoolProgress // the last "D" line, if any
	ends     int            // end-of-data markers after it: attempts that may have reached the server
}

// openSpool takes the directory's lock, reads what a previous Client left,
// compacts the journal and returns the emails to send again, oldest first.
func openSpool(dir string, syncAll bool) (*spool, []*spooled, error) {
	// Relative to the working directory of now, not of each later call.
	dir, err := filepath.Abs(dir)
	if err != nil {
		return nil, nil, fmt.Errorf("mxrelay: spool: %w", err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, nil, fmt.Errorf("mxrelay: spool: %w", err)
	}
	lock, err := os.OpenFile(filepath.Join(dir, lockName), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, nil, fmt.Errorf("mxrelay: spool: %w", err)
	}
	if err := lockFile(lock); err != nil {
		lock.Close()
		return nil, nil, fmt.Errorf("mxrelay: spool %s is in use by another Client: %w", dir, err)
	}
	s := &spool{dir: dir, syncAll: syncAll, lock: lock}
	left, err := s.start()
	if err != nil {
		s.close()
		return nil, nil, err
	}
	return s, left, nil
}

// start compacts the journal and opens the emails it leaves.
func (s *spool) start() ([]*spooled, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	states, err := s.compact()
	if err != nil {
		return nil, err
	}
	names, err := filepath.Glob(filepath.Join(s.dir, spoolMsgGlob))
	if err != nil {
		return nil, fmt.Errorf("mxrelay: spool: %w", err)
	}
	slices.Sort(names)
	// Files a Client was writing when it stopped: never accepted.
	tmps, _ := filepath.Glob(filepath.Join(s.dir, spoolMsgGlob+tmpSuffix))
	for _, path := range tmps {
		if isSpoolName(strings.TrimSuffix(filepath.Base(path), tmpSuffix)) {
			os.Remove(path)
		}
	}
	var left []*spooled
	for _, path := range names {
		if !isSpoolName(filepath.Base(path)) {
			continue // not one of ours: left alone
		}
		var sp *spooled
		fi, err := os.Lstat(path)
		if err == nil && !fi.Mode().IsRegular() {
			// A FIFO would block the open, a link leads elsewhere.
			err = errors.New("not a regular file")
		}
		if err == nil {
			sp, err = readSpooled(path)
		}
		if err != nil {
			// A file only has its name once it is whole: this one was
			// damaged since. Set aside for a human, neither sent nor lost.
			if os.Rename(path, path+badSuffix) == nil {
				s.bad = append(s.bad, filepath.Base(path)+badSuffix)
			}
			continue
		}
		st := states[sp.file]
		sp.ends = st.ends
		if st.progress != nil {
			var p spoolProgress
			if json.Unmarshal(st.progress, &p) == nil {
				sp.progress = &p
			} else {
				sp.ends++ // not readable: at least as uncertain as an E
			}
		}
		left = append(left, sp)
	}
	return left, nil
}

// compact moves the journal's results to results.log, removes the .msg
// files that have one, and rewrites the journal with the last progress
// line and the end-of-data markers after it of each file still there,
// which it returns.
//
// It can be cut anywhere and run again: the journal's first line says how
// long results.log was when the journal began, so a second run first cuts
// results.log back to that length, and only the rename of the new journal
// makes the move count.
func (s *spool) compact() (map[string]journalState, error) {
	fail := func(err error) (map[string]journalState, error) { return nil, fmt.Errorf("mxrelay: spool: %w", err) }
	jpath := filepath.Join(s.dir, journalName)
	// Only the lines of files still there matter: the journal is read a
	// line at a time and nothing else is kept, however long it is.
	names, err := filepath.Glob(filepath.Join(s.dir, spoolMsgGlob))
	if err != nil {
		return fail(err)
	}
	states := map[string]journalState{}
	present := map[string]bool{}
	for _, path := range names {
		present[filepath.Base(path)] = true
	}
	jf, err := os.Open(jpath)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return fail(err)
	}
	var lines *journalReader
	if jf != nil {
		defer jf.Close()
		lines = &journalReader{br: bufio.NewReaderSize(jf, 64<<10)}
	}
	base := int64(-1) // results.log's length when the journal began
	first, ok := lines.next()
	if verb, arg, _ := bytes.Cut(first, []byte(" ")); ok && string(verb) == "B" {
		base, _ = strconv.ParseInt(string(arg), 10, 64)
	}
	rf, err := os.OpenFile(filepath.Join(s.dir, resultsName), os.O_CREATE|os.O_WRONLY, 0o600)
	if err != nil {
		return fail(err)
	}
	defer rf.Close()
	st, err := rf.Stat()
	if err != nil {
		return fail(err)
	}
	// Without a B line, or after someone cut results.log shorter, there
	// is nothing of ours to take back.
	if base < 0 || base > st.Size() {
		base = st.Size()
	}
	if err := rf.Truncate(base); err != nil {
		return fail(err)
	}
	if _, err := rf.Seek(base, io.SeekStart); err != nil {
		return fail(err)
	}
	results := &countingWriter{w: rf}
	rw := bufio.NewWriterSize(results, 64<<10)
	for line, ok := first, ok; ok; line, ok = lines.next() {
		verb, arg, _ := bytes.Cut(line, []byte(" "))
		switch string(verb) {
		case "E":
			if present[string(arg)] {
				st := states[string(arg)]
				st.ends++
				states[string(arg)] = st
			}
		case "D":
			var p spoolProgress
			if json.Unmarshal(arg, &p) == nil && present[p.File] {
				states[p.File] = journalState{progress: slices.Clone(arg)}
			}
		case "R":
			// A result naming anything but one of our files is not ours:
			// it must not make us remove a file elsewhere.
			var r SpoolResult
			if json.Unmarshal(arg, &r) == nil && isSpoolName(r.File) {
				rw.Write(arg)
				rw.WriteByte('\n')
				delete(states, r.File)
				if present[r.File] {
					delete(present, r.File)
					os.Remove(filepath.Join(s.dir, r.File))
				}
			}
		}
	}
	if lines != nil && lines.err != nil {
		return fail(lines.err)
	}
	err = rw.Flush()
	if err == nil {
		err = rf.Sync()
	}
	if cerr := rf.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fail(err)
	}
	nj := fmt.Appendf(nil, "B %d\n", base+results.n)
	for file, st := range states {
		if st.progress != nil {
			nj = fmt.Appendf(nj, "D %s\n", st.progress)
		}
		for range st.ends {
			nj = fmt.Appendf(nj, "E %s\n", file)
		}
	}
	// The old journal stays in use until the new one has its name, so
	// that a compaction that fails at run time costs nothing.
	tmp := jpath + ".tmp"
	if err := writeSynced(tmp, nj); err != nil {
		return fail(err)
	}
	j, err := os.OpenFile(tmp, os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return fail(err)
	}
	if err := os.Rename(tmp, jpath); err != nil {
		j.Close()
		return fail(err)
	}
	if s.journal != nil {
		s.journal.Close()
	}
	s.journal, s.size = j, int64(len(nj))
	if err := syncDir(s.dir); err != nil {
		return fail(err)
	}
	return states, nil
}

// maxJournalLine is the longest journal line read; a longer one is
// skipped (no record the client writes comes near it).
const maxJournalLine = 64 << 20

// journalReader reads the journal's complete lines, without their
// newline. A last line without its newline was being written when the
// process died: it ends the journal.
type journalReader struct {
	br   *bufio.Reader
	line []byte
	err  error // a read error other than the end of the journal
}

// next returns the next line, or false at the end. It is nil-safe: a
// nil reader is an empty journal.
func (j *journalReader) next() ([]byte, bool) {
	if j == nil {
		return nil, false
	}
	for {
		j.line = j.line[:0]
		long := false
		for {
			frag, err := j.br.ReadSlice('\n')
			if !long {
				if len(j.line)+len(frag) > maxJournalLine {
					long, j.line = true, nil
				} else {
					j.line = append(j.line, frag...)
				}
			}
			if err == bufio.ErrBufferFull {
				continue
			}
			if err != nil {
				if err != io.EOF {
					j.err = err
				}
				return nil, false // the end, or a torn last line
			}
			break
		}
		if !long {
			return j.line[:len(j.line)-1], true
		}
	}
}

// countingWriter counts the bytes written through it.
type countingWriter struct {
	w io.Writer
	n int64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

// isSpoolName reports whether name is the name of a .msg file as store
// makes them: a journal line naming anything else (a path, "..") is not
// ours and is ignored.
func isSpoolName(name string) bool {
	hex, num, ok := strings.Cut(strings.TrimSuffix(name, ".msg"), "-")
	if !ok || !strings.HasSuffix(name, ".msg") || len(hex) != 16 || len(num) != 6 {
		return false
	}
	for _, r := range hex + num {
		if !('0' <= r && r <= '9' || 'a' <= r && r <= 'f') {
			return false
		}
	}
	return strings.Trim(num, "0123456789") == ""
}

// readSpooled opens a .msg file and checks that it is whole.
func readSpooled(path string) (*spooled, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	sp, err := parseSpooled(f)
	if err != nil {
		f.Close()
		return nil, err
	}
	sp.file = filepath.Base(path)
	sp.f = f
	return sp, nil
}

// parseSpooled checks the trailer first, so that a file that is not ours
// is refused without being read; the envelope line is at most
// maxEnvelope octets.
func parseSpooled(f *os.File) (*spooled, error) {
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	size := st.Size()
	if size < int64(len(spoolMagic))+2+trailerLen {
		return nil, errors.New("too short")
	}
	var tr [trailerLen]byte
	if _, err := f.ReadAt(tr[:], size-trailerLen); err != nil {
		return nil, err
	}
	n, ok := parseTrailer(tr[:])
	if !ok || n > size-trailerLen-int64(len(spoolMagic))-2 {
		return nil, errors.New("bad trailer")
	}
	off := size - trailerLen - n // where the body starts
	if off-int64(len(spoolMagic)) > maxEnvelope {
		return nil, errors.New("envelope too long")
	}
	head := make([]byte, off)
	if _, err := f.ReadAt(head, 0); err != nil {
		return nil, err
	}
	hline, ok := bytes.CutPrefix(head, []byte(spoolMagic))
	if !ok {
		return nil, errors.New("not a version 1 spool file")
	}
	if bytes.IndexByte(hline, '\n') != len(hline)-1 {
		return nil, errors.New("bad envelope line")
	}
	sp := &spooled{off: off, size: n}
	if err := json.Unmarshal(hline, &sp.hdr); err != nil {
		return nil, err
	}
	return sp, nil
}

func trailer(n int64) []byte { return fmt.Appendf(nil, "\nEND %020d\n", n) }

func parseTrailer(b []byte) (int64, bool) {
	s, ok := strings.CutPrefix(string(b), "\nEND ")
	if !ok || !strings.HasSuffix(s, "\n") {
		return 0, false
	}
	n, err := strconv.ParseInt(s[:len(s)-1], 10, 64)
	return n, err == nil && n >= 0
}

// store writes hdr and the body read from r to a new file named
// <name>.tmp, checks the body as newBody does and fsyncs the file. The
// body returned reads from the file. Nothing reads a .tmp file: commit
// gives it its name, which accepts the email.
func (s *spool) store(hdr *spoolHeader, r io.Reader, rules bodyRules) (*body, string, error) {
	name := fmt.Sprintf("%016x-%06d.msg", time.Now().UnixNano(), s.n.Add(1)%1e6)
	path := filepath.Join(s.dir, name+tmpSuffix)
	f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_RDWR, 0o600)
	if err != nil {
		return nil, "", fmt.Errorf("mxrelay: spool: %w", err)
	}
	b := &body{file: f, temp: true} // removed by release on failure
	hline, err := json.Marshal(hdr)
	if err != nil {
		b.release()
		return nil, "", fmt.Errorf("mxrelay: spool: %w", err)
	}
	w := bufio.NewWriterSize(f, 64<<10)
	w.WriteString(spoolMagic)
	w.Write(hline)
	w.WriteByte('\n')
	off := int64(len(spoolMagic) + len(hline) + 1)
	if err := b.scan(w, r, rules); err != nil {
		b.release()
		return nil, "", err
	}
	w.Write(trailer(b.size))
	err = w.Flush()
	if err == nil {
		err = f.Sync()
	}
	if err != nil {
		b.release()
		return nil, "", fmt.Errorf("mxrelay: spool: %w", err)
	}
	b.r = io.NewSectionReader(f, off, b.size)
	return b, name, nil
}

// commit gives a file that store wrote its name and makes the name
// durable: from then on the email is accepted, and the next start sends
// it. On failure the file is gone and b's file closed.
func (s *spool) commit(b *body, name string) error {
	path := filepath.Join(s.dir, name)
	// Closed across the rename: Windows cannot rename an open file.
	_, off, n := b.r.(*io.SectionReader).Outer()
	b.file.Close()
	err := os.Rename(path+tmpSuffix, path)
	if err != nil {
		os.Remove(path + tmpSuffix)
		return fmt.Errorf("mxrelay: spool: %w", err)
	}
	f, err := os.Open(path)
	if err == nil {
		err = syncDir(s.dir)
	}
	if err != nil {
		if f != nil {
			f.Close()
		}
		os.Remove(path)
		return fmt.Errorf("mxrelay: spool: %w", err)
	}
	b.file, b.temp = f, false // the spool removes it with the result
	b.r = io.NewSectionReader(f, off, n)
	return nil
}

// body makes the body of a spooled email found at start.
func (sp *spooled) body(rules bodyRules) (*body, error) {
	b := &body{file: sp.f}
	if err := b.scan(nil, io.NewSectionReader(sp.f, sp.off, sp.size), rules); err != nil {
		return nil, err
	}
	b.r = io.NewSectionReader(sp.f, sp.off, sp.size)
	return b, nil
}

// ended records that file's end of data is about to be written.
func (s *spool) ended(file string) error {
	return s.append([]byte("E " + file + "\n"))
}

// progressed records where em stands as it goes back to the queue after
// an end of data.
func (s *spool) progressed(p *spoolProgress) error {
	line, _ := json.Marshal(p)
	return s.append(append(append([]byte("D "), line...), '\n'))
}

// finished records a result and removes its file. An email handed back by
// Close keeps its file and gets no record. When the record cannot be
// written the file stays too: the next start sends the email again, or,
// if its end of data was recorded, fails it as an unknown outcome.
func (s *spool) finished(file string, res *Result) error {
	r := SpoolResult{
		File: file, EmailID: res.EmailID, Delivered: res.Err == nil,
		MaybeDelivered: res.MaybeDelivered, Attempts: res.Attempts,
		Accepted: res.Accepted, Time: time.Now().UTC(),
	}
	if res.Err != nil {
		r.Error = res.Err.Error()
	}
	if res.Reply.Code != 0 {
		r.Reply = strconv.Itoa(res.Reply.Code) + " " + res.Reply.Message
	}
	r.Rejected = rejectedText(res.Rejected)
	line, _ := json.Marshal(r)
	s.mu.Lock()
	defer s.mu.Unlock()
	// The record first: a crash before the removal leaves a file that the
	// next start knows to be finished, never one it would send again.
	if err := s.appendLocked(append(append([]byte("R "), line...), '\n')); err != nil {
		return fmt.Errorf("%w: the result is not recorded and the email stays in the spool", err)
	}
	os.Remove(filepath.Join(s.dir, file))
	if s.size > maxJournal {
		if _, err := s.compact(); err != nil {
			return fmt.Errorf("%w (compacting the journal; the result is recorded)", err)
		}
	}
	return nil
}

// rejectedText is how the spool records refused recipients: each
// address with its error's text; nil for none.
func rejectedText(rs []RecipientError) map[string]string {
	var m map[string]string
	for _, r := range rs {
		if m == nil {
			m = map[string]string{}
		}
		m[r.Address] = r.Err.Error()
	}
	return m
}

func (s *spool) append(line []byte) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.appendLocked(line)
}

func (s *spool) appendLocked(line []byte) error {
	if s.journal == nil {
		return errors.New("mxrelay: spool journal: closed")
	}
	n, err := s.journal.Write(line)
	if err != nil && n > 0 {
		// A partial line (a full disk): cut it off, or the next record
		// would be glued to it and lost. If that fails too, no record
		// can be trusted: the journal is closed, and every email is
		// handed back or keeps its file.
		if s.journal.Truncate(s.size) != nil {
			s.journal.Close()
			s.journal = nil
		}
		n = 0
	}
	s.size += int64(n)
	if err == nil && s.syncAll {
		err = s.journal.Sync()
	}
	if err != nil {
		return fmt.Errorf("mxrelay: spool journal: %w", err)
	}
	return nil
}

func (s *spool) close() {
	s.mu.Lock()
	if s.journal != nil {
		s.journal.Close()
		s.journal = nil
	}
	s.mu.Unlock()
	unlockFile(s.lock)
	s.lock.Close()
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
