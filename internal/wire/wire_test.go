package wire

import (
	"encoding/json"
	"errors"
	"strconv"
	"strings"
	"testing"
	"unicode/utf16"
	"unicode/utf8"

	"github.com/coder/websocket"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mxrelay/mxrelay/internal/alloctest"
)

func TestDecode(t *testing.T) {
	for _, tc := range []struct {
		name  string
		frame string
		typ   string
		bad   bool
	}{
		{name: "control", frame: `{"type":"SMTP_CHANNEL_READY","data":{"binary":true}}`, typ: TypeChannelReady},
		{name: "no data", frame: `{"type":"SMTP_CHANNEL_CLOSE"}`, typ: TypeChannelClose},
		{name: "null data", frame: `{"type":"SMTP_CHANNEL_CLOSED","data":null}`, typ: TypeChannelClosed},
		{name: "unknown fields", frame: `{"type":"X","data":1,"extra":[1,2]}`, typ: "X"},
		{name: "not JSON", frame: `hello`, bad: true},
		{name: "array", frame: `[1,2]`, bad: true},
		{name: "no type", frame: `{"data":{}}`, bad: true},
		{name: "type not string", frame: `{"type":1}`, bad: true},
		{name: "type null", frame: `{"type":null}`, bad: true},
		{name: "control too big", frame: `{"type":"X","data":"` + strings.Repeat("a", MaxControl) + `"}`, bad: true},
		{name: "duplicate type", frame: `{"type":"SMTP_CHANNEL_CLOSE","type":"AUTHENTICATE"}`, bad: true},
		{name: "duplicate data", frame: `{"type":"SMTP_TO_SERVER","data":"RCPT TO:<a@b>\r\n","data":"RCPT TO:<evil@b>\r\n"}`, bad: true},
		{name: "duplicates below the top level are data's business", frame: `{"type":"X","data":{"a":1,"a":2}}`, typ: "X"},
		{name: "data may be big", frame: `{"type":"SMTP_FROM_SERVER","data":"` + strings.Repeat("a", MaxControl) + `"}`, typ: TypeFromServer},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m, err := Decode([]byte(tc.frame))
			if tc.bad {
				require.True(t, errors.Is(err, ErrProtocol), "%v", err)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tc.typ, m.Type)
		})
	}
}

func TestDataRoundTrip(t *testing.T) {
	p := []byte("250-ok \"quoted\" \\ é\r\n250 done\r\n\x00\x1f")
	frame, err := EncodeData(TypeToServer, p)
	require.NoError(t, err)
	m, err := Decode(frame)
	require.NoError(t, err)
	got, err := DecodeData(m)
	require.NoError(t, err)
	assert.Equal(t, p, got)

	_, err = EncodeData(TypeToServer, []byte{0xff})
	require.ErrorIs(t, err, ErrInvalidUTF8)
	_, err = DecodeData(Message{Type: TypeFromServer, Data: []byte(`{"x":1}`)})
	require.ErrorIs(t, err, ErrProtocol)
	_, err = DecodeData(Message{Type: TypeFromServer})
	require.ErrorIs(t, err, ErrProtocol)
}

func TestWorstCaseChunkFitsAFrame(t *testing.T) {
	p := []byte(strings.Repeat("\x01", MaxDataChunk))
	frame, err := EncodeData(TypeToServer, p)
	require.NoError(t, err)
	assert.LessOrEqual(t, len(frame), MaxData)
}

func TestRetryFor(t *testing.T) {
	assert.Equal(t, RetryIfWork, RetryFor(websocket.StatusNormalClosure))
	assert.Equal(t, RetryNever, RetryFor(StatusAuthFailed))
	for _, c := range []websocket.StatusCode{1001, 1002, 1003, 1007, 1008, 1009, 1011, 1012, 1013, 1014, 4001, 4002, -1} {
		assert.Equal(t, RetryBackoff, RetryFor(c), "%d", c)
	}
}

func TestMaskKey(t *testing.T) {
	assert.Equal(t, "****", MaskKey("short"))
	assert.Equal(t, "****wxyz", MaskKey("abcdefghijklmnopqrstuvwxyz"))
}

// The hand-built data message decodes, with encoding/json, to the same
// type and bytes, and is what encoding/json would accept as valid.
func FuzzEncodeData(f *testing.F) {
	f.Add([]byte("MAIL FROM:<a@example.com>\r\n"))
	f.Add([]byte("quote \" backslash \\ tab \t nul \x00 del \x7f é \u2028 \u2029 end"))
	f.Add([]byte(""))
	f.Fuzz(func(t *testing.T, p []byte) {
		b, err := EncodeData(TypeToServer, p)
		if !utf8.Valid(p) {
			require.ErrorIs(t, err, ErrInvalidUTF8)
			return
		}
		require.NoError(t, err)
		require.True(t, json.Valid(b), "%q", b)
		m, err := Decode(b)
		require.NoError(t, err)
		require.Equal(t, TypeToServer, m.Type)
		got, err := DecodeData(m)
		require.NoError(t, err)
		require.Equal(t, string(p), string(got))
		want, err := Encode(TypeToServer, string(p))
		require.NoError(t, err)
		require.JSONEq(t, string(want), string(b))
	})
}

