package mxrelay

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime"
	"slices"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/emersion/go-smtp"

	"github.com/mxrelay/mxrelay/internal/smtpc"
	"github.com/mxrelay/mxrelay/internal/wire"
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

// Reply is the upstream's reply to an email's end of data.
type Reply struct {
	Code         int
	EnhancedCode [3]int // zero when the server sent none
	Message      string
}

// RecipientError is a recipient the email was not delivered to: the
// upstream's refusal (an *SMTPError: 5xx, or 4xx once retries ran out), or,
// for an email delivered to other recipients, the failure of the last
// attempt for this one.
type RecipientError struct {
	Address string
	Err     error
}

// Result is what happened to one email. Exactly one Result is produced for
// every email that Send or Enqueue accepted.
type Result struct {
	EmailID  string
	Priority Priority
	// Accepted are the recipients the email was delivered to.
	Accepted []string
	// Rejected are the recipients the upstream refused, permanently (5xx)
	// or after the email's retries ran out (4xx). An email delivered to some
	// recipients and refused for others has Err == nil and both lists set.
	Rejected []RecipientError
	// Reply is the upstream's reply to the end of data of the delivering
	// attempt; zero when the email was not delivered.
	Reply Reply
	// Attempts is how many SMTP transactions were started for the email.
	Attempts int
	// SessionID is the session of the last attempt.
	SessionID string
	// MaybeDelivered is true when an attempt ended with its end of data sent
	// and no reply: the upstream may have the email even if Err is set, and
	// if it was retried (Options.RetryUnknown) it may have been delivered
	// twice.
	MaybeDelivered bool
	// Queued is when Enqueue accepted the email; Duration is from then to
	// this result.
	Queued   time.Time
	Duration time.Duration
	// Err is nil when the email was delivered (the upstream answered 250 to
	// its end of data), and an *EmailError otherwise.
	Err error
}

// Delivered reports whether the upstream accepted the email for at least
// one recipient.
func (r *Result) Delivered() bool { return r.Err == nil }

// Handle follows one email accepted by Enqueue. Its methods are safe for
// concurrent use.
type Handle struct {
	c    *Client
	em   *email
	done chan struct{}
	res  *Result
}

// ID is the email's ID.
func (h *Handle) ID() string { return h.em.id }

// Done is closed when the email's result is known.
func (h *Handle) Done() <-chan struct{} { return h.done }

