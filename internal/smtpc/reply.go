package smtpc

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/emersion/go-smtp"
)

// Limits on what a server may send in one reply. RFC 5321 §4.5.3.1.5 allows
// 512 octets per reply line; we allow more for servers that exceed it, and
// bound the lines so that an endless "250-" cannot grow memory without end.
const (
	MaxReplyLine  = 4096
	MaxReplyLines = 256
)

// ErrProtocol marks a reply that breaks SMTP's grammar or is not one the
// command allows (a 3xx where none is expected, a reply with no command).
var ErrProtocol = errors.New("smtp protocol error")

// Reply is one SMTP reply: its code, enhanced status code (zero when the
// server sent none) and text, lines joined with "\n".
type Reply struct {
	Code     int
	Enhanced smtp.EnhancedCode
	Message  string
	// BadEnhanced is set when the text starts with an RFC 3463 status code
	// whose class is not the reply's ("250 5.0.0"): Enhanced is then zero
	// and the code stays in Message. RFC 3463 §2 requires the two to agree;
	// a reply that contradicts itself does not say what happened.
	BadEnhanced bool
}

// AddressStatus reports an RFC 3463 address status (X.1.X): what MAIL
// and RCPT are answered with, not RSET, NOOP or an end of data.
func (r Reply) AddressStatus() bool { return r.Enhanced[0] != 0 && r.Enhanced[1] == 1 }

// Err returns the reply as a *smtp.SMTPError.
func (r Reply) Err() *smtp.SMTPError {
	return &smtp.SMTPError{Code: r.Code, EnhancedCode: r.Enhanced, Message: r.Message}
}

func (r Reply) String() string { return fmt.Sprintf("%d %s", r.Code, r.Message) }

// replyReader reads replies from a bufio.Reader. A read that fails (a
// deadline, say) keeps what it had of the current line, so the next call
// goes on where it stopped.
type replyReader struct {
	br    *bufio.Reader
	line  []byte   // the current line so far
	lines []string // the reply's lines so far
	code  int
	// recent are the last lines read, each returned again, not copied
	// anew, when the same bytes come back: a server words most replies
	// the same way all session long ("250 2.1.5 Ok").
	recent [4]string
	used   [4]bool // the entry was returned again since it was last passed over
	next   int     // where the search for an entry to replace starts
}

func (rr *replyReader) readLine() (string, error) {
	for {
		frag, err := rr.br.ReadSlice('\n')
		if len(rr.line)+len(frag) > MaxReplyLine+2 {
			return "", fmt.Errorf("%w: reply line longer than %d octets", ErrProtocol, MaxReplyLine)
		}
		rr.line = append(rr.line, frag...)
		if err == bufio.ErrBufferFull {
			continue
		}
		if err != nil {
			return "", err
		}
		l := rr.line
		rr.line = rr.line[:0]
		l = bytes.TrimSuffix(bytes.TrimSuffix(l, []byte("\n")), []byte("\r"))
		return rr.intern(l), nil
	}
}

// intern returns l as a string: one of recent when it holds the same
// bytes, else a new one, remembered in place of an entry not returned
// again lately (the clock algorithm): a line that comes once (a queue id)
// does not push out those that come back.
func (rr *replyReader) intern(l []byte) string {
	for i, s := range rr.recent {
		if string(l) == s && len(s) > 0 {
			rr.used[i] = true
			return s
		}
	}
	for rr.used[rr.next] {
		rr.used[rr.next] = false
		rr.next = (rr.next + 1) % len(rr.recent)
	}
	s := string(l)
	rr.recent[rr.next] = s
	rr.next = (rr.next + 1) % len(rr.recent)
	return s
}

// read returns the next whole reply.
func (rr *replyReader) read() (Reply, error) {
	for {
		line, err := rr.readLine()
		if err != nil {
			return Reply{}, err
		}
		code, more, text, err := parseLine(line)
		if err != nil {
			rr.lines, rr.code = rr.lines[:0], 0
			return Reply{}, err
		}
		if len(rr.lines) > 0 && code != rr.code {
			return Reply{}, fmt.Errorf("%w: reply code %d in the middle of a %d reply", ErrProtocol, code, rr.code)
		}
		if len(rr.lines) >= MaxReplyLines {
			return Reply{}, fmt.Errorf("%w: reply of more than %d lines", ErrProtocol, MaxReplyLines)
		}
		rr.code = code
		rr.lines = append(rr.lines, text)
		if more {
			continue
		}
		r := Reply{Code: code}
		r.Enhanced, rr.lines[0], r.BadEnhanced = parseEnhanced(code, rr.lines[0])
		r.Message = strings.Join(rr.lines, "\n")
		rr.lines, rr.code = rr.lines[:0], 0
		return r, nil
	}
}

// parseLine splits "250-text" or "250 text" (or a bare "250").
func parseLine(line string) (code int, more bool, text string, err error) {
	if len(line) < 3 || len(line) > 3 && line[3] != ' ' && line[3] != '-' {
		return 0, false, "", fmt.Errorf("%w: malformed reply line %.40q", ErrProtocol, line)
	}
	for i := 0; i < 3; i++ {
		if line[i] < '0' || line[i] > '9' {
			return 0, false, "", fmt.Errorf("%w: malformed reply code %.40q", ErrProtocol, line)
		}
	}
	code, _ = strconv.Atoi(line[:3])
	if code < 200 || code > 599 {
		return 0, false, "", fmt.Errorf("%w: reply code %d out of range", ErrProtocol, code)
	}
	if len(line) == 3 {
		return code, false, "", nil
	}
	return code, line[3] == '-', line[4:], nil
}

// parseEnhanced takes an RFC 3463 status code ("2.1.0 ") off the front of
// text when its class matches the reply's; bad reports one whose class
// does not (left in the text).
func parseEnhanced(code int, text string) (ec smtp.EnhancedCode, rest string, bad bool) {
	head, rest, ok := strings.Cut(text, " ")
	if !ok {
		head, rest = text, ""
	}
	// head must be three numbers of one to three digits, joined by dots.
	for i := range ec {
		j := 0
		for j < len(head) && j <= 3 && '0' <= head[j] && head[j] <= '9' {
			j++
		}
		if j == 0 || j > 3 {
			return smtp.EnhancedCode{}, text, false
		}
		n, _ := strconv.Atoi(head[:j])
		ec[i] = n
		head = head[j:]
		switch {
		case i < 2 && strings.HasPrefix(head, "."):
			head = head[1:]
		case i < 2 || head != "":
			return smtp.EnhancedCode{}, text, false
		}
	}
	if ec[0] != 2 && ec[0] != 4 && ec[0] != 5 {
		return smtp.EnhancedCode{}, text, false // not a class of RFC 3463
	}
	if ec[0] != code/100 {
		return smtp.EnhancedCode{}, text, true
	}
	return ec, rest, false
}
