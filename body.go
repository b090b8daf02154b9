package mxrelay

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"unicode/utf8"

	"github.com/emersion/go-smtp"
	"github.com/mxrelay/mxrelay/internal/smtpc"
	"github.com/mxrelay/mxrelay/internal/store"
	"github.com/mxrelay/mxrelay/internal/wire"
)

// body is what the client learnt of an email's message as it was read
// at Enqueue: the store keeps the bytes (store.Store.Body reads them again
// at each attempt), the client keeps this, as the store's meta.
type body struct {
	size int64 // bytes as given
	wire int64 // bytes as sent (SIZE=): line endings fixed, final CRLF
	utf8 bool  // valid UTF-8, so it can travel in a JSON channel
	raw  bool  // BODY=BINARYMIME: sent as it is
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

// newBody reads r once (see Email.Body), copying it to w (the store's
// Draft), and checks it by the rules (bare line endings, long lines, UTF-8
// for a client that only speaks JSON text frames), learning its size as
// sent. A body that can seek is not copied when w can keep a reference to
// it instead (store.Referrer: memory, not a spool): it is read from its
// current offset at each attempt. A *bytes.Buffer is read without being
// drained.
func newBody(w io.Writer, r io.Reader, rules bodyRules) (*body, error) {
	if b, ok := r.(*bytes.Buffer); ok {
		r = bytes.NewReader(b.Bytes())
	}
	b := &body{}
	if ref, ok := w.(store.Referrer); ok {
		if rs, ok := r.(io.ReadSeeker); ok {
			if start, err := rs.Seek(0, io.SeekCurrent); err == nil {
				if err := b.scan(nil, rs, rules); err != nil {
					return nil, err
				}
				if _, err := rs.Seek(start, io.SeekStart); err != nil {
					return nil, bodyErr(err)
				}
				if ref.Refer(rs, start, b.size) {
					return b, nil
				}
				b = &body{}
			}
		}
	}
	if err := b.scan(w, r, rules); err != nil {
		return nil, err
	}
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

// bodyMeta is what the store keeps of a body for the client (the meta of
// store.Draft.Commit): what scan learnt, and under which rules, so that a
// Client with other rules (a restart with other Options) reads it again.
type bodyMeta struct {
	Wire    int64 `json:"wire"`
	UTF8    bool  `json:"utf8,omitempty"`
	Fix     bool  `json:"fix,omitempty"`
	MaxLine int   `json:"maxLine,omitempty"`
	Raw     bool  `json:"raw,omitempty"`
}

// meta is the body's meta under rules.
func (b *body) meta(rules bodyRules) []byte {
	m, _ := json.Marshal(bodyMeta{Wire: b.wire, UTF8: b.utf8, Fix: rules.fix, MaxLine: rules.maxLine, Raw: rules.raw})
	return m
}

// bodyOf is the body meta says, if it was learnt under rules; nil
// otherwise (no meta, or other rules): the body must be read again.
func bodyOf(meta []byte, size int64, rules bodyRules) *body {
	var m bodyMeta
	if meta == nil || json.Unmarshal(meta, &m) != nil ||
		m.Fix != rules.fix || m.MaxLine != rules.maxLine || m.Raw != rules.raw || rules.utf8Only && !m.UTF8 {
		return nil
	}
	return &body{size: size, wire: m.Wire, utf8: m.UTF8, raw: m.Raw}
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
