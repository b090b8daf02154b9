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

// Email is one message, its envelope and how to send it. The library does
// not build messages: Body holds the RFC 5322 bytes (headers, blank line,
// body) that the caller composed with the library of its choice. Every
// per-email setting is a field here (ID, MailOptions, RcptOptions,
// Priority, Retries, Timeout, Immediate); the SendOptions set the same
// fields. Send and Enqueue check them (an unknown Priority is refused
// with ErrInvalidEmail).
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

	// Priority orders the queue (see Priority). Zero: PriorityNormal.
	Priority Priority
	// Retries is how many times the email is retried after a temporary
	// failure. Zero: Options.Retries. Negative: none.
	Retries int
	// Timeout is the email's deadline, counted from Enqueue. Past it, an
	// email that has not reached the end of its data is withdrawn and
	// fails with an error matching ErrCanceled and
	// context.DeadlineExceeded; one whose end of data is out is decided
	// by its reply. Zero: Options.EmailTimeout. Negative: none.
	Timeout time.Duration
	// Immediate lets a new session start for this email without waiting
	// for Options.BatchWait. CRITICAL emails are always immediate.
	Immediate bool
	// IdempotencyKey, if not empty, makes Send and Enqueue accept the
	// email at most once: an email with a key the store already keeps is
	// not accepted again, and the Handle returned is the first one's (its
	// Result, its ID), whichever process accepted it. In the spool
	// (SpoolDir) and in a shared Store a key is kept with its email and
	// then with its result, for Options.ResultRetention (pgstore's own
	// option), across restarts; in memory, while the email waits, and its
	// result for ResultRetention. Use a key of the caller's own making (an
	// order number, a message ID), so that a caller that retries after a
	// crash or a timeout does not send the email twice. Zero: none, every
	// Enqueue accepts a new email.
	IdempotencyKey string
}

// MailOptions and RcptOptions are go-smtp's types, so that code written
// for go-smtp's Client carries over.
type (
	MailOptions = smtp.MailOptions
	RcptOptions = smtp.RcptOptions
)

// SendOption sets one of an Email's per-email fields. Given to Send,
// Enqueue, EnqueueWait or NewSender, the options are applied in order to
// the caller's Email (a copy) after its own fields: when both say
// something, the option wins.
type SendOption func(*Email)

// WithPriority is the same as setting Email.Priority to p.
func WithPriority(p Priority) SendOption { return func(e *Email) { e.Priority = p } }

// WithRetries is the same as setting Email.Retries to n retries, except
// that zero, like a negative n, means none: Email.Retries becomes -1.
// (Email.Retries's own zero is Options.Retries.)
func WithRetries(n int) SendOption {
	return func(e *Email) { e.Retries = positiveOrNone(n) }
}

// WithTimeout is the same as setting Email.Timeout to d, except that zero,
// like a negative d, means no deadline: Email.Timeout becomes -1.
// (Email.Timeout's own zero is Options.EmailTimeout.)
func WithTimeout(d time.Duration) SendOption {
	return func(e *Email) { e.Timeout = positiveOrNone(d) }
}

// Immediate is the same as setting Email.Immediate.
func Immediate() SendOption { return func(e *Email) { e.Immediate = true } }

// positiveOrNone is v, or -1 (none) when v is not positive.
func positiveOrNone[T int | time.Duration](v T) T {
	if v <= 0 {
		return -1
	}
	return v
}

// sendConfig is an email's per-email settings, resolved against the
// Client's Options.
type sendConfig struct {
	priority  Priority
	retries   int           // how many retries, >= 0
	timeout   time.Duration // the deadline from Enqueue; 0: none
	immediate bool
}

// sendConfig resolves e's per-email settings against o, defaults applied.
func (o *Options) sendConfig(e *Email) sendConfig {
	cfg := sendConfig{priority: e.Priority, retries: e.Retries, timeout: e.Timeout, immediate: e.Immediate}
	switch {
	case e.Retries == 0:
		cfg.retries = o.Retries
	case e.Retries < 0:
		cfg.retries = 0
	}
	switch {
	case e.Timeout == 0:
		cfg.timeout = o.EmailTimeout
	case e.Timeout < 0:
		cfg.timeout = 0
	}
	return cfg
}

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
	if !e.Priority.valid() {
		return fmt.Errorf("%w: unknown priority %d", ErrInvalidEmail, int(e.Priority))
	}
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
