package smtpc

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"net/textproto"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/mxrelay/mxrelay/internal/alloctest"
)

// encodeAll runs b through an Encoder in pieces of k bytes.
func encodeAll(b []byte, k int, fix bool, maxLine int, stuff bool) ([]byte, error) {
	e := Encoder{Fix: fix, MaxLine: maxLine, Stuff: stuff}
	var out []byte
	var err error
	for i := 0; i < len(b); i += k {
		if out, err = e.Encode(out, b[i:min(i+k, len(b))]); err != nil {
			return out, err
		}
	}
	return e.Close(out)
}

// lineEnd is what Fix takes for a line end: CRLF, a bare CR or a bare LF.
var lineEnd = regexp.MustCompile("\r\n|\r|\n")

// linesOf splits b at its line ends, as Fix reads it; a final line end
// ends the last line rather than starting an empty one, and an empty body
// is one empty line.
func linesOf(b []byte) []string {
	lines := lineEnd.Split(string(b), -1)
	if len(lines) > 1 && lines[len(lines)-1] == "" {
		lines = lines[:len(lines)-1]
	}
	return lines
}

func hasBare(b []byte) bool {
	for i, c := range b {
		if c == '\r' && (i+1 == len(b) || b[i+1] != '\n') || c == '\n' && (i == 0 || b[i-1] != '\r') {
			return true
		}
	}
	return false
}

func TestEncoderLineLimit(t *testing.T) {
	long := strings.Repeat("x", MaxLineLength)
	for _, tc := range []struct {
		name string
		body string
		fix  bool
		err  error
	}{
		{name: "998 octets", body: long + "\r\n"},
		{name: "998 octets, no final CRLF", body: long},
		{name: "998 octets after a dot", body: "." + long[1:] + "\r\n.\r\n"},
		{name: "999 octets", body: long + "x\r\n", err: ErrLineTooLong},
		{name: "999 octets, no final CRLF", body: "a\r\n" + long + "x", err: ErrLineTooLong},
		{name: "999 octets before a bare LF", body: long + "x\n", err: ErrLineTooLong},
		{name: "999 octets, bare LF fixed", body: long + "x\nshort\n", fix: true, err: ErrLineTooLong},
		{name: "bare CR splits the line", body: long + "\r" + long + "\r\n", fix: true},
		{name: "bare LF splits the line", body: long + "\n" + long, fix: true},
		{name: "a bare LF before the long line", body: "a\n" + long + "x", err: ErrBareLineEnding},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for _, k := range []int{1, 7, 4096} {
				for _, stuff := range []bool{false, true} {
					_, err := encodeAll([]byte(tc.body), k, tc.fix, MaxLineLength, stuff)
					if tc.err == nil {
						require.NoError(t, err)
						continue
					}
					require.ErrorIs(t, err, tc.err)
				}
			}
			sz := NewSizer(tc.fix, MaxLineLength, false)
			_, err := sz.Write([]byte(tc.body))
			if err == nil {
				_, err = sz.Size()
			}
			if tc.err == nil {
				require.NoError(t, err)
			} else {
				require.ErrorIs(t, err, tc.err)
			}
			_, err = encodeAll([]byte(tc.body), 3, true, 0, true)
			require.NoError(t, err, "no limit")
		})
	}
}

func TestEncoderLineLimitOffset(t *testing.T) {
	_, err := encodeAll([]byte("ab\r\ncdefgh\r\n"), 2, false, 4, false)
	require.ErrorIs(t, err, ErrLineTooLong)
	require.ErrorContains(t, err, "offset 4 ")
}

