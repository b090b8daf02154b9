package mxrelay

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/mxrelay/mxrelay/internal/store"
)

// Reply is the upstream's reply to an email's end of data.
type Reply struct {
	Code         int
	EnhancedCode [3]int // zero when the server sent none
	Message      string
}

// Outcome is how an email ended: the one field of a Result to branch on.
// Err, MaybeDelivered and Delivered agree with it (see each value), and
// Stats counts the emails by it. The zero Outcome is in no Result.
type Outcome int

// The outcomes.
const (
	// OutcomeDelivered: the upstream answered 2xx to the email's own end
	// of data, on a reply that can only be its answer, for at least one
	// recipient. Err is nil and Delivered reports true. An email delivered
	// to some recipients and refused for others is delivered: the others
	// are in Rejected. MaybeDelivered may be true too: an earlier attempt's
	// end of data went out with no trusted reply, the email was retried
	// (Options.RetryUnknown) and delivered, so it may have arrived twice.
	OutcomeDelivered Outcome = iota + 1
	// OutcomeFailed: not delivered, and nothing more will be tried: a 5xx,
	// a 4xx once the retries ran out, every recipient refused, an invalid
	// email, a withdrawal before its end of data (Handle.Cancel, the end of
	// Send's context, Email.Timeout), a relay that stayed unreachable
	// (*ConnectError) or refused the key (ErrAuthFailed). Err is an
	// *EmailError with the cause. MaybeDelivered true means an earlier
	// attempt, retried with Options.RetryUnknown, may have delivered it.
	OutcomeFailed
	// OutcomeUnknown: the final attempt's end of data was sent (at least
	// in part) and no trusted reply decided it, and it is not tried again
	// (without Options.RetryUnknown, after a cancel, or with the retries
	// used up): the upstream may have the email. Err is an *EmailError
	// matching ErrUnknownOutcome; MaybeDelivered is true. Check before
	// sending it again.
	OutcomeUnknown
	// OutcomeHandedBack: not sent, and given back: Close stopped before the
	// email could go (Err matches ErrClosed), or, with Options.SpoolDir, it
	// stays in the spool for the next Client on the directory, which sends
	// it (Err matches ErrSpooled: do not submit it again yourself; this is
	// also the outcome of an email whose end of data was not sent because
	// the spool's journal could not be written). Without a spool it is for
	// the caller to send again. MaybeDelivered says whether an earlier
	// attempt may have delivered it. When the attempt Close interrupted
	// ended unknown (with Options.RetryUnknown), Err matches
	// ErrUnknownOutcome as well: Outcome, not errors.Is, says which.
	OutcomeHandedBack
)

// String is the outcome's name: DELIVERED, FAILED, UNKNOWN, HANDED_BACK.
func (o Outcome) String() string {
	return enumName([]string{OutcomeDelivered: "DELIVERED", OutcomeFailed: "FAILED", OutcomeUnknown: "UNKNOWN", OutcomeHandedBack: "HANDED_BACK"}, o, "Outcome")
}

// RecipientError is a recipient the email was not delivered to, and why:
// the upstream's refusal (an *SMTPError: 5xx, or 4xx once retries ran
// out), or, for an email delivered to other recipients, the failure of the
// last attempt for this one (an *UnknownOutcomeError, ErrClosed, ...). It
// is an error; Unwrap returns Err. Code, EnhancedCode and Message are the
// SMTP reply of the refusal, the *SMTPError in Err (the one errors.As
// finds), so that a caller reads them without errors.As; they are zero
// when Err holds no SMTP reply. A refusal read back from the store (a
// Result another Client recorded, an email resumed from the spool or a
// shared Store) keeps them, and its Err its text and what errors.Is and
// errors.As match; one recorded by a version that kept its text only has
// that text alone, in Err.
type RecipientError struct {
	Address      string
	Code         int
	EnhancedCode [3]int // zero when the server sent none
	Message      string
	Err          error
}

// recipientError is the RecipientError of to for err, with the SMTP reply
// err carries.
func recipientError(to string, err error) RecipientError {
	r := RecipientError{Address: to, Err: err}
	var se *SMTPError
	if errors.As(err, &se) {
		r.Code, r.EnhancedCode, r.Message = se.Code, se.EnhancedCode, se.Message
	}
	return r
}

// Error names the recipient and the cause.
func (e RecipientError) Error() string {
	return "mxrelay: not delivered to " + e.Address + ": " + trimPrefix(e.Err)
}

