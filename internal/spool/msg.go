package spool

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/mxrelay/mxrelay/internal/store"
)

// A .msg file holds one accepted email, written once and never changed:
//
//	MXRELAY-SPOOL 1\n
//	<header: one line of JSON>\n
//	<the body, N octets>
//	\nEND <N as 20 decimal digits>\n
//
// Its header is the envelope (store.Envelope's fields: id, key, from, to,
// mail, rcpt, priority, retries, immediate, deadline), the time of
// acceptance (queued) and the Client's meta (base64), which is only known
// once the body is written: the header ends with a fixed room for it,
// written at Commit, before the file is fsync'd and named.
const (
	magic      = "MXRELAY-SPOOL 1\n"
	trailerLen = int64(len("\nEND ") + 20 + 1)
	// maxHeader is the longest header read; a longer one is damage.
	maxHeader = 64 << 20
	// metaRoom is the room for the meta in the header: JSON (a base64
	// string, or null) padded with spaces, which JSON allows before the
	// closing brace.
	metaRoom = 1024
	// MaxMeta is the longest meta a Commit takes: what fits in metaRoom
	// as base64.
	MaxMeta = (metaRoom - 2) / 4 * 3
)

// header is the envelope line of a .msg file.
type header struct {
	store.Envelope
	Queued time.Time `json:"queued"`
	// Meta is absent in files written before it was kept, null when the
	// Client gave none.
	Meta []byte `json:"meta,omitempty"`
}

// encodeHeader is h's line, without its newline, with an empty room for
// the meta; metaAt is where the room starts in the line.
func encodeHeader(h *header) (line []byte, metaAt int, err error) {
	hj, err := json.Marshal(h)
	if err != nil {
		return nil, 0, err
	}
	line = append(hj[:len(hj)-1], `,"meta":`...)
	metaAt = len(line)
	line = append(line, "null"...)
	line = append(line, bytes.Repeat([]byte(" "), metaRoom-len("null"))...)
	return append(line, '}'), metaAt, nil
}

// metaField is meta as it fills the header's room: JSON padded to
// metaRoom.
func metaField(meta []byte) ([]byte, error) {
	if len(meta) > MaxMeta {
		return nil, fmt.Errorf("mxrelay: spool: meta of %d bytes: at most %d", len(meta), MaxMeta)
	}
	var field []byte
	if meta == nil {
		field = []byte("null")
	} else {
		field, _ = json.Marshal(meta)
	}
	return append(field, bytes.Repeat([]byte(" "), metaRoom-len(field))...), nil
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

// msg is what a .msg file says of its email.
type msg struct {
	hdr  header
	off  int64 // where the body starts
	size int64 // the body's length
}

// readMsg checks that the .msg file at path is whole and reads its
// header. The trailer is checked first, so that a file that is not ours
// is refused without being read; the header line is at most maxHeader
// octets. What is not a regular file (a FIFO would block the open, a
// link leads elsewhere) is refused unopened.
func readMsg(path string) (*msg, error) {
	fi, err := os.Lstat(path)
	if err != nil {
		return nil, err
	}
	if !fi.Mode().IsRegular() {
		return nil, errors.New("not a regular file")
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return parseMsg(f)
}

// parseMsg is readMsg of an open file.
func parseMsg(f *os.File) (*msg, error) {
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	size := st.Size()
	if size < int64(len(magic))+2+trailerLen {
		return nil, errors.New("too short")
	}
	var tr [trailerLen]byte
	if _, err := f.ReadAt(tr[:], size-trailerLen); err != nil {
		return nil, err
	}
	n, ok := parseTrailer(tr[:])
	if !ok || n > size-trailerLen-int64(len(magic))-2 {
		return nil, errors.New("bad trailer")
	}
	off := size - trailerLen - n // where the body starts
	if off-int64(len(magic)) > maxHeader {
		return nil, errors.New("header too long")
	}
	head := make([]byte, off)
	if _, err := f.ReadAt(head, 0); err != nil {
		return nil, err
	}
	hline, ok := bytes.CutPrefix(head, []byte(magic))
	if !ok {
		return nil, errors.New("not a version 1 spool file")
	}
	if bytes.IndexByte(hline, '\n') != len(hline)-1 {
		return nil, errors.New("bad header line")
	}
	m := &msg{off: off, size: n}
	if err := json.Unmarshal(hline, &m.hdr); err != nil {
		return nil, err
	}
	if m.hdr.ID == "" {
		return nil, errors.New("no ID")
	}
	return m, nil
}

// msgWriter writes a new .msg file: the header at once, the body as it
// comes, the meta and the trailer at the end.
type msgWriter struct {
	f      *os.File
	w      *bufio.Writer
	metaAt int64 // where the meta's room is in the file
	bodyAt int64 // where the body starts
	size   int64 // body bytes written
}

// newMsgWriter creates path (which must not exist) and writes h.
func newMsgWriter(path string, h *header) (*msgWriter, error) {
	line, metaAt, err := encodeHeader(h)
	if err != nil {
		return nil, err
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_RDWR, 0o600)
	if err != nil {
		return nil, err
	}
	w := bufio.NewWriterSize(f, 64<<10)
	w.WriteString(magic)
	w.Write(line)
	w.WriteByte('\n')
	return &msgWriter{f: f, w: w, metaAt: int64(len(magic) + metaAt), bodyAt: int64(len(magic) + len(line) + 1)}, nil
}

func (m *msgWriter) Write(p []byte) (int, error) {
	n, err := m.w.Write(p)
	m.size += int64(n)
	return n, err
}

// finish writes meta and the trailer, fsyncs the file and closes it.
func (m *msgWriter) finish(meta []byte) error {
	field, err := metaField(meta)
	if err == nil {
		m.w.Write(trailer(m.size))
		err = m.w.Flush()
	}
	if err == nil {
		_, err = m.f.WriteAt(field, m.metaAt)
	}
	if err == nil {
		err = m.f.Sync()
	}
	if cerr := m.f.Close(); err == nil {
		err = cerr
	}
	return err
}

// close closes the file, unfinished.
func (m *msgWriter) close() { m.f.Close() }

// isName reports whether name is the name of a .msg file as the spool
// makes them: a journal line naming anything else (a path, "..") is not
// ours and is ignored.
func isName(name string) bool {
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

// nameTime is the time in a .msg file's name.
func nameTime(name string) int64 {
	t, _ := strconv.ParseInt(name[:16], 16, 64)
	return t
}