// FuzzEncoder checks the DATA encoding against net/textproto's DotReader:
// what the encoder writes, followed by the end of data, reads back as the
// body's lines (each CRLF, bare CR or bare LF ending one), with only one
// terminator, without a bare CR or LF, and with no line longer than
// MaxLine; a body with a bare CR or LF is refused unless Fix, one with a
// longer line is refused. The BDAT encoding is the same bytes without the
// dots, and the Sizer counts them. Whatever the body, the encoding is at
// most twice its size plus a CRLF (a stuffed dot or a fixed line end per
// octet), and the Sizer allocates no more than that.
func FuzzEncoder(f *testing.F) {
	for _, s := range []string{
		"", "a", ".", "\r\n.\r\n", "a\r\n.\r\nb", "..\r\n", "a\nb", "a\rb", "\r", "\n.\n", "\r.\r", "x\r\n\r\n.",
		"Subject: hi\r\n\r\n.hidden\r\n.\r\n..\r\n",
	} {
		f.Add([]byte(s), byte(1), false, uint8(0))
		f.Add([]byte(s), byte(3), true, uint8(2))
	}
	f.Fuzz(func(t *testing.T, body []byte, step byte, fix bool, limit uint8) {
		k := int(step%16) + 1
		maxLine := int(limit % 64) // 0: no limit
		data, err := encodeAll(body, k, fix, maxLine, true)
		lines := linesOf(body)
		bare := !fix && hasBare(body)
		long := maxLine > 0 && slices.ContainsFunc(lines, func(l string) bool { return len(l) > maxLine })
		switch {
		case bare && long:
			require.True(t, errors.Is(err, ErrBareLineEnding) || errors.Is(err, ErrLineTooLong), "%v", err)
			return
		case bare:
			require.ErrorIs(t, err, ErrBareLineEnding)
			return
		case long:
			require.ErrorIs(t, err, ErrLineTooLong)
			return
		}
		require.NoError(t, err)
		require.LessOrEqual(t, len(data), 2*len(body)+2)
		require.False(t, hasBare(data), "no bare CR or LF on the wire")
		wire := append(data, ".\r\n"...)
		require.Equal(t, len(wire)-5, bytes.Index(wire, []byte("\r\n.\r\n")), "one end of data, at the end")
		if maxLine > 0 {
			for _, l := range strings.Split(string(data), "\r\n") {
				require.LessOrEqual(t, len(l), maxLine+1, "a line and its stuffed dot")
			}
		}

		got, err := io.ReadAll(textproto.NewReader(bufio.NewReader(bytes.NewReader(wire))).DotReader())
		require.NoError(t, err)
		// DotReader gives lines with "\n" ends.
		require.Equal(t, strings.Join(lines, "\n")+"\n", string(got))

		chunked, err := encodeAll(body, k, fix, maxLine, false)
		require.NoError(t, err)
		want := strings.Join(lines, "\r\n") + "\r\n"
		require.Equal(t, want, string(chunked), "BDAT: the body as it is, line ends fixed")

		var n int64
		allocated := alloctest.Bytes(func() {
			sz := NewSizer(fix, maxLine, false)
			if _, err = sz.Write(body); err == nil {
				n, err = sz.Size()
			}
		})
		require.NoError(t, err)
		require.Equal(t, int64(len(want)), n, "SIZE= is the message's size")
		require.LessOrEqual(t, allocated, uint64(4*len(body)+1<<20), "the Sizer holds at most a piece's encoding")
	})
}

// benchBody is a 1 KiB message of 76-octet lines, as mxbench sends.
var benchBody = bytes.Repeat([]byte(strings.Repeat("x", 76)+"\r\n"), 1024/78)

// BenchmarkSizer is what Enqueue does with each body: its size as sent.
func BenchmarkSizer(b *testing.B) {
	b.ReportAllocs()
	b.SetBytes(int64(len(benchBody)))
	for b.Loop() {
		sz := NewSizer(false, MaxLineLength, false)
		if _, err := sz.Write(benchBody); err != nil {
			b.Fatal(err)
		}
		if _, err := sz.Size(); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkEncoder is what each attempt does with its body: encoded for
// BDAT into a buffer that is reused.
func BenchmarkEncoder(b *testing.B) {
	b.ReportAllocs()
	b.SetBytes(int64(len(benchBody)))
	var out []byte
	for b.Loop() {
		e := Encoder{MaxLine: MaxLineLength}
		var err error
		if out, err = e.Encode(out[:0], benchBody); err != nil {
			b.Fatal(err)
		}
		if out, err = e.Close(out); err != nil {
			b.Fatal(err)
		}
	}
}