// Unwrap returns Err.
func (e RecipientError) Unwrap() error { return e.Err }

// Result is what happened to one email. Exactly one Result is produced for
// every email that Send or Enqueue accepted.
type Result struct {
	EmailID  string
	Priority Priority
	// Outcome is how the email ended: delivered, failed, unknown or handed
	// back (see Outcome's values for what each says of the other fields).
	Outcome Outcome
	// Accepted are the recipients the email was delivered to.
	Accepted []string
	// Rejected are the recipients the email did not reach: those the
	// upstream refused, permanently (5xx) or after the email's retries ran
	// out (4xx), and, for an email delivered to others, those whose last
	// attempt failed otherwise. An email delivered to some recipients and
	// refused for others has Outcome OutcomeDelivered, Err == nil and both
	// lists set.
	Rejected []RecipientError
	// Reply is the upstream's reply to the end of data of the delivering
	// attempt; zero when the email was not delivered.
	Reply Reply
	// Attempts is how many SMTP transactions were started for the email.
	Attempts int
	// SessionID is the session of the last attempt.
	SessionID string
	// MaybeDelivered is true when an attempt, the last one or an earlier
	// one, ended with its end of data sent and no trusted reply: the
	// upstream may have the email whatever Outcome says, and if it was
	// retried (Options.RetryUnknown) it may have been delivered twice. It
	// is always true with OutcomeUnknown.
	MaybeDelivered bool
	// Queued is when Enqueue accepted the email; Duration is from then to
	// this result.
	Queued   time.Time
	Duration time.Duration
	// Err is nil when the email was delivered (Outcome OutcomeDelivered),
	// and an *EmailError otherwise.
	Err error
}

// Delivered reports whether the upstream accepted the email for at least
// one recipient: Outcome is OutcomeDelivered.
func (r *Result) Delivered() bool { return r.Outcome == OutcomeDelivered }

// Handle follows one email accepted by Enqueue. Its methods are safe for
// concurrent use. With Options.Store the email may be sent by another
// process: Done and Wait then learn its result from the store.
type Handle struct {
	c      *Client
	id     string // Email.ID, as the Result says it
	sid    string // its ID in the store
	queued time.Time
	done   chan struct{}
	res    *Result // set once, before done is closed

	// Under c.mu.
	em        *email // the record that holds the email here; nil while none does
	waited    bool   // Done or Wait was called
	following bool   // a watcher waits for the store's result (follow)
	unfollow  context.CancelFunc
}

// ID is the email's ID.
func (h *Handle) ID() string { return h.id }

// Done is closed when the email's result is known. With Options.Store, for
// an email this Client does not hold (another process claimed it), it is
// closed when the store has its result, or at Close (then handed back: the
// other processes send it; Client.Result of another Client tells).
func (h *Handle) Done() <-chan struct{} {
	h.c.await(h)
	return h.done
}