// Decode's fast path agrees with encoding/json on every frame it takes.
func FuzzDecodeFast(f *testing.F) {
	for _, s := range []string{
		`{"type":"SMTP_TO_SERVER","data":"MAIL FROM:<a@b>\r\n"}`,
		`{"type":"SMTP_FROM_SERVER","data":"250 ok\r\n\"q\" \\ \/ \t \b \f"}`,
		`{"type":"SMTP_TO_SERVER","data":"\u00e9"}`,
		`{"type":"SMTP_TO_SERVER","data":"a","data":"b"}`,
		`{"type":"SMTP_TO_SERVER","data":"x"} `,
		`{"type":"SMTP_TO_SERVER","data":"é"}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, frame []byte) {
		typ, _, text, ok := decodeDataFast(frame)
		if !ok {
			return
		}
		m, err := decodeSlow(frame)
		require.NoError(t, err, "%q", frame)
		require.Equal(t, m.Type, typ)
		want, err := DecodeData(m)
		require.NoError(t, err)
		require.Equal(t, string(want), string(text))
	})
}

// FuzzDecode: any frame either fails with ErrProtocol or gives a message
// whose type is the one encoding/json reads in the frame, which is valid
// JSON; a control message is never over MaxControl and encodes back to the
// same message; a data message yields encoding/json's bytes or
// ErrProtocol. Decoding allocates in proportion to the frame.
func FuzzDecode(f *testing.F) {
	f.Add([]byte(`{"type":"SMTP_CHANNEL_READY","data":{"binary":true}}`))
	f.Add([]byte(`{"type":"SMTP_TO_SERVER","data":"a\r\n"}`))
	f.Add([]byte(`{"type":"AUTHENTICATE_RESPONSE","data":{"success":false},"type":"X"}`))
	f.Add([]byte(`{"data":1}`))
	f.Add([]byte(`[]`))
	f.Fuzz(func(t *testing.T, frame []byte) {
		var m Message
		var err error
		allocated := alloctest.Bytes(func() { m, err = Decode(frame) })
		require.LessOrEqual(t, allocated, uint64(16*len(frame)+1<<20), "allocation in proportion to the frame")
		if err != nil {
			require.ErrorIs(t, err, ErrProtocol)
			return
		}
		require.True(t, json.Valid(frame), "%q", frame)
		var generic map[string]any
		require.NoError(t, json.Unmarshal(frame, &generic))
		require.Equal(t, generic["type"], m.Type)

		if !IsData(m.Type) {
			require.LessOrEqual(t, len(frame), MaxControl)
			var data any
			if m.Data != nil {
				data = m.Data
			}
			b, err := Encode(m.Type, data)
			require.NoError(t, err)
			back, err := Decode(b)
			require.NoError(t, err)
			require.Equal(t, m.Type, back.Type)
			if m.Data == nil {
				require.Nil(t, back.Data)
			} else {
				require.JSONEq(t, string(m.Data), string(back.Data))
			}
			return
		}
		p, err := DecodeData(m)
		if err != nil {
			require.ErrorIs(t, err, ErrProtocol)
			return
		}
		str, ok := generic["data"].(string)
		require.True(t, ok, "data is a JSON string")
		require.Equal(t, str, string(p), "what encoding/json reads")
	})
}

// encoding/json replaces what a JSON string cannot mean exactly with
// U+FFFD and says nothing: DecodeData refuses it instead (the protocol's
// "silent replacement of bytes is data loss"), and keeps every exact
// escape, surrogate pairs included.
func TestDecodeDataRefusesReplacement(t *testing.T) {
	for _, tc := range []struct {
		data string
		want string // "" refused
	}{
		{`"250 ok\r\n"`, "250 ok\r\n"},
		{`"\ud83d\ude00 \u00e9 \\ud800"`, "\U0001F600 é \\ud800"},
		{`"a\ud800"`, ""},
		{`"a\ud800b"`, ""},
		{`"\ud800\u0041"`, ""},
		{`"\ude00"`, ""},
		{`"x\uDBFF\uDFFFy"`, "x\U0010FFFFy"},
		{"\"\xff\"", ""},
		{"\"\xed\xa0\x80\"", ""}, // a surrogate in UTF-8: not UTF-8
	} {
		got, err := DecodeData(Message{Type: TypeFromServer, Data: json.RawMessage(tc.data)})
		if tc.want == "" {
			require.ErrorIs(t, err, ErrProtocol, "%s", tc.data)
			continue
		}
		require.NoError(t, err, "%s", tc.data)
		require.Equal(t, tc.want, string(got), "%s", tc.data)
	}
}

// exactJSONString decodes the JSON string literal s (quotes included, already
// known to be valid JSON) rune by rune, and reports false when a byte or
// an escape can only be taken with a replacement.
func exactJSONString(s string) (string, bool) {
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

// FuzzDecodeDataExact: a data message's string is decoded when, and only
// when, it means its bytes exactly, and then to those bytes. (Red team,
// round 7: DecodeData against exactJSONString, a decoder of JSON strings
// written apart from it, which says for each string whether it means its
// bytes exactly, valid UTF-8 and every surrogate escape one of a high-low
// pair, and what they are.)
func FuzzDecodeDataExact(f *testing.F) {
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
		want, exact := exactJSONString(s)
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
