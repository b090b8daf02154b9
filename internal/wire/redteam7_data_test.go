package wire

import (
	"strconv"
	"testing"
	"unicode/utf16"
	"unicode/utf8"

	"github.com/stretchr/testify/require"
)

// Red team, round 7: DecodeData against a decoder of JSON strings written
// apart from it, which says for each string whether it means its bytes
// exactly (valid UTF-8, every surrogate escape one of a high-low pair) and
// what they are.

// rt7Exact decodes the JSON string literal s (quotes included, already
// known to be valid JSON) rune by rune, and reports false when a byte or
// an escape can only be taken with a replacement.
func rt7Exact(s string) (string, bool) {
	if !utf8.ValidString(s) {
		return "", false
	}
	body := s[1 : len(s)-1]
	var out []rune
	for i := 0; i < len(body); {
		r, size := utf8.DecodeRuneInString(body[i:])
		if r != '\\' {
			out = append(out, r)
			i += size
			continue
		}
		esc := body[i+1]
		i += 2
		if esc != 'u' {
			out = append(out, map[byte]rune{'"': '"', '\\': '\\', '/': '/', 'b': '\b', 'f': '\f', 'n': '\n', 'r': '\r', 't': '\t'}[esc])
			continue
		}
		u, _ := strconv.ParseUint(body[i:i+4], 16, 16)
		i += 4
		r = rune(u)
		if !utf16.IsSurrogate(r) {
			out = append(out, r)
			continue
		}
		if i+6 > len(body) || body[i] != '\\' || body[i+1] != 'u' {
			return "", false
		}
		u2, _ := strconv.ParseUint(body[i+2:i+6], 16, 16)
		pair := utf16.DecodeRune(r, rune(u2))
		if pair == utf8.RuneError {
			return "", false // a low first, or a high with no low after it
		}
		out = append(out, pair)
		i += 6
	}
	return string(out), true
}

// FuzzRT7DecodeDataExact: a data message's string is decoded when, and
// only when, it means its bytes exactly, and then to those bytes.
func FuzzRT7DecodeDataExact(f *testing.F) {
	for _, s := range []string{
		`"\ud800"`, `"\udc00"`, `"a\ud800"`, `"\ud800a"`, `"\ud800\ud800\udc00"`,
		`"\udc00\ud800"`, `"\ud800\udc00"`, `"\uD83D\uDE00"`, `"\uDBFF\uDFFF"`,
		`"\\ud800"`, `"\\\ud800"`, `"\\\\ud800"`, `"\ud800\\udc00"`, `"\ud800\u0041"`,
		`"\ud800\n"`, `"x\ud800\"`, `"\u0000\u001f\u007f"`, `"\u00e9é\u2028"`,
		`"250 ok\r\n"`, `""`, "\"\xff\"", "\"\xed\xa0\x80\"", "\"\xf0\x9f\x98\x80\"",
		`"\ud83d\ude00\ud83d"`, `"\ud83d\ude00\ude00"`, `"\/\b\f\t"`,
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		frame := `{"type":"SMTP_FROM_SERVER","data":` + s + `}`
		m, err := Decode([]byte(frame))
		if err != nil || len(s) < 2 || s[0] != '"' {
			return // not a data message with a string: Decode's business
		}
		var str string
		if jsonErr := m.Unmarshal(&str); jsonErr != nil || string(m.Data) != s {
			return
		}
		want, exact := rt7Exact(s)
		got, err := DecodeData(m)
		if !exact {
			require.ErrorIs(t, err, ErrProtocol, "%q decoded to %q", s, got)
			return
		}
		require.NoError(t, err, "%q", s)
		require.Equal(t, want, string(got), "%q", s)
		require.Equal(t, str, string(got), "%q: what encoding/json reads", s)
	})
}
