// Package wire is the mxrelay WebSocket protocol, version 1 (docs/protocol.md):
// message types, the subprotocol, close codes, read limits, and the codec
// for control messages. It knows nothing about emails or SMTP sessions and
// is shared by the client and by relaytest.
package wire

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"unicode/utf8"

	"github.com/coder/websocket"
)

// Subprotocol is the WebSocket subprotocol the client offers. A relay may
// select it or none.
const Subprotocol = "mxrelay.v1"

// DefaultPath is the conventional URL path of a relay.
const DefaultPath = "/smtp"

// Read limits of docs/protocol.md §4.
const (
	// MaxControl is the largest control message (a text frame whose type is
	// not one of the SMTP data types).
	MaxControl = 64 << 10
	// MaxData is the largest data frame: a binary frame, or a text frame
	// carrying SMTP_TO_SERVER / SMTP_FROM_SERVER.
	MaxData = 1 << 20
	// MaxDataChunk is how many raw SMTP bytes a sender puts in one JSON data
	// message, so that even with the worst JSON escaping (\u00XX, six bytes
	// for one) the frame stays under MaxData.
	MaxDataChunk = (MaxData - 256) / 6
	// ReadLimit is what a receiver sets on its WebSocket: the largest frame
	// it will read at all. Frames of control types are checked against
	// MaxControl after decoding.
	ReadLimit = MaxData
)

// Message types.
const (
	TypeAuthenticate         = "AUTHENTICATE"
	TypeAuthenticateResponse = "AUTHENTICATE_RESPONSE"
	TypeChannelOpen          = "SMTP_CHANNEL_OPEN"
	TypeChannelReady         = "SMTP_CHANNEL_READY"
	TypeChannelError         = "SMTP_CHANNEL_ERROR"
	TypeChannelClose         = "SMTP_CHANNEL_CLOSE"
	TypeChannelClosed        = "SMTP_CHANNEL_CLOSED"
	TypeToServer             = "SMTP_TO_SERVER"
	TypeFromServer           = "SMTP_FROM_SERVER"
)

// Close codes of docs/protocol.md §9 that are specific to the protocol.
const (
	StatusAuthTimeout      websocket.StatusCode = 4001
	StatusHeartbeatTimeout websocket.StatusCode = 4002
	StatusAuthFailed       websocket.StatusCode = 4003
)

// ErrProtocol is wrapped by every decoding error: the peer broke
// docs/protocol.md and the connection should be closed with status 1002.
var ErrProtocol = errors.New("protocol error")

// ErrTooBig is wrapped (with ErrProtocol) by the error of a control message
// over MaxControl: the receiver closes with status 1009.
var ErrTooBig = errors.New("message too big")

// ErrInvalidUTF8 is returned when SMTP bytes that are not valid UTF-8 would
// have to travel in a JSON string.
var ErrInvalidUTF8 = errors.New("bytes are not valid UTF-8 and cannot travel in a JSON data message")

// Message is one control message: a JSON object with a string type and an
// optional data member.
type Message struct {
	Type string          `json:"type"`
	Data json.RawMessage `json:"data,omitempty"`

	text []byte // a data message's bytes, when Decode took the fast path
}

// IsData reports whether t is one of the two SMTP data types.
func IsData(t string) bool { return t == TypeToServer || t == TypeFromServer }

// Decode parses one text frame. It fails with an error wrapping ErrProtocol
// when the frame is not a JSON object with a string type, when a control
// message is larger than MaxControl, or when a data message does not carry
// a JSON string.
func Decode(frame []byte) (Message, error) {
	if typ, raw, text, ok := decodeDataFast(frame); ok {
		return Message{Type: typ, Data: raw, text: text}, nil
	}
	return decodeSlow(frame)
}

// decodeDataFast decodes the data messages this package encodes,
// {"type":"SMTP_...","data":"..."} with no space and no \u escape, which
// is what a JSON channel carries most. Anything else, or anything it is
// unsure of, is left to encoding/json (ok false); FuzzDecodeFast checks
// that both agree on what it accepts.
func decodeDataFast(frame []byte) (typ string, raw, text []byte, ok bool) {
	const head, mid = `{"type":"`, `","data":"`
	if !bytes.HasPrefix(frame, []byte(head)) || !bytes.HasSuffix(frame, []byte(`"}`)) {
		return "", nil, nil, false
	}
	rest := frame[len(head):]
	switch {
	case bytes.HasPrefix(rest, []byte(TypeToServer+mid)):
		typ = TypeToServer
	case bytes.HasPrefix(rest, []byte(TypeFromServer+mid)):
		typ = TypeFromServer
	default:
		return "", nil, nil, false
	}
	if len(rest) < len(typ)+len(mid)+2 {
		return "", nil, nil, false // the closing quote would be the opening one
	}
	str := rest[len(typ)+len(mid) : len(rest)-2] // between the quotes
	if !utf8.Valid(str) {
		return "", nil, nil, false // encoding/json would replace, and say so its way
	}
	text = make([]byte, 0, len(str))
	for i := 0; i < len(str); i++ {
		c := str[i]
		switch {
		case c == '"' || c < 0x20:
			return "", nil, nil, false // the string ends early, or is not JSON
		case c != '\\':
			text = append(text, c)
			continue
		}
		if i+1 == len(str) {
			return "", nil, nil, false
		}
		i++
		switch str[i] {
		case '"', '\\', '/':
			text = append(text, str[i])
		case 'n':
			text = append(text, '\n')
		case 'r':
			text = append(text, '\r')
		case 't':
			text = append(text, '\t')
		case 'b':
			text = append(text, '\b')
		case 'f':
			text = append(text, '\f')
		default:
			return "", nil, nil, false // \u and anything else: encoding/json
		}
	}
	raw = frame[len(head)+len(typ)+len(mid)-1 : len(frame)-1]
	return typ, raw, text, true
}

