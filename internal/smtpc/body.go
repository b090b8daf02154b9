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
	o := output{buf: dst}
	err := e.encode(&o, src)
	return o.buf, err
}

// Close appends what the end of the body needs: a held-back CR's fate and a
// final CRLF.
func (e *Encoder) Close(dst []byte) ([]byte, error) {
	o := output{buf: dst}
	err := e.close(&o)
	return o.buf, err
}

// output is where an Encoder puts what it makes: appended to buf, or, with
// count, only counted in n (a Sizer keeps no bytes).
type output struct {
	buf   []byte
	n     int64
	count bool
}

func (o *output) add(p []byte) {
	if o.count {
		o.n += int64(len(p))
		return
	}
	o.buf = append(o.buf, p...)
}

var (
	crlf = []byte("\r\n")
	dot  = []byte(".")
)

// indexCRLF is the index of the first CR or LF in p, or -1: bytes.IndexAny's
// answer, found by two vectorised byte searches instead of a loop over
// each byte.
func indexCRLF(p []byte) int {
	lf := bytes.IndexByte(p, '\n')
	upto := p
	if lf >= 0 {
		upto = p[:lf]
	}
	if cr := bytes.IndexByte(upto, '\r'); cr >= 0 {
		return cr
	}
	return lf
}

// encode puts src, encoded, into o.
func (e *Encoder) encode(o *output, src []byte) error {
	if e.Raw {
		o.add(src)
		return nil
	}
	e.some = e.some || len(src) > 0
	for len(src) > 0 {
		if e.cr {
			e.cr = false
			if src[0] == '\n' {
				o.add(crlf)
				e.midLine, e.line = false, 0
				src = src[1:]
				e.offset++
				continue
			}
			if !e.Fix {
				return fmt.Errorf("%w: CR without LF at offset %d", ErrBareLineEnding, e.offset-1)
			}
			o.add(crlf)
			e.midLine, e.line = false, 0
		}
		if !e.midLine && e.Stuff && src[0] == '.' {
			o.add(dot)
		}
		i := indexCRLF(src)
		if i < 0 {
			if err := e.text(len(src), e.offset); err != nil {
				return err
			}
			o.add(src)
			e.offset += int64(len(src))
			e.midLine = true
			return nil
		}
		if err := e.text(i, e.offset); err != nil {
			return err
		}
		o.add(src[:i])
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
			return fmt.Errorf("%w: LF without CR at offset %d", ErrBareLineEnding, e.offset-1)
		}
		o.add(crlf)
		e.midLine, e.line = false, 0
		src = src[i+1:]
	}
	return nil
}

// close puts into o what the end of the body needs.
func (e *Encoder) close(o *output) error {
	if e.Raw {
		return nil
	}
	if e.cr {
		e.cr = false
		if !e.Fix {
			return fmt.Errorf("%w: CR without LF at offset %d", ErrBareLineEnding, e.offset-1)
		}
		o.add(crlf)
		e.midLine = false
	}
	if e.midLine || !e.some {
		// An empty body is one empty line, as textproto's DotWriter makes it.
		o.add(crlf)
		e.midLine, e.some = false, true
	}
	return nil
}

// Sizer counts what an Encoder would make of the bytes written to it: it
// is how SIZE= is known, and a bad body refused, before anything is sent.
// It keeps none of the bytes.
type Sizer struct {
	e Encoder
	o output
}

// NewSizer returns a Sizer for a body encoded without dot-stuffing (SIZE
// counts the message, not its DATA transparency), with the Encoder's Fix
// and MaxLine, or Raw.
func NewSizer(fix bool, maxLine int, raw bool) Sizer {
	return Sizer{e: Encoder{Fix: fix, MaxLine: maxLine, Raw: raw}, o: output{count: true}}
}

// Write implements io.Writer; it fails on a bare line ending unless fix,
// and on a line longer than maxLine.
func (s *Sizer) Write(p []byte) (int, error) {
	if err := s.e.encode(&s.o, p); err != nil {
		return 0, err
	}
	return len(p), nil
}

// Size finishes and returns the encoded size.
func (s *Sizer) Size() (int64, error) {
	err := s.e.close(&s.o)
	return s.o.n, err
}
