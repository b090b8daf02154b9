package relaytest

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/coder/websocket"
)

// FaultKind says what a Fault does.
type FaultKind int

const (
	// RejectAuth answers AUTHENTICATE with {"success":false,"error":...},
	// whatever the key, then closes with 4003.
	RejectAuth FaultKind = iota + 1
	// IgnoreAuth never answers AUTHENTICATE. The client's own auth timeout
	// fires; the relay's AuthTimeout (close 4001) still applies.
	IgnoreAuth
	// DropAfterAuthenticate closes the TCP connection abruptly (no close
	// frame) right after reading AUTHENTICATE, before answering it.
	DropAfterAuthenticate
	// FailChannel answers SMTP_CHANNEL_OPEN with SMTP_CHANNEL_ERROR and
	// does not dial the upstream.
	FailChannel
	// IgnoreChannel never answers SMTP_CHANNEL_OPEN. No channel is open
	// afterwards: the client may send SMTP_CHANNEL_OPEN again.
	IgnoreChannel
	// DropAfterRcpt forwards a RCPT command (matching Recipient, if set)
	// upstream, then closes the WebSocket abruptly before its reply comes
	// back.
	DropAfterRcpt
	// DropAfterFinalDot forwards the end of data (the final "." of DATA, or
	// the last byte of a BDAT ... LAST chunk) upstream, waits for the
	// upstream's reply, and closes the WebSocket abruptly instead of
	// forwarding it. The upstream has the mail; the client cannot know.
	DropAfterFinalDot
	// DropAfterBytes closes the WebSocket abruptly once Bytes bytes of SMTP
	// data have passed in one direction of a channel (FromServer false:
	// client to upstream; true: upstream to client). The frame that crosses
	// the count is forwarded only up to the count. The fault is taken by the
	// next channel that opens and counts over that channel.
	DropAfterBytes
	// ReplaceReply answers the matching command with Reply instead of the
	// upstream's reply.
	//
	// For a command other than ".", the command is not forwarded: the
	// upstream never sees it (a RCPT the client was told was rejected is
	// never delivered to). A BDAT command that is replaced has its chunk
	// swallowed too. A reply with code 421 is followed by the relay closing
	// the upstream connection and sending SMTP_CHANNEL_CLOSED, as a real
	// server closes after 421; nothing the client sent after the command
	// reaches the upstream, as a real server processes nothing after 421. The reply must be a 2xx, 4xx or 5xx: a 3xx
	// (334 to AUTH, 354 to DATA) would invite bytes the upstream does not
	// expect.
	//
	// For "." (the end of data, DATA or BDAT ... LAST) the data is
	// forwarded and the upstream's reply is replaced in the stream. With the
	// in-process upstream the mailbox follows what the client is told: a
	// 4xx or 5xx Reply withdraws the message the upstream had stored for
	// its 250 (Options.OnMessage has seen it by then), and a refusal by the
	// upstream is never turned into a 2xx. With an external upstream
	// (Options.UpstreamAddr) the upstream may have the mail whatever the
	// client was told.
	ReplaceReply
	// StallReply swallows the matching command: it is neither forwarded nor
	// answered, and neither is anything the client sends after it on that
	// channel (a hung server). For "." the body is forwarded but its final
	// "." line (for BDAT, the last byte of the chunk) is withheld.
	StallReply
	// CloseWebSocket closes the WebSocket cleanly with status Code (zero:
	// 1001) when the matching command arrives, instead of forwarding it.
	CloseWebSocket
)

var faultNames = [...]string{
	RejectAuth:            "RejectAuth",
	IgnoreAuth:            "IgnoreAuth",
	DropAfterAuthenticate: "DropAfterAuthenticate",
	FailChannel:           "FailChannel",
	IgnoreChannel:         "IgnoreChannel",
	DropAfterRcpt:         "DropAfterRcpt",
	DropAfterFinalDot:     "DropAfterFinalDot",
	DropAfterBytes:        "DropAfterBytes",
	ReplaceReply:          "ReplaceReply",
	StallReply:            "StallReply",
	CloseWebSocket:        "CloseWebSocket",
}

func (k FaultKind) String() string {
	if k > 0 && int(k) < len(faultNames) {
		return faultNames[k]
	}
	return "FaultKind(" + strconv.Itoa(int(k)) + ")"
}

// Fault is a misbehaviour of the relay, armed with Server.Inject.
//
// Faults are consumed in the order they were injected: at each point where
// a fault may fire (AUTHENTICATE, SMTP_CHANNEL_OPEN, an SMTP command, the
// end of data), the first armed fault that matches fires, and at most one
// fires at a time.
type Fault struct {
	Kind FaultKind
	// Command is the SMTP verb to match for ReplaceReply, StallReply and
	// CloseWebSocket, case-insensitive: "EHLO", "AUTH", "MAIL", "RCPT",
	// "DATA", "BDAT", "RSET", "NOOP", "QUIT", ..., or "." for the end of
	// data. "" matches any command (but not the end of data).
	Command string
	// Recipient restricts a match to RCPT commands whose address (inside
	// <>) equals it, case-insensitive. "" matches any.
	Recipient string
	// Reply is the ReplaceReply answer without the final CRLF, with a 2xx,
	// 4xx or 5xx code. It may span
	// several lines separated by "\r\n"; every line starts with the same
	// three-digit code, e.g. "550 5.1.1 <bob@example.com>: no such user".
	// The relay sets the continuation marks ("550-" on all lines but the
	// last).
	Reply string
	// Bytes is the DropAfterBytes count.
	Bytes int64
	// FromServer is the DropAfterBytes direction: false counts bytes from
	// the client to the upstream, true from the upstream to the client.
	FromServer bool
	// Code is the CloseWebSocket close status (e.g. 1001, 1011, 4003); zero
	// means 1001.
	Code websocket.StatusCode
	// Error is the error text of RejectAuth and FailChannel; "" gives a
	// sensible default.
	Error string
	// Times is how many times the fault fires before it is used up: 0 means
	// once, -1 means forever.
	Times int
}