// uniqueKeys refuses an object (already known to be valid JSON) that names
// a key twice at its top level: encoding/json keeps the last, another
// reader may keep the first, and a message must mean one thing.
func uniqueKeys(frame []byte) error {
	dec := json.NewDecoder(bytes.NewReader(frame))
	if _, err := dec.Token(); err != nil { // {
		return fmt.Errorf("%w: %v", ErrProtocol, err)
	}
	seen := map[string]bool{}
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return fmt.Errorf("%w: %v", ErrProtocol, err)
		}
		key, _ := tok.(string)
		if seen[key] {
			return fmt.Errorf("%w: key %q appears twice", ErrProtocol, key)
		}
		seen[key] = true
		var skip json.RawMessage
		if err := dec.Decode(&skip); err != nil {
			return fmt.Errorf("%w: %v", ErrProtocol, err)
		}
	}
	return nil
}

func decodeSlow(frame []byte) (Message, error) {
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(frame, &raw); err != nil {
		return Message{}, fmt.Errorf("%w: text frame is not a JSON object: %v", ErrProtocol, err)
	}
	if err := uniqueKeys(frame); err != nil {
		return Message{}, err
	}
	rt, ok := raw["type"]
	if !ok {
		return Message{}, fmt.Errorf("%w: message has no type", ErrProtocol)
	}
	var m Message
	// null would unmarshal to "" without an error: a type that is not a
	// string, as a number is.
	if err := json.Unmarshal(rt, &m.Type); err != nil || bytes.Equal(bytes.TrimSpace(rt), []byte("null")) {
		return Message{}, fmt.Errorf("%w: message type is not a string", ErrProtocol)
	}
	if d, ok := raw["data"]; ok && !bytes.Equal(bytes.TrimSpace(d), []byte("null")) {
		m.Data = d
	}
	if !IsData(m.Type) && len(frame) > MaxControl {
		return Message{}, fmt.Errorf("%w: %w: %s message of %d bytes exceeds %d", ErrProtocol, ErrTooBig, m.Type, len(frame), MaxControl)
	}
	return m, nil
}

// Encode marshals a control message with the given data (nil for none).
func Encode(typ string, data any) ([]byte, error) {
	m := Message{Type: typ}
	if data != nil {
		b, err := json.Marshal(data)
		if err != nil {
			return nil, err
		}
		m.Data = b
	}
	return json.Marshal(m)
}

// MustEncode is Encode for data whose encoding cannot fail (the protocol's
// own structs).
func MustEncode(typ string, data any) []byte {
	b, err := Encode(typ, data)
	if err != nil {
		panic("wire: " + err.Error())
	}
	return b
}

// EncodeData builds a SMTP_TO_SERVER or SMTP_FROM_SERVER message carrying p.
// It fails with ErrInvalidUTF8 when p is not valid UTF-8: silent replacement
// would change the mail.
func EncodeData(typ string, p []byte) ([]byte, error) {
	if !utf8.Valid(p) {
		return nil, ErrInvalidUTF8
	}
	// Built by hand: the hot path of a JSON channel, where encoding/json
	// marshalled the data, then the message, then compacted the data again.
	b := make([]byte, 0, len(p)+len(p)/16+len(typ)+24)
	b = append(b, `{"type":`...)
	b = appendJSONString(b, []byte(typ))
	b = append(b, `,"data":`...)
	b = appendJSONString(b, p)
	return append(b, '}'), nil
}

// appendJSONString appends s, valid UTF-8, as a JSON string: quote,
// backslash and control characters escaped (RFC 8259 §7), and U+2028 and
// U+2029 too, as encoding/json does.
func appendJSONString(b, s []byte) []byte {
	const hex = "0123456789abcdef"
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c >= 0x20 && c != '"' && c != '\\' && c < 0x80 {
			i++
			continue
		}
		if c >= 0x80 {
			r, size := utf8.DecodeRune(s[i:])
			if r != '\u2028' && r != '\u2029' {
				i += size
				continue
			}
			b = append(b, s[start:i]...)
			b = append(b, `\u202`...)
			b = append(b, hex[r&0xf])
			i += size
			start = i
			continue
		}
		b = append(b, s[start:i]...)
		switch c {
		case '"', '\\':
			b = append(b, '\\', c)
		case '\n':
			b = append(b, '\\', 'n')
		case '\r':
			b = append(b, '\\', 'r')
		case '\t':
			b = append(b, '\\', 't')
		default:
			b = append(b, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xf])
		}
		i++
		start = i
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}

