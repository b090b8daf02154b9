package mxrelay

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"

	"github.com/emersion/go-smtp"

	"github.com/mxrelay/mxrelay/internal/relayconn"
	"github.com/mxrelay/mxrelay/internal/smtpc"
)

// Sentinel errors. Match them with errors.Is.
var (
	// ErrQueueFull is returned by Send and Enqueue when MaxQueueSize emails
	// are already waiting. Nothing was accepted.
	ErrQueueFull = errors.New("mxrelay: queue is full")

	// ErrClosed is returned by Send and Enqueue after Close, and is the
	// cause of the result of every email that Close handed back unsent.
	ErrClosed = errors.New("mxrelay: client closed")

	// ErrAuthFailed means the relay refused the API key (AUTHENTICATE
	// answered success:false, or close status 4003). It is permanent: the
	// client does not try the same key again, waiting emails fail with it,
	// and later Sends are refused with it.
	ErrAuthFailed = errors.New("mxrelay: relay refused the API key")

	// ErrUnknownOutcome is matched by an *UnknownOutcomeError: the end of an
	// email's data was sent and no reply came, so it may have been delivered.
	ErrUnknownOutcome = errors.New("mxrelay: outcome unknown, the email may have been delivered")

	// ErrInvalidEmail is wrapped by every error about an email that can never
	// be sent as it is: a bad address, no recipient, a nil body, a body with
	// a bare line ending or a line too long. Such an email is refused by Send
	// and Enqueue, or failed before any of it is sent.
	ErrInvalidEmail = errors.New("mxrelay: invalid email")

	// ErrCanceled is wrapped by the error of an email withdrawn before its
	// end of data was sent: by Handle.Cancel, by the end of its Send context
	// (the context's error is wrapped too) or by its deadline, Email.Timeout
	// or Options.EmailTimeout (context.DeadlineExceeded is wrapped too).
	ErrCanceled = errors.New("mxrelay: email cancelled")

	// ErrBareLineEnding is wrapped (with ErrInvalidEmail) by the error of a
	// body with a CR not followed by LF or an LF not preceded by CR, unless
	// Options.FixLineEndings. RFC 5321 §2.3.8 forbids sending them; servers
	// that read them as line ends are how SMTP smuggling works.
	ErrBareLineEnding = smtpc.ErrBareLineEnding

	// ErrLineTooLong is wrapped (with ErrInvalidEmail) by the error of a
	// body with a line of more than 998 octets, CRLF not counted, unless
	// Options.AllowLongLines. RFC 5322 §2.1.1 and RFC 5321 §4.5.3.1.6 forbid
	// them; servers truncate, split or refuse them.
	ErrLineTooLong = smtpc.ErrLineTooLong

	// ErrTimeout is matched by the error of every timeout the client
	// imposes: DialTimeout (the WebSocket handshake), AuthTimeout (no
	// AUTHENTICATE_RESPONSE), ChannelTimeout (no SMTP_CHANNEL_READY),
	// HeartbeatTimeout (no pong), CommandTimeout (an SMTP reply or a write
	// that did not complete in time, the STARTTLS handshake), SessionTimeout
	// (a session that had not started, or was cut, when it passed) and an
	// email's own timeout (Email.Timeout, Options.EmailTimeout; with
	// ErrCanceled). It is matched where the user sees the error: Result.Err
	// and Send's error (through *EmailError, *ConnectError,
	// *UnknownOutcomeError) and the Err of events. Such an error also matches what it matched
	// before: context.DeadlineExceeded, os.ErrDeadlineExceeded, a net.Error
	// whose Timeout reports true. The deadline of a context the caller
	// passes (Send's, Close's) is the caller's, not the client's: its
	// errors match context.DeadlineExceeded and not ErrTimeout.
	ErrTimeout = errors.New("mxrelay: timed out")

	// ErrNotUTF8 means the relay only speaks JSON text frames and the email's
	// bytes are not valid UTF-8, so they cannot travel without being changed.
	// Nothing of the email was sent. Send it over a binary channel, or encode
	// its 8-bit parts (quoted-printable, base64).
	ErrNotUTF8 = fmt.Errorf("%w: body is not valid UTF-8, and only text frames can carry it (Options.DisableBinary, or a relay without binary frames)", ErrInvalidEmail)
)

// SMTPError is a reply of the upstream SMTP server: its code, its enhanced
// status code (RFC 3463) and its text. Temporary reports a 4xx reply. It is
// go-smtp's type, so errors.As works with either name.
type SMTPError = smtp.SMTPError

// EmailError is the error of an email that was not delivered: why, with the
// email's ID and how many attempts were made. Err is the cause: an
// *SMTPError, an *UnknownOutcomeError, a *ConnectError, ErrClosed,
// ErrAuthFailed, a context error for a cancelled email, or a connection
// error.
type EmailError struct {
	EmailID  string
	Attempts int
	Err      error
}

