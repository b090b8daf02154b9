package bench

import (
	"errors"
	"fmt"
	"io"
	"strings"
)

// The message a Body generates: these headers, then lines of lineLen octets
// (CRLF included). An X-Pad header absorbs the remainder, so that any size
// from minBodySize up is exact.
const (
	bodyHead = "From: <mxbench@example.com>\r\nTo: <sink@example.com>\r\nSubject: mxbench\r\nX-Pad: "
	headEnd  = "\r\n\r\n"
	lineLen  = 80
	// MinBodySize is the smallest message a Body can be.
	MinBodySize = len(bodyHead) + len(headEnd)
)

// fill is a block of body lines: the body repeats it. None starts with a
// dot, so DATA needs no dot-stuffing and the sink counts the same octets
// as were given.
var fill = func() string {
	const chars = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
	var b strings.Builder
	for i := range 64 {
		for j := range lineLen - 2 {
			b.WriteByte(chars[(i+j)%len(chars)])
		}
		b.WriteString("\r\n")
	}
	return b.String()
}()

// Body is a message of a fixed size made of CRLF lines, generated as it is
// read: a 100 MiB body holds no 100 MiB of memory. It implements
// io.ReadSeeker, so mxrelay reads it at each attempt without copying it to
// a temporary file. It is not safe for concurrent use.
type Body struct {
	size int64
	head string
	off  int64
}

// NewBody returns a Body of exactly size octets, at least MinBodySize.
func NewBody(size int64) (*Body, error) {
	if size < int64(MinBodySize) {
		return nil, fmt.Errorf("bench: a message of %d octets is smaller than its headers (%d)", size, MinBodySize)
	}
	pad := (size - int64(MinBodySize)) % lineLen
	return &Body{size: size, head: bodyHead + strings.Repeat("x", int(pad)) + headEnd}, nil
}

// Message returns a message of exactly size octets, the same as NewBody's.
func Message(size int) ([]byte, error) {
	b, err := NewBody(int64(size))
	if err != nil {
		return nil, err
	}
	return io.ReadAll(b)
}

// Size is the body's length.
func (b *Body) Size() int64 { return b.size }

func (b *Body) Read(p []byte) (int, error) {
	if b.off >= b.size {
		return 0, io.EOF
	}
	n := 0
	for n < len(p) && b.off < b.size {
		var src string
		if h := int64(len(b.head)); b.off < h {
			src = b.head[b.off:]
		} else {
			src = fill[(b.off-h)%int64(len(fill)):]
		}
		if left := b.size - b.off; int64(len(src)) > left {
			src = src[:left]
		}
		k := copy(p[n:], src)
		n += k
		b.off += int64(k)
	}
	return n, nil
}

// Seek implements io.Seeker.
func (b *Body) Seek(offset int64, whence int) (int64, error) {
	switch whence {
	case io.SeekStart:
	case io.SeekCurrent:
		offset += b.off
	case io.SeekEnd:
		offset += b.size
	default:
		return 0, errors.New("bench: Body.Seek: bad whence")
	}
	if offset < 0 {
		return 0, errors.New("bench: Body.Seek: negative position")
	}
	b.off = offset
	return offset, nil
}