// DecodeData returns the SMTP bytes of a data message. Data that
// encoding/json would take with a silent replacement by U+FFFD (bytes that
// are not UTF-8, an escaped lone surrogate such as "\ud800") is refused
// with ErrProtocol: a replaced byte is data loss (the protocol's section 4).
func DecodeData(m Message) ([]byte, error) {
	if m.text != nil {
		return m.text, nil
	}
	var s string
	if err := json.Unmarshal(m.Data, &s); err != nil || m.Data == nil {
		return nil, fmt.Errorf("%w: %s data is not a JSON string", ErrProtocol, m.Type)
	}
	if err := exactString(m.Data); err != nil {
		return nil, fmt.Errorf("%w: %s data %v", ErrProtocol, m.Type, err)
	}
	return []byte(s), nil
}

// exactString reports whether raw, a valid JSON string, decodes without a
// replacement: valid UTF-8, and every \u escape of a surrogate one of a
// high-low pair.
func exactString(raw []byte) error {
	if !utf8.Valid(raw) {
		return errors.New("is not valid UTF-8")
	}
	low := func(r rune) bool { return r >= 0xdc00 && r <= 0xdfff }
	for i := 0; i < len(raw); i++ {
		if raw[i] != '\\' {
			continue
		}
		i++ // the escaped character; valid JSON has one
		if raw[i] != 'u' {
			continue
		}
		r := hex4(raw[i+1:])
		i += 4
		switch {
		case low(r):
			return errors.New("holds a lone low surrogate escape")
		case r >= 0xd800 && r <= 0xdbff:
			if i+6 >= len(raw) || raw[i+1] != '\\' || raw[i+2] != 'u' || !low(hex4(raw[i+3:])) {
				return errors.New("holds a lone high surrogate escape")
			}
			i += 6
		}
	}
	return nil
}

// hex4 reads the four hexadecimal digits at the start of b (valid JSON
// after \u has them).
func hex4(b []byte) rune {
	var r rune
	for _, c := range b[:4] {
		r <<= 4
		switch {
		case c >= '0' && c <= '9':
			r |= rune(c - '0')
		case c >= 'a' && c <= 'f':
			r |= rune(c - 'a' + 10)
		default:
			r |= rune(c - 'A' + 10)
		}
	}
	return r
}

// Unmarshal decodes the data of a control message into v. Absent data
// leaves v as it is.
func (m Message) Unmarshal(v any) error {
	if m.Data == nil {
		return nil
	}
	if err := json.Unmarshal(m.Data, v); err != nil {
		return fmt.Errorf("%w: %s data: %v", ErrProtocol, m.Type, err)
	}
	return nil
}

// Authenticate is the data of AUTHENTICATE.
type Authenticate struct {
	APIKey string `json:"apiKey"`
}

// AuthenticateResponse is the data of AUTHENTICATE_RESPONSE.
type AuthenticateResponse struct {
	Success bool   `json:"success"`
	Error   string `json:"error,omitempty"`
}

// ChannelOpen is the data of SMTP_CHANNEL_OPEN and SMTP_CHANNEL_READY.
type ChannelOpen struct {
	Binary bool `json:"binary,omitempty"`
}

// ChannelError is the data of SMTP_CHANNEL_ERROR.
type ChannelError struct {
	Error string `json:"error"`
}

// ChannelClosed is the data of SMTP_CHANNEL_CLOSED.
type ChannelClosed struct {
	Reason string `json:"reason,omitempty"`
}

// Retry says what a client does after the WebSocket closed with a status.
type Retry int

const (
	// RetryIfWork: reconnect only if work is queued (1000).
	RetryIfWork Retry = iota
	// RetryBackoff: reconnect with backoff.
	RetryBackoff
	// RetryNever: permanent, fail waiting emails (4003).
	RetryNever
)

// RetryFor maps a close status (-1 when the connection ended without a close
// frame) to the reaction of docs/protocol.md §9.
func RetryFor(code websocket.StatusCode) Retry {
	switch code {
	case websocket.StatusNormalClosure:
		return RetryIfWork
	case StatusAuthFailed:
		return RetryNever
	default:
		return RetryBackoff
	}
}

// MaskKey returns the form in which an API key may appear in a log line:
// "****" and at most its last four characters, and only when the key is long
// enough that they give nothing away.
func MaskKey(key string) string {
	if len(key) < 12 {
		return "****"
	}
	return "****" + key[len(key)-4:]
}

// RuneCut returns len(b), or the start of an incomplete UTF-8 sequence at
// the end of b: where to cut b so that a character split between two
// writes or reads is held back whole.
func RuneCut(b []byte) int {
	for i := len(b) - 1; i >= 0 && i >= len(b)-utf8.UTFMax; i-- {
		if utf8.RuneStart(b[i]) {
			if !utf8.FullRune(b[i:]) {
				return i
			}
			break
		}
	}
	return len(b)
}
