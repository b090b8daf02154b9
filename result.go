package mxrelay

import (
	"context"
	"time"
)

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

// result is the email's result once it is out, else nil.
func (h *Handle) result() *Result {
	select {
	case <-h.done:
		return h.res
	default:
		return nil
	}
}