func (e *EmailError) Error() string {
	if e.Attempts == 0 {
		// Nothing of it reached a server (the relay unreachable, Close):
		// one count, the cause's, is enough.
		return fmt.Sprintf("mxrelay: email %s not sent: %s", e.EmailID, trimPrefix(e.Err))
	}
	return fmt.Sprintf("mxrelay: email %s not delivered after %d attempt(s): %s", e.EmailID, e.Attempts, trimPrefix(e.Err))
}

func (e *EmailError) Unwrap() error { return e.Err }

// Temporary reports whether the last failure was temporary (a 4xx reply, a
// lost connection, a timeout), so that sending the same email again later
// may succeed.
func (e *EmailError) Temporary() bool { return temporary(e.Err) }

// UnknownOutcomeError is the failure of an attempt whose end of data was
// (at least partly) written and whose reply never came: the upstream may
// have accepted the email. It matches ErrUnknownOutcome.
type UnknownOutcomeError struct {
	Err error // why the reply never came
}

func (e *UnknownOutcomeError) Error() string {
	return "mxrelay: outcome unknown, the email may have been delivered: " + trimPrefix(e.Err)
}

func (e *UnknownOutcomeError) Unwrap() error { return e.Err }

// Is makes errors.Is(err, ErrUnknownOutcome) true.
func (e *UnknownOutcomeError) Is(target error) bool { return target == ErrUnknownOutcome }

// ConnectError means the client could not set up a session after
// MaxReconnectAttempts attempts: the WebSocket, AUTHENTICATE, the channel or
// the SMTP greeting kept failing. Err is the last cause.
type ConnectError struct {
	Attempts int
	URL      string // the relay's URL, as configured (ws:// or wss://)
	Err      error
}

func (e *ConnectError) Error() string {
	// The WebSocket library words a failed dial as an HTTP request
	// ("Get \"http://...\": dial tcp ..."): say the relay's own URL, and
	// what failed under it.
	cause := trimPrefix(e.Err)
	var ue *url.Error
	if errors.As(e.Err, &ue) {
		cause = ue.Err.Error()
	}
	if e.URL == "" {
		return fmt.Sprintf("mxrelay: relay unreachable after %d attempt(s): %s", e.Attempts, cause)
	}
	return fmt.Sprintf("mxrelay: relay %s unreachable after %d attempt(s): %s", e.URL, e.Attempts, cause)
}

func (e *ConnectError) Unwrap() error { return e.Err }

// RelayError is a failure of the relay connection, carrying the WebSocket
// close status when there was one (-1 when the connection just ended).
type RelayError struct {
	Code   int    // close status, -1 for none
	Reason string // close reason, or what went wrong
	Err    error
}

func (e *RelayError) Error() string { return "mxrelay: " + trimPrefix(e.Err) }
func (e *RelayError) Unwrap() error { return e.Err }

// ProtocolError means the relay broke docs/protocol.md, or the upstream SMTP
// server broke SMTP's grammar (a malformed or unexpected reply); the
// connection was closed.
type ProtocolError struct {
	Err error
}

func (e *ProtocolError) Error() string { return "mxrelay: " + trimPrefix(e.Err) }
func (e *ProtocolError) Unwrap() error { return e.Err }

// trimPrefix avoids "mxrelay: ... mxrelay: ..." in wrapped messages.
func trimPrefix(err error) string {
	if err == nil {
		return "<nil>"
	}
	s := err.Error()
	for len(s) > 9 && s[:9] == "mxrelay: " {
		s = s[9:]
	}
	return s
}

// temporary classifies a cause: SMTP 4xx, connection trouble and timeouts
// are temporary; SMTP 5xx, bad input, auth refusal, cancellation and a
// session set-up that failed permanently are not.
func temporary(err error) bool {
	var se *SMTPError
	if errors.As(err, &se) {
		return se.Code/100 == 4
	}
	switch {
	case err == nil,
		errors.Is(err, ErrAuthFailed),
		errors.Is(err, ErrInvalidEmail),
		errors.Is(err, ErrClosed),
		errors.Is(err, ErrCanceled),
		errors.Is(err, errPermanentSetup),
		errors.Is(err, errBody):
		return false
	}
	return true
}

// errBody is wrapped by errors reading an email's body.
var errBody = errors.New("mxrelay: reading the body")

