package spool

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/mxrelay/mxrelay/internal/store"
)

// The journal is text, one record per line, each written with one
// write(2) before the step it records takes effect (fsync'd too with
// Options.SyncAll):
//
//	B <octets>  first line: results.log's length when this journal began
//	E <file>    the end of data of <file> is about to be written (Ending)
//	D <json>    where <file> stands as it goes back to the queue
//	            (Requeue, HandBack with progress, Retry): a progressLine
//	R <json>    <file>'s result (Finish, Cancel, Delete): a Record; then
//	            <file> is removed
//	H <file>    <file> is on hold (Hold): no claim takes it
//	U <file>    <file> is off hold again (Release)
//
// A line without its final newline was being written when the process
// died and is ignored; so are lines about files that are not there, and
// lines over maxLine.

// progressLine is a "D" line: the email's file, its store.Progress, and
// the retry time the Store that wrote it keeps it for (a Store that opens
// the spool anew makes every email ready: compaction at Open removes it).
type progressLine struct {
	File string `json:"file"`
	store.Progress
	NotBefore time.Time `json:"notBefore,omitzero"`
}

// withoutRetryTime is the JSON of a "D" line without its retry time; a
// line that does not parse is kept as it is.
func withoutRetryTime(line []byte) []byte {
	var p progressLine
	if line == nil || json.Unmarshal(line, &p) != nil || p.NotBefore.IsZero() {
		return line
	}
	p.NotBefore = time.Time{}
	if b, err := json.Marshal(p); err == nil {
		return b
	}
	return line
}

// appendLine writes one journal line, verb, a space and arg, and returns
// the offset of arg in the journal. s.jmu is held.
func (s *Store) appendLine(verb string, arg []byte) (int64, error) {
	line := make([]byte, 0, len(verb)+1+len(arg)+1)
	line = append(append(append(append(line, verb...), ' '), arg...), '\n')
	off := s.size + int64(len(verb)) + 1
	return off, s.appendLocked(line)
}

// appendLocked writes lines, complete, to the journal. A write cut short
// (a full disk) is cut off again, or the next record would be glued to
// it and lost; if that fails too, no record can be trusted and the
// journal is closed: every later write fails. s.jmu is held.
func (s *Store) appendLocked(lines []byte) error {
	if s.journal == nil {
		return errors.New("mxrelay: spool journal: closed")
	}
	n, err := s.journal.Write(lines)
	if err != nil && n > 0 {
		if s.journal.Truncate(s.size) != nil {
			s.journal.Close()
			s.journal = nil
		}
		n = 0
	}
	s.size += int64(n)
	if err == nil && s.opts.SyncAll {
		err = s.journal.Sync()
	}
	if err != nil {
		return fmt.Errorf("mxrelay: spool journal: %w", err)
	}
	return nil
}

// appendEnds writes the "E" lines of files in one write.
func (s *Store) appendEnds(files []string) error {
	var lines []byte
	for _, f := range files {
		lines = append(append(append(lines, "E "...), f...), '\n')
	}
	s.jmu.Lock()
	defer s.jmu.Unlock()
	return s.appendLocked(lines)
}

// appendMark writes a line about file: verb, a space and its name.
func (s *Store) appendMark(verb, file string) error {
	s.jmu.Lock()
	defer s.jmu.Unlock()
	_, err := s.appendLine(verb, []byte(file))
	return err
}

// appendProgress writes file's "D" line.
func (s *Store) appendProgress(file string, p *store.Progress, notBefore time.Time) error {
	arg, err := json.Marshal(progressLine{File: file, Progress: *p, NotBefore: notBefore})
	if err != nil {
		return err
	}
	s.jmu.Lock()
	defer s.jmu.Unlock()
	_, err = s.appendLine("D", arg)
	return err
}

// maxLine is the longest journal or results.log line read; a longer one
// is skipped (no record the spool writes comes near it).
const maxLine = 64 << 20

// lineReader reads complete lines, without their newline, keeping one
// line in memory at a time however long the file. A last line without
// its newline was being written when the process died: it ends the file.
type lineReader struct {
	br   *bufio.Reader
	line []byte
	pos  int64 // offset of the next line
	err  error // a read error other than the end of the file
}

func newLineReader(r io.Reader) *lineReader {
	return &lineReader{br: bufio.NewReaderSize(r, 64<<10)}
}

// next returns the next line and its offset, or false at the end. It is
// nil-safe: a nil reader is an empty file.
func (j *lineReader) next() ([]byte, int64, bool) {
	if j == nil {
		return nil, 0, false
	}
	for {
		start := j.pos
		j.line = j.line[:0]
		long := false
		for {
			frag, err := j.br.ReadSlice('\n')
			j.pos += int64(len(frag))
			if !long {
				if len(j.line)+len(frag) > maxLine {
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
				return nil, 0, false // the end, or a torn last line
			}
			break
		}
		if !long {
			return j.line[:len(j.line)-1], start, true
		}
	}
}