// Wait blocks until the email's result or the end of ctx. It returns the
// result and its Err; when ctx ends first it returns nil and ctx's error,
// and the email goes on (use Cancel to withdraw it). See Done for an
// email another process sends.
func (h *Handle) Wait(ctx context.Context) (*Result, error) {
	select {
	case <-h.Done():
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
// decides, and no further attempt follows. With Options.Store, an email
// another process holds is withdrawn by that process, before its next end
// of data; its result comes from the store.
func (h *Handle) Cancel() { h.c.cancelHandle(h, OutcomeFailed, ErrCanceled) }

// result is the email's result once it is out, else nil.
func (h *Handle) result() *Result {
	select {
	case <-h.done:
		return h.res
	default:
		return nil
	}
}

// newHandle is the Handle of email sid, Email.ID id, accepted at queued.
func (c *Client) newHandle(id, sid string, queued time.Time) *Handle {
	return &Handle{c: c, id: id, sid: sid, queued: queued, done: make(chan struct{})}
}

// await marks h waited for: an email this Client does not hold is
// followed in the store.
func (c *Client) await(h *Handle) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if h.res != nil {
		return
	}
	h.waited = true
	if h.em == nil {
		c.follow(h)
	}
}

// follow starts, once, the watcher that waits for the store to have the
// result of h's email, which this Client does not hold, and gives it to
// h; a claim of the email by this Client meanwhile (adopt) makes h its
// record's again, and the first result wins. At Close the watcher ends,
// and h is handed back. c.mu is held.
func (c *Client) follow(h *Handle) {
	if h.following || h.res != nil {
		return
	}
	if c.followed {
		c.deliver(h, c.handedBack(h))
		return
	}
	h.following = true
	if c.watched[h.sid] == nil {
		c.watched[h.sid] = h
	}
	ctx, cancel := context.WithCancel(c.watchCtx)
	h.unfollow = cancel
	c.watchers.Add(1)
	go c.watch(ctx, h)
}

// watch is a watcher (follow).
func (c *Client) watch(ctx context.Context, h *Handle) {
	defer c.watchers.Done()
	r, err := c.st.WaitResult(ctx, h.sid)
	var res *Result
	switch {
	case err == nil:
		res = resultOf(h.id, r)
	case errors.Is(err, store.ErrNotFound):
		res = &Result{EmailID: h.id, Outcome: OutcomeUnknown, MaybeDelivered: true, Queued: h.queued,
			Duration: time.Since(h.queued),
			Err:      &EmailError{EmailID: h.id, Err: &UnknownOutcomeError{Err: fmt.Errorf("%w: its result is no longer kept", ErrNoSuchEmail)}}}
	default:
		// Close, or the email's own record delivered (then nothing
		// changes).
		res = c.handedBack(h)
	}
	c.mu.Lock()
	c.deliver(h, res)
	c.mu.Unlock()
}

// handedBack is the Result of h's email handed back by Close while it was
// not held here: it stays in the store, for the other processes.
func (c *Client) handedBack(h *Handle) *Result {
	return &Result{EmailID: h.id, Outcome: OutcomeHandedBack, Queued: h.queued, Duration: time.Since(h.queued),
		Err: &EmailError{EmailID: h.id, Err: c.kept(ErrClosed)}}
}

// deliver gives h its result res, unless it has one. c.mu is held.
func (c *Client) deliver(h *Handle, res *Result) {
	if h.res != nil {
		return
	}
	h.res = res
	close(h.done)
	if h.unfollow != nil {
		h.unfollow()
	}
	if c.watched[h.sid] == h {
		delete(c.watched, h.sid)
	}
}

// cancelHandle withdraws h's email (see Handle.Cancel): through its
// record when this Client holds it, else in the store, where it ends at
// once when no one holds it, or by its holder's hand.
func (c *Client) cancelHandle(h *Handle, out Outcome, cause error) {
	c.mu.Lock()
	em, over := h.em, h.res != nil || c.followed
	var twin *Handle
	if e := c.byID[h.sid]; em == nil && !over && e != nil {
		// This Client holds it (claimed again, adopt, with a Handle of
		// its own, or before anything waited on h): withdrawn here, and
		// h gets that record's result.
		em = e
		if e.handle == nil {
			h.em, e.handle, e.id = e, h, h.id
		} else {
			twin = e.handle
		}
	}
	c.mu.Unlock()
	if over || em != nil && c.cancel(em, out, cause) {
		if twin != nil {
			c.mu.Lock()
			if twin.res != nil {
				c.deliver(h, twin.res)
			} else {
				h.waited = true
				c.follow(h)
			}
			c.mu.Unlock()
		}
		return
	}
	res := &Result{EmailID: h.id, Outcome: out, Queued: h.queued, Duration: time.Since(h.queued),
		Err: &EmailError{EmailID: h.id, Err: cause}}
	finished, err := c.st.Cancel(context.Background(), h.sid, c.storeResult(h.sid, res))
	switch {
	case finished:
		c.mu.Lock()
		c.deliver(h, res)
		c.mu.Unlock()
	case err != nil && !errors.Is(err, store.ErrNotFound):
		c.log.Error("mxrelay: store", "op", "cancel", "email", h.id, "err", err)
	}
}

// SpoolResult is one "R" line of the journal and of results.log in
// Options.SpoolDir: the result of a spooled email, as Result says it, for
// tools that read the records (docs/spool.md). The records have more
// fields, which it leaves out: the email's idempotency key, the reply's
// enhanced code, the result's kind and when it was queued.
type SpoolResult struct {
	File           string            `json:"file"`
	EmailID        string            `json:"id"`
	Delivered      bool              `json:"delivered"`
	MaybeDelivered bool              `json:"maybeDelivered,omitempty"`
	Attempts       int               `json:"attempts"`
	Accepted       []string          `json:"accepted,omitempty"`
	Rejected       map[string]string `json:"rejected,omitempty"`
	Reply          string            `json:"reply,omitempty"`
	Error          string            `json:"error,omitempty"`
	Time           time.Time         `json:"time"`
}
