package smtpc

import (
	"bufio"
	"bytes"
	"io"
	"net/textproto"
	"testing"

	"github.com/stretchr/testify/require"
)

// encodeAll runs b through an Encoder in pieces of k bytes.
func encodeAll(b []byte, k int, fix, stuff bool) ([]byte, error) {
	e := Encoder{Fix: fix, Stuff: stuff}
	var out []byte
	var err error
	for i := 0; i < len(b); i += k {
		if out, err = e.Encode(out, b[i:min(i+k, len(b))]); err != nil {
			return out, err
		}
	}
	return e.Close(out)
}

// normalize is what the encoder must make of b with Fix: every CRLF, bare
// CR and bare LF a CRLF, a final CRLF added, an empty body one CRLF.
func normalize(b []byte) []byte {
	var out []byte
	for i := 0; i < len(b); i++ {
		switch {
		case b[i] == '\r' && i+1 < len(b) && b[i+1] == '\n':
			out = append(out, '\r', '\n')
			i++
		case b[i] == '\r' || b[i] == '\n':
			out = append(out, '\r', '\n')
		default:
			out = append(out, b[i])
		}
	}
	if len(out) == 0 || !bytes.HasSuffix(out, []byte("\r\n")) {
		out = append(out, '\r', '\n')
	}
	return out
}

func hasBare(b []byte) bool {
	for i, c := range b {
		if c == '\r' && (i+1 == len(b) || b[i+1] != '\n') || c == '\n' && (i == 0 || b[i-1] != '\r') {
			return true
		}
	}
	return false
}

// FuzzEncoder checks the DATA encoding against net/textproto's DotReader:
// what the encoder writes, followed by the end of data, reads back as the
// body's lines, with only one terminator, and without a bare CR or LF; a
// body with a bare CR or LF is refused unless Fix. The BDAT encoding is the
// same bytes without the dots.
func FuzzEncoder(f *testing.F) {
	for _, s := range []string{
		"", "a", ".", "\r\n.\r\n", "a\r\n.\r\nb", "..\r\n", "a\nb", "a\rb", "\r", "\n.\n", "\r.\r", "x\r\n\r\n.",
		"Subject: hi\r\n\r\n.hidden\r\n.\r\n..\r\n",
	} {
		f.Add([]byte(s), byte(1), false)
		f.Add([]byte(s), byte(3), true)
	}
	f.Fuzz(func(t *testing.T, body []byte, step byte, fix bool) {
		k := int(step%16) + 1
		data, err := encodeAll(body, k, fix, true)
		if !fix && hasBare(body) {
			require.ErrorIs(t, err, ErrBareLineEnding)
			return
		}
		require.NoError(t, err)
		want := normalize(body)
		require.False(t, hasBare(data), "no bare CR or LF on the wire")
		wire := append(data, ".\r\n"...)
		require.Equal(t, len(wire)-5, bytes.Index(wire, []byte("\r\n.\r\n")), "one end of data, at the end")

		got, err := io.ReadAll(textproto.NewReader(bufio.NewReader(bytes.NewReader(wire))).DotReader())
		require.NoError(t, err)
		// DotReader gives lines with "\n" ends.
		require.Equal(t, string(bytes.ReplaceAll(want, []byte("\r\n"), []byte("\n"))), string(got))

		chunked, err := encodeAll(body, k, fix, false)
		require.NoError(t, err)
		require.Equal(t, string(want), string(chunked), "BDAT: the body as it is, line ends fixed")

		sz := NewSizer(fix)
		_, err = sz.Write(body)
		require.NoError(t, err)
		n, err := sz.Size()
		require.NoError(t, err)
		require.Equal(t, int64(len(want)), n, "SIZE= is the message's size")
	})
}
