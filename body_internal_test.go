package mxrelay

import (
	"bytes"
	"io"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/stretchr/testify/require"
)

// utf8Check agrees with utf8.Valid however the bytes are split.
func FuzzUTF8Check(f *testing.F) {
	f.Add([]byte("héllo wörld ✓ 𝄞"), byte(3))
	f.Add([]byte("bad \xff byte"), byte(1))
	f.Add([]byte("cut \xe2\x9c"), byte(2))
	f.Fuzz(func(t *testing.T, p []byte, step byte) {
		u := &utf8Check{}
		k := int(step%7) + 1
		for i := 0; i < len(p); i += k {
			u.Write(p[i:min(i+k, len(p))])
		}
		require.Equal(t, utf8.Valid(p), u.valid(), "%q in pieces of %d", p, k)
	})
}

// BenchmarkNewBody is what Enqueue does with a body in memory: read once,
// checked, its size as sent counted, written to a store (here discarded).
func BenchmarkNewBody(b *testing.B) {
	msg := bytes.Repeat([]byte(strings.Repeat("x", 76)+"\r\n"), 1024/78)
	rules := (&Options{}).bodyRules(nil)
	b.ReportAllocs()
	b.SetBytes(int64(len(msg)))
	for b.Loop() {
		if _, err := newBody(io.Discard, bytes.NewReader(msg), rules); err != nil {
			b.Fatal(err)
		}
	}
}
