package mxrelay

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime"
	"unicode/utf8"

	"github.com/emersion/go-smtp"
	"github.com/mxrelay/mxrelay/internal/smtpc"
	"github.com/mxrelay/mxrelay/internal/wire"
)

// body is an email's message, readable once per attempt.
type body struct {
	r     io.ReadSeeker
	start int64
	size  int64    // bytes to read
	wire  int64    // bytes as sent (SIZE=): line endings fixed, final CRLF
	utf8  bool     // valid UTF-8, so it can travel in a JSON channel
	raw   bool     // BODY=BINARYMIME: sent as it is
	file  *os.File // a file of ours holding the body, closed by release
	temp  bool     // file still has a name of ours, removed by release
}

// bodyRules are the checks a body passes at Enqueue and how it is sent.
type bodyRules struct {
	fix      bool // Options.FixLineEndings
	maxLine  int  // longest line; zero: no limit
	raw      bool // BODY=BINARYMIME: bytes as they are, no line rules
	utf8Only bool // Options.DisableBinary: only JSON text frames will carry it
}

// bodyRules are the rules for a body sent with mailOpts.
func (o *Options) bodyRules(mailOpts *MailOptions) bodyRules {
	if mailOpts != nil && mailOpts.Body == smtp.BodyBinaryMIME {
		return bodyRules{raw: true, utf8Only: o.DisableBinary}
	}
	return bodyRules{fix: o.FixLineEndings, maxLine: o.maxLine(), utf8Only: o.DisableBinary}
}

// newBody prepares r for reading at each attempt (see Email.Body), reading
// it once to check it by the rules (bare line endings, long lines, UTF-8
// for a client that only speaks JSON text frames) and to learn its size as
// sent. A body that cannot be read twice is copied to a temporary file in
// tempDir that has no name once created (on Windows, which cannot unlink
// an open file, it is removed by release).
func newBody(r io.Reader, tempDir string, rules bodyRules) (*body, error) {
	if b, ok := r.(*bytes.Buffer); ok {
		r = bytes.NewReader(b.Bytes())
	}
	if rs, ok := r.(io.ReadSeeker); ok {
		if start, err := rs.Seek(0, io.SeekCurrent); err == nil {
			b := &body{r: rs, start: start}
			if err := b.scan(nil, rs, rules); err != nil {
				return nil, err
			}
			if _, err := rs.Seek(start, io.SeekStart); err != nil {
				return nil, bodyErr(err)
			}
			return b, nil
		}
	}
	f, err := os.CreateTemp(tempDir, "mxrelay-body-*")
	if err != nil {
		return nil, fmt.Errorf("mxrelay: copying the body: %w", err)
	}
	b := &body{file: f, temp: true}
	if runtime.GOOS != "windows" && os.Remove(f.Name()) == nil {
		// Read through the descriptor only: a process killed while the
		// email waits (SIGKILL, the OOM killer) leaves no copy behind.
		b.temp = false
	}
	if err := b.scan(f, r, rules); err != nil {
		b.release()
		return nil, err
	}
	b.r = io.NewSectionReader(f, 0, b.size)
	return b, nil
}

// scan reads r to its end, copying it to w when w is not nil, and sets
// the body's size, size as sent and UTF-8 flag, checked by rules.
func (b *body) scan(w io.Writer, r io.Reader, rules bodyRules) error {
	sc := &scanner{w: w, sz: smtpc.NewSizer(rules.fix, rules.maxLine, rules.raw)}
	n, err := io.Copy(sc, r)
	if err == nil {
		b.wire, err = sc.sz.Size()
	}
	if err != nil {
		return bodyErr(err)
	}
	b.size, b.utf8, b.raw = n, sc.u8.valid(), rules.raw
	if rules.utf8Only && !b.utf8 {
		return ErrNotUTF8
	}
	return nil
}

// scanner is what scan writes the body to: w if not nil, then the Sizer
// and the UTF-8 check, in one allocation.
type scanner struct {
	w  io.Writer
	sz smtpc.Sizer
	u8 utf8Check
}

func (s *scanner) Write(p []byte) (int, error) {
	if s.w != nil {
		if n, err := s.w.Write(p); err != nil {
			return n, err
		} else if n != len(p) {
			return n, io.ErrShortWrite
		}
	}
	if _, err := s.sz.Write(p); err != nil {
		return 0, err
	}
	return s.u8.Write(p)
}

// bodyErr says what was wrong with a body read at Enqueue or as it was
// sent: a body that breaks the rules is invalid, other errors are the
// reader's.
func bodyErr(err error) error {
	if errors.Is(err, ErrBareLineEnding) || errors.Is(err, ErrLineTooLong) {
		return fmt.Errorf("%w: %w", ErrInvalidEmail, err)
	}
	return fmt.Errorf("%w: %w", errBody, err)
}

// open rewinds the body for an attempt.
func (b *body) open() (io.Reader, error) {
	if _, err := b.r.Seek(b.start, io.SeekStart); err != nil {
		return nil, fmt.Errorf("%w: rewinding: %w", errBody, err)
	}
	if br, ok := b.r.(*bytes.Reader); ok && int64(br.Len()) == b.size {
		// A bytes.Reader cannot grow: no limit to allocate.
		return br, nil
	}
	return io.LimitReader(b.r, b.size), nil
}

func (b *body) release() {
	if b.file != nil {
		b.file.Close()
		if b.temp {
			os.Remove(b.file.Name())
		}
	}
}

// utf8Check is a writer that tells whether what was written is valid
// UTF-8, holding back at most one incomplete character between writes.
type utf8Check struct {
	carry [utf8.UTFMax]byte
	n     int
	bad   bool
}

func (u *utf8Check) Write(p []byte) (int, error) {
	n := len(p)
	for len(p) > 0 && !u.bad {
		if u.n == 0 {
			cut := wire.RuneCut(p)
			u.bad = !utf8.Valid(p[:cut])
			u.n = copy(u.carry[:], p[cut:])
			break
		}
		// Complete the held-back character, a byte at a time.
		u.carry[u.n] = p[0]
		u.n++
		p = p[1:]
		if utf8.FullRune(u.carry[:u.n]) {
			u.bad = !utf8.Valid(u.carry[:u.n])
			u.n = 0
		}
	}
	return n, nil
}

// valid reports whether everything written was valid UTF-8.
func (u *utf8Check) valid() bool { return !u.bad && u.n == 0 }