// classify gives an error of the machinery (the relay connection, the
// SMTP engine, a stream) the package's types, and marks a timeout so that
// it matches ErrTimeout. It is the one place that marks timeouts: every
// error a user may see passes through it, and so do those of the
// client's own timers (SessionTimeout, an email's timeout). It may be
// applied twice.
func classify(err error) error {
	timeout := isTimeout(err)
	var ae *relayconn.AuthError
	var ce *relayconn.ClosedError
	var pe *relayconn.ProtocolError
	var che *relayconn.ChannelError
	switch {
	case errors.As(err, &ae):
		err = fmt.Errorf("%w: %s", ErrAuthFailed, ae.Message)
	case errors.As(err, &pe), errors.Is(err, smtpc.ErrProtocol):
		err = &ProtocolError{Err: err}
	case errors.As(err, &ce):
		err = &RelayError{Code: int(ce.Code), Reason: ce.Reason, Err: err}
	case errors.As(err, &che):
		err = &RelayError{Code: -1, Reason: che.Message, Err: err}
	}
	if timeout && !errors.Is(err, ErrTimeout) {
		err = timeoutError{err}
	}
	return err
}

// isTimeout reports whether err is a timeout in any of the ways the
// machinery says so: relayconn's ErrTimeout (AuthTimeout, ChannelTimeout,
// the heartbeat), a context deadline (DialTimeout, the TLS handshake, a
// timer of the client), a deadline of a net.Conn (CommandTimeout), a
// net.Error that says it timed out.
func isTimeout(err error) bool {
	var ne net.Error
	return errors.Is(err, relayconn.ErrTimeout) ||
		errors.Is(err, context.DeadlineExceeded) ||
		errors.Is(err, os.ErrDeadlineExceeded) ||
		errors.As(err, &ne) && ne.Timeout()
}

// timeoutError marks a timeout: it matches ErrTimeout, and everything
// the error it holds matches. Its message is that error's.
type timeoutError struct{ error }

func (e timeoutError) Unwrap() error        { return e.error }
func (e timeoutError) Is(target error) bool { return target == ErrTimeout }

// permanentConnErr reports whether a session set-up failure must not be
// retried: a refused key, a relay that speaks another protocol, SMTP
// credentials the server refused (5xx), a required STARTTLS it lacks.
func permanentConnErr(err error) bool {
	return errors.Is(err, ErrAuthFailed) || errors.Is(err, errPermanentSetup)
}

// certErr returns, for a dial that failed because the relay's certificate
// is not valid (unknown authority, wrong name, expired), a permanent
// set-up failure: retrying cannot fix it, so the waiting emails fail at
// once instead of after MaxReconnectAttempts. Nil for any other error.
func certErr(err error) error {
	var cve *tls.CertificateVerificationError
	if !errors.As(err, &cve) {
		return nil
	}
	return fmt.Errorf("%w: the relay's TLS certificate is not valid (Options.InsecureSkipVerify skips the check, for tests only): %w", errPermanentSetup, err)
}

// errPermanentSetup marks a set-up failure that retrying cannot fix.
var errPermanentSetup = errors.New("mxrelay: session set-up failed permanently")

// PartialError is what the drop-ins (SendMail, Transport.SendMail,
// Sender.Send) return for an email delivered to some recipients and
// refused for others: net/smtp and gomail fail a send when a recipient is
// refused, and code written for them checks the error, not a Result.
// Result tells who got the message (Accepted) and who did not
// (Rejected); errors.As finds the first refusal (a RecipientError) and its
// *SMTPError.
type PartialError struct {
	Result *Result
}

func (e *PartialError) Error() string {
	r := e.Result
	return fmt.Sprintf("mxrelay: delivered to %d recipient(s), not to %d: %s: %v",
		len(r.Accepted), len(r.Rejected), r.Rejected[0].Address, r.Rejected[0].Err)
}

// Unwrap returns the first refusal, Result.Rejected[0].
func (e *PartialError) Unwrap() error { return e.Result.Rejected[0] }

// dropInErr is the error a drop-in returns for Send's outcome: a
// *PartialError when the email reached some recipients and not all.
func dropInErr(res *Result, err error) error {
	if res != nil && res.Outcome == OutcomeDelivered && len(res.Rejected) > 0 {
		return &PartialError{Result: res}
	}
	return err
}

// ErrSpooled is wrapped by the result of an email that stays in a
// durable store for another Client to send: in Options.SpoolDir for the
// next Client on the same directory, one that Close handed back (with
// ErrClosed), or one whose end of data was not sent because the spool's
// journal could not be written (a full disk); in Options.Store, for the
// other processes, one that Close handed back. An email that some
// recipients already have is a delivery: ErrSpooled is then the error of
// the others in Result.Rejected, which the next Client sends it to. Do
// not submit it again yourself.
var ErrSpooled = errors.New("mxrelay: kept in the durable queue for another Client")

// ErrNoSuchEmail is returned by Client.Result for an ID the store keeps
// no email of: never accepted, or its result is past its retention time.
var ErrNoSuchEmail = errors.New("mxrelay: no such email")

// ErrNotFinished is returned by Client.Result for an email the store
// keeps that has no result yet.
var ErrNotFinished = errors.New("mxrelay: the email has no result yet")