// Wait blocks until the email's result or the end of ctx. It returns the
// result and its Err; when ctx ends first it returns nil and ctx's error,
// and the email goes on (use Cancel to withdraw it).
func (h *Handle) Wait(ctx context.Context) (*Result, error) {
	select {
	case <-h.done:
		return h.res, h.res.Err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// Cancel withdraws the email if its end of data has not been sent: its
// result fails at once with an error matching ErrCanceled, whatever the
// session is doing. A queued email leaves the queue; an email in the middle
// of its transaction is withdrawn by the session at its next step, and its
// end of data is never written: in a pipelined BDAT window by RSET before
// its next chunk, otherwise by closing the session's channel (the
// session's other emails are then classified as for a lost connection).
// Once the end of data is sent Cancel does not withdraw it: the reply
// decides, and no further attempt follows.
func (h *Handle) Cancel() { h.c.cancel(h.em, ErrCanceled) }

// body is an email's message, readable once per attempt.
type body struct {
	r     io.ReadSeeker
	start int64
	size  int64    // bytes to read
	wire  int64    // bytes as sent (SIZE=): line endings fixed, final CRLF
	utf8  bool     // valid UTF-8, so it can travel in a JSON channel
	raw   bool     // BODY=BINARYMIME: sent as it is
	file  *os.File // a file of ours holding the body, closed by release
	temp  bool     // file still has a name of ours, removed by release
}

// bodyRules are the checks a body passes at Enqueue and how it is sent.
type bodyRules struct {
	fix      bool // Options.FixLineEndings
	maxLine  int  // longest line; zero: no limit
	raw      bool // BODY=BINARYMIME: bytes as they are, no line rules
	utf8Only bool // Options.DisableBinary: only JSON text frames will carry it
}

// bodyRules are the rules for a body sent with mailOpts.
func (o *Options) bodyRules(mailOpts *MailOptions) bodyRules {
	if mailOpts != nil && mailOpts.Body == smtp.BodyBinaryMIME {
		return bodyRules{raw: true, utf8Only: o.DisableBinary}
	}
	return bodyRules{fix: o.FixLineEndings, maxLine: o.maxLine(), utf8Only: o.DisableBinary}
}

// newBody prepares r for reading at each attempt (see Email.Body), reading
// it once to check it by the rules (bare line endings, long lines, UTF-8
// for a client that only speaks JSON text frames) and to learn its size as
// sent. A body that cannot be read twice is copied to a temporary file in
// tempDir that has no name once created (on Windows, which cannot unlink
// an open file, it is removed by release).
func newBody(r io.Reader, tempDir string, rules bodyRules) (*body, error) {
	if b, ok := r.(*bytes.Buffer); ok {
		r = bytes.NewReader(b.Bytes())
	}
	if rs, ok := r.(io.ReadSeeker); ok {
		if start, err := rs.Seek(0, io.SeekCurrent); err == nil {
			b := &body{r: rs, start: start}
			if err := b.scan(nil, rs, rules); err != nil {
				return nil, err
			}
			if _, err := rs.Seek(start, io.SeekStart); err != nil {
				return nil, bodyErr(err)
			}
			return b, nil
		}
	}
	f, err := os.CreateTemp(tempDir, "mxrelay-body-*")
	if err != nil {
		return nil, fmt.Errorf("mxrelay: copying the body: %w", err)
	}
	b := &body{file: f, temp: true}
	if runtime.GOOS != "windows" && os.Remove(f.Name()) == nil {
		// Read through the descriptor only: a process killed while the
		// email waits (SIGKILL, the OOM killer) leaves no copy behind.
		b.temp = false
	}
	if err := b.scan(f, r, rules); err != nil {
		b.release()
		return nil, err
	}
	b.r = io.NewSectionReader(f, 0, b.size)
	return b, nil
}

// scan reads r to its end, copying it to w when w is not nil, and sets
// the body's size, size as sent and UTF-8 flag, checked by rules.
func (b *body) scan(w io.Writer, r io.Reader, rules bodyRules) error {
	sz := smtpc.NewSizer(rules.fix, rules.maxLine, rules.raw)
	u8 := &utf8Check{}
	dst := io.MultiWriter(sz, u8)
	if w != nil {
		dst = io.MultiWriter(w, sz, u8)
	}
	n, err := io.Copy(dst, r)
	if err == nil {
		b.wire, err = sz.Size()
	}
	if err != nil {
		return bodyErr(err)
	}
	b.size, b.utf8, b.raw = n, u8.valid(), rules.raw
	if rules.utf8Only && !b.utf8 {
		return ErrNotUTF8
	}
	return nil
}

// bodyErr says what was wrong with a body read at Enqueue or as it was
// sent: a body that breaks the rules is invalid, other errors are the
// reader's.
func bodyErr(err error) error {
	if errors.Is(err, ErrBareLineEnding) || errors.Is(err, ErrLineTooLong) {
		return fmt.Errorf("%w: %w", ErrInvalidEmail, err)
	}
	return fmt.Errorf("%w: %w", errBody, err)
}

// open rewinds the body for an attempt.
func (b *body) open() (io.Reader, error) {
	if _, err := b.r.Seek(b.start, io.SeekStart); err != nil {
		return nil, fmt.Errorf("%w: rewinding: %w", errBody, err)
	}
	return io.LimitReader(b.r, b.size), nil
}

func (b *body) release() {
	if b.file != nil {
		b.file.Close()
		if b.temp {
			os.Remove(b.file.Name())
		}
	}
}

// utf8Check is a writer that tells whether what was written is valid
// UTF-8, holding back at most one incomplete character between writes.
type utf8Check struct {
	carry [utf8.UTFMax]byte
	n     int
	bad   bool
}

func (u *utf8Check) Write(p []byte) (int, error) {
	n := len(p)
	for len(p) > 0 && !u.bad {
		if u.n == 0 {
			cut := wire.RuneCut(p)
			u.bad = !utf8.Valid(p[:cut])
			u.n = copy(u.carry[:], p[cut:])
			break
		}
		// Complete the held-back character, a byte at a time.
		u.carry[u.n] = p[0]
		u.n++
		p = p[1:]
		if utf8.FullRune(u.carry[:u.n]) {
			u.bad = !utf8.Valid(u.carry[:u.n])
			u.n = 0
		}
	}
	return n, nil
}

// valid reports whether everything written was valid UTF-8.
func (u *utf8Check) valid() bool { return !u.bad && u.n == 0 }

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
