package mxrelay

import (
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/emersion/go-smtp"
)

// Priority orders the queue: CRITICAL before HIGH before NORMAL before LOW,
// first in first out within a level. The zero value is PriorityNormal.
type Priority int

// The priorities.
const (
	PriorityLow      Priority = -1
	PriorityNormal   Priority = 0
	PriorityHigh     Priority = 1
	PriorityCritical Priority = 2
)

const numPriorities = 4

func (p Priority) String() string {
	switch p {
	case PriorityLow:
		return "LOW"
	case PriorityNormal:
		return "NORMAL"
	case PriorityHigh:
		return "HIGH"
	case PriorityCritical:
		return "CRITICAL"
	}
	return fmt.Sprintf("Priority(%d)", int(p))
}

func (p Priority) valid() bool { return p >= PriorityLow && p <= PriorityCritical }

// Email is one message and its envelope. The library does not build
// messages: Body holds the RFC 5322 bytes (headers, blank line, body) that
// the caller composed with the library of its choice.
type Email struct {
	// ID names the email in results, events and logs. Zero: a random ID.
	ID string
	// From is the envelope sender (MAIL FROM). Empty is the null
	// reverse-path "<>", for bounces.
	From string
	// To are the envelope recipients (RCPT TO), at least one.
	//
	// From and To are written between the angle brackets as they are, so
	// they must be SMTP paths: a local part that is not a dot-atom is
	// quoted ("john doe"@example.com), as RFC 5321 says; net/mail's
	// Address.Address holds it unquoted.
	To []string
	// Body is the message. It is streamed, never read whole into memory. A
	// body that can seek (*bytes.Reader, *strings.Reader, *os.File on a
	// regular file) is read from its current offset at each attempt and must
	// not change until the email's result; *bytes.Buffer is read without
	// being drained. Any other reader is copied to a temporary file in
	// Options.TempDir by Enqueue, so that a retry can read it again; the
	// file is removed with the email's result.
	Body io.Reader
	// MailOptions are MAIL parameters: BODY, SMTPUTF8, REQUIRETLS and
	// DSN's RET and ENVID (go-smtp's type). Size is ignored: SIZE= is the
	// body's size, sent when the server offers SIZE. SMTPUTF8 is asked for
	// by itself when an address is not ASCII. An option the server does
	// not offer fails the email (DSN's are dropped, as go-smtp does).
	MailOptions *MailOptions
	// RcptOptions are RCPT parameters per recipient in To: DSN's NOTIFY and
	// ORCPT. RRVS, DELIVERBY and MT-PRIORITY are refused.
	RcptOptions map[string]*RcptOptions
}

// MailOptions and RcptOptions are go-smtp's types, so that code written
// for go-smtp's Client carries over.
type (
	MailOptions = smtp.MailOptions
	RcptOptions = smtp.RcptOptions
)

// SendOption adjusts how one email is sent.
type SendOption func(*sendConfig)

type sendConfig struct {
	priority  Priority
	retries   int // -1: Options.Retries
	timeout   time.Duration
	immediate bool
}

// WithPriority sets the email's priority. Default: PriorityNormal.
func WithPriority(p Priority) SendOption { return func(c *sendConfig) { c.priority = p } }

// WithRetries sets how many times the email is retried after a temporary
// failure. Default: Options.Retries. Negative n means none.
func WithRetries(n int) SendOption {
	return func(c *sendConfig) { c.retries = max(n, 0) }
}

// WithTimeout sets the email's deadline, counted from Enqueue. Past it, an
// email that has not reached the end of its data is withdrawn and fails
// with an error matching context.DeadlineExceeded. Default: Options.Timeout.
func WithTimeout(d time.Duration) SendOption { return func(c *sendConfig) { c.timeout = d } }

// Immediate lets a new session start for this email without waiting for
// Options.BatchWait. CRITICAL emails are always immediate.
func Immediate() SendOption { return func(c *sendConfig) { c.immediate = true } }

// maxPath is the longest reverse- or forward-path of RFC 5321 §4.5.3.1.3,
// angle brackets included.
const maxPath = 256

// checkAddress refuses what could not be put in MAIL FROM or RCPT TO as it
// is: control characters, a path over 256 octets, and outside a leading
// quoted local part ("john doe"@example.com, RFC 5321's Quoted-string,
// which may hold spaces, angle brackets and backslash escapes) spaces and
// angle brackets.
func checkAddress(role, a string) error {
	if len(a)+2 > maxPath {
		return fmt.Errorf("%w: %s address is %d octets, more than %d", ErrInvalidEmail, role, len(a), maxPath-2)
	}
	rest := a
	if strings.HasPrefix(a, `"`) {
		n, err := quotedLocalPart(a)
		if err != nil {
			return fmt.Errorf("%w: %s address %q: %w", ErrInvalidEmail, role, a, err)
		}
		rest = a[n:]
	}
	for i := 0; i < len(rest); i++ {
		switch c := rest[i]; {
		case c < ' ' || c == 0x7f:
			return fmt.Errorf("%w: %s address %q has a control character", ErrInvalidEmail, role, a)
		case c == ' ' || c == '<' || c == '>':
			return fmt.Errorf("%w: %s address %q has a space or angle bracket", ErrInvalidEmail, role, a)
		}
	}
	if !utf8.ValidString(a) {
		return fmt.Errorf("%w: %s address %q is not valid UTF-8", ErrInvalidEmail, role, a)
	}
	if role == "recipient" && (a == "" || !strings.Contains(a, "@") && !strings.EqualFold(a, "postmaster")) {
		return fmt.Errorf("%w: recipient %q is not an address", ErrInvalidEmail, a)
	}
	return nil
}

// quotedLocalPart returns the length of the quoted string a starts with,
// which must be followed by "@": octets 32 to 126 and UTF-8 between the
// quotes, a backslash escaping one octet 32 to 126 (RFC 5321 §4.1.2, with
// RFC 6531's UTF-8).
func quotedLocalPart(a string) (int, error) {
	for i := 1; i < len(a); i++ {
		switch c := a[i]; {
		case c < ' ' || c == 0x7f:
			return 0, errors.New("a control character in its quoted local part")
		case c == '\\':
			i++
			if i == len(a) || a[i] < ' ' || a[i] > '~' {
				return 0, errors.New("a backslash in its quoted local part escapes no printable character")
			}
		case c == '"':
			if !strings.HasPrefix(a[i+1:], "@") {
				return 0, errors.New("its quoted local part is not followed by @")
			}
			return i + 1, nil
		}
	}
	return 0, errors.New("its quoted local part has no closing quote")
}

func (e *Email) validate() error {
	if err := checkAddress("sender", e.From); err != nil {
		return err
	}
	if len(e.To) == 0 {
		return fmt.Errorf("%w: no recipient", ErrInvalidEmail)
	}
	for _, to := range e.To {
		if err := checkAddress("recipient", to); err != nil {
			return err
		}
	}
	if e.Body == nil {
		return fmt.Errorf("%w: nil body", ErrInvalidEmail)
	}
	for to := range e.RcptOptions {
		if !slices.Contains(e.To, to) {
			return fmt.Errorf("%w: RcptOptions for %q, which is not in To", ErrInvalidEmail, to)
		}
	}
	return nil
}