type armedFault struct {
	f    Fault
	left int // -1: forever
}

// Inject arms f. It panics when f is malformed (an unknown Kind, a
// ReplaceReply without a well-formed Reply, a negative Bytes), as a test
// helper does with a programming error.
func (s *Server) Inject(f Fault) {
	if _, ok := faultKinds[f.Kind]; !ok {
		panic(fmt.Sprintf("relaytest: Inject: unknown fault kind %v", f.Kind))
	}
	if f.Kind == ReplaceReply {
		if _, _, err := formatReply(f.Reply); err != nil {
			panic("relaytest: Inject: ReplaceReply: " + err.Error())
		}
	}
	if f.Bytes < 0 {
		panic("relaytest: Inject: negative Bytes")
	}
	left := f.Times
	switch {
	case left == 0:
		left = 1
	case left < 0:
		left = -1
	}
	s.mu.Lock()
	s.faults = append(s.faults, &armedFault{f: f, left: left})
	s.mu.Unlock()
}

var faultKinds = map[FaultKind]struct{}{
	RejectAuth: {}, IgnoreAuth: {}, DropAfterAuthenticate: {}, FailChannel: {},
	IgnoreChannel: {}, DropAfterRcpt: {}, DropAfterFinalDot: {}, DropAfterBytes: {},
	ReplaceReply: {}, StallReply: {}, CloseWebSocket: {},
}

// ClearFaults disarms every fault.
func (s *Server) ClearFaults() {
	s.mu.Lock()
	s.faults = nil
	s.mu.Unlock()
}

// Faults returns the faults still armed, in order, with Times set to how
// many times each will still fire (-1: forever). A test can check with it
// that a fault it injected did fire.
func (s *Server) Faults() []Fault {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]Fault, 0, len(s.faults))
	for _, a := range s.faults {
		f := a.f
		f.Times = a.left
		out = append(out, f)
	}
	return out
}

// takeFault fires the first armed fault for which match is true.
func (s *Server) takeFault(match func(*Fault) bool) (Fault, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for i, a := range s.faults {
		if !match(&a.f) {
			continue
		}
		if a.left > 0 {
			a.left--
			if a.left == 0 {
				s.faults = append(s.faults[:i:i], s.faults[i+1:]...)
			}
		}
		return a.f, true
	}
	return Fault{}, false
}

func kindIs(kinds ...FaultKind) func(*Fault) bool {
	return func(f *Fault) bool {
		for _, k := range kinds {
			if f.Kind == k {
				return true
			}
		}
		return false
	}
}

// matchCommand reports whether f fires at a command line with this verb
// (upper case) and, for RCPT, recipient.
func (f *Fault) matchCommand(verb, rcpt string) bool {
	switch f.Kind {
	case DropAfterRcpt:
		return verb == "RCPT" && f.matchRecipient(verb, rcpt)
	case ReplaceReply, StallReply, CloseWebSocket:
		if f.Command == "." || (f.Command != "" && !strings.EqualFold(f.Command, verb)) {
			return false
		}
		return f.matchRecipient(verb, rcpt)
	}
	return false
}

func (f *Fault) matchRecipient(verb, rcpt string) bool {
	return f.Recipient == "" || (verb == "RCPT" && strings.EqualFold(f.Recipient, rcpt))
}

// matchEndOfData reports whether f fires at the end of data.
func (f *Fault) matchEndOfData() bool {
	switch f.Kind {
	case DropAfterFinalDot:
		return true
	case ReplaceReply, StallReply, CloseWebSocket:
		return f.Command == "."
	}
	return false
}

// formatReply checks an injected reply and returns it as it goes on the
// wire (continuation marks set, CRLF after every line) with its code.
func formatReply(reply string) ([]byte, int, error) {
	reply = strings.TrimSuffix(strings.ReplaceAll(reply, "\r\n", "\n"), "\n")
	lines := strings.Split(reply, "\n")
	code := -1
	var b strings.Builder
	for i, l := range lines {
		if len(l) < 3 || !isDigits(l[:3]) || (len(l) > 3 && l[3] != ' ' && l[3] != '-') {
			return nil, 0, fmt.Errorf("reply line %q does not start with a three-digit code", l)
		}
		if strings.Contains(l, "\r") {
			return nil, 0, fmt.Errorf("reply line %q holds a bare CR", l)
		}
		c, _ := strconv.Atoi(l[:3])
		if code >= 0 && c != code {
			return nil, 0, fmt.Errorf("reply lines carry different codes %d and %d", code, c)
		}
		code = c
		sep := " "
		if i < len(lines)-1 {
			sep = "-"
		}
		text := ""
		if len(l) > 4 {
			text = l[4:]
		}
		b.WriteString(l[:3] + sep + text + "\r\n")
	}
	if c := code / 100; c != 2 && c != 4 && c != 5 {
		// A 1xx or 3xx would make the client send what the upstream, which
		// never saw the command, does not expect.
		return nil, 0, fmt.Errorf("reply code %d is not a 2xx, 4xx or 5xx code", code)
	}
	return []byte(b.String()), code, nil
}

func isDigits(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return s != ""
}
