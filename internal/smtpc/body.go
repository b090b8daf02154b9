package smtpc

import (
	"bytes"
	"errors"
	"fmt"
)

// ErrBareLineEnding is a CR not followed by LF, or an LF not preceded by CR,
// in a message body: RFC 5321 §2.3.8 forbids sending them, and servers
// that read them as line ends are how SMTP smuggling works.
var ErrBareLineEnding = errors.New("bare CR or LF in the body")

// ErrLineTooLong is a body line longer than an Encoder's MaxLine.
var ErrLineTooLong = errors.New("line too long in the body")

// MaxLineLength is the longest line RFC 5322 §2.1.1 and RFC 5321
// §4.5.3.1.6 allow in a message: 998 octets, the CRLF not counted, nor a
// dot added for DATA's transparency.
const MaxLineLength = 998

// Encoder turns a message body into what goes on the wire: line endings
// checked (or, with Fix, every bare CR and bare LF made a CRLF), a final
// CRLF added when the body does not end with one (an empty body becomes
// one CRLF), with MaxLine, a line longer than MaxLine octets refused, and,
// with Stuff, a dot doubled at the start of each line (DATA's
// transparency, RFC 5321 §4.5.2). It holds no more than one pending CR
// between calls.
type Encoder struct {
	Fix     bool // make bare CR and bare LF into CRLF instead of refusing them
	MaxLine int  // the longest line allowed, line end and stuffed dot not counted; zero: no limit
	Stuff   bool // dot-stuff, for DATA
	// Raw passes the bytes through as they are, for BODY=BINARYMIME: no
	// line ending checked or added, no line limit (Fix, MaxLine and Stuff
	// are ignored).
	Raw bool

	some    bool  // a byte was seen
	midLine bool  // the last byte emitted was not the LF of a CRLF
	cr      bool  // a CR is held back until the next byte says what it is
	offset  int64 // of the next byte of input
	line    int64 // octets of the current line so far
}

// text counts n octets of a line's text starting at input offset at,
// refusing them when the line grows past MaxLine.
func (e *Encoder) text(n int, at int64) error {
	e.line += int64(n)
	if e.MaxLine > 0 && e.line > int64(e.MaxLine) {
		return fmt.Errorf("%w: the line at offset %d is longer than %d octets", ErrLineTooLong, at-(e.line-int64(n)), e.MaxLine)
	}
	return nil
}

// Encode appends src, encoded, to dst.
func (e *Encoder) Encode(dst, src []byte) ([]byte, error) {
	if e.Raw {
		return append(dst, src...), nil
	}
	e.some = e.some || len(src) > 0
	for len(src) > 0 {
		if e.cr {
			e.cr = false
			if src[0] == '\n' {
				dst = append(dst, '\r', '\n')
				e.midLine, e.line = false, 0
				src = src[1:]
				e.offset++
				continue
			}
			if !e.Fix {
				return dst, fmt.Errorf("%w: CR without LF at offset %d", ErrBareLineEnding, e.offset-1)
			}
			dst = append(dst, '\r', '\n')
			e.midLine, e.line = false, 0
		}
		if !e.midLine && e.Stuff && src[0] == '.' {
			dst = append(dst, '.')
		}
		i := bytes.IndexAny(src, "\r\n")
		if i < 0 {
			if err := e.text(len(src), e.offset); err != nil {
				return dst, err
			}
			dst = append(dst, src...)
			e.offset += int64(len(src))
			e.midLine = true
			return dst, nil
		}
		if err := e.text(i, e.offset); err != nil {
			return dst, err
		}
		dst = append(dst, src[:i]...)
		if i > 0 {
			e.midLine = true
		}
		e.offset += int64(i) + 1
		if src[i] == '\r' {
			e.cr = true
			src = src[i+1:]
			continue
		}
		// A bare LF.
		if !e.Fix {
			return dst, fmt.Errorf("%w: LF without CR at offset %d", ErrBareLineEnding, e.offset-1)
		}
		dst = append(dst, '\r', '\n')
		e.midLine, e.line = false, 0
		src = src[i+1:]
	}
	return dst, nil
}

// Close appends what the end of the body needs: a held-back CR's fate and a
// final CRLF.
func (e *Encoder) Close(dst []byte) ([]byte, error) {
	if e.Raw {
		return dst, nil
	}
	if e.cr {
		e.cr = false
		if !e.Fix {
			return dst, fmt.Errorf("%w: CR without LF at offset %d", ErrBareLineEnding, e.offset-1)
		}
		dst = append(dst, '\r', '\n')
		e.midLine = false
	}
	if e.midLine || !e.some {
		// An empty body is one empty line, as textproto's DotWriter makes it.
		dst = append(dst, '\r', '\n')
		e.midLine, e.some = false, true
	}
	return dst, nil
}

// Sizer counts what an Encoder would make of the bytes written to it: it
// is how SIZE= is known, and a bad body refused, before anything is sent.
type Sizer struct {
	e   Encoder
	n   int64
	buf []byte
}

// NewSizer returns a Sizer for a body encoded without dot-stuffing (SIZE
// counts the message, not its DATA transparency), with the Encoder's Fix
// and MaxLine, or Raw.
func NewSizer(fix bool, maxLine int, raw bool) *Sizer {
	return &Sizer{e: Encoder{Fix: fix, MaxLine: maxLine, Raw: raw}}
}

// Write implements io.Writer; it fails on a bare line ending unless fix,
// and on a line longer than maxLine.
func (s *Sizer) Write(p []byte) (int, error) {
	n := len(p)
	for len(p) > 0 {
		k := min(len(p), 32<<10)
		var err error
		s.buf, err = s.e.Encode(s.buf[:0], p[:k])
		s.n += int64(len(s.buf))
		if err != nil {
			return 0, err
		}
		p = p[k:]
	}
	return n, nil
}

// Size finishes and returns the encoded size.
func (s *Sizer) Size() (int64, error) {
	var err error
	s.buf, err = s.e.Close(s.buf[:0])
	s.n += int64(len(s.buf))
	return s.n, err
}
