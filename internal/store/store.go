// Package store is the seam between the Client and the place where
// accepted emails live: one interface, Store, with an implementation per
// place (in memory, the spool directory, PostgreSQL in package pgstore).
// The Client calls it unconditionally; which Store it calls is chosen once,
// in New.
//
// The package is internal because the root package is the API: its types
// are the store's records (an envelope, progress, a result as text), which
// the Client translates to and from its own (Email, Result). Users pick an
// implementation the module provides; they do not write their own.
//
// # Claims, leases and fencing
//
// An accepted email is ready once its retry time (notBefore) has come.
// Claim hands ready emails to one owner (a name unique to the calling
// process, chosen by the Client) for a lease, and gives each claim a
// fencing token: the email's attempt number, one more than the last claim
// of it. Every write a claim holder makes (Renew, Ending, Requeue,
// HandBack, Finish) carries its Token and is refused with a *FencedError
// when the email's attempt or owner has moved on since: another process
// took the email over after the lease expired, or the email was finished
// or released. A lease that expired and was not taken over is still the
// holder's: expiry only allows a takeover, which the token then fences.
//
// # Unknown outcomes
//
// Ending records, before an end of data is written, that the server may
// have the email from then on. Requeue and HandBack with progress, and
// Finish, answer it. An email whose lease is taken over with records
// Ending made and nothing answered them comes back from Claim with
// Claimed.Unanswered > 0: its outcome is unknown. The store does not
// decide what follows: the Client fails it at once as an unknown outcome
// (Finish with MaybeDelivered) unless Options.RetryUnknown, when it is
// sent again with MaybeDelivered kept. This is the spool's rule: an "E"
// line with neither a "D" nor an "R" line after it.
//
// # Errors
//
// Errors can be matched with errors.Is against the sentinels below. A
// failure to reach the store (a database restarting, a broken
// connection) matches ErrUnavailable and is temporary: the same call may
// be made again. Which of them might have taken effect all the same is
// said per method.
package store

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/emersion/go-smtp"
)

// Store keeps accepted emails, what is recorded about their attempts, and
// their results for a while after. Its methods are safe for concurrent
// use, by many goroutines and, for a shared Store such as pgstore's, by
// many processes. Every method that blocks takes a ctx: when it ends the
// call returns ctx's error, and what was done is as for ErrUnavailable.
type Store interface {
	// Accept begins accepting env: the body is written to the Draft, and
	// Draft.Commit accepts the email. When env.IdempotencyKey is not
	// empty and an email with that key was accepted before (and it, or its
	// result, is still kept), the Draft is that email's: Draft.Existing
	// says so at once, nothing written is kept, and Commit returns it. An
	// Accept with the key of an email whose Accept is still in progress
	// elsewhere waits for that one to commit or abort. An env.ID already
	// kept fails with ErrDuplicateID.
	Accept(ctx context.Context, env *Envelope) (Draft, error)

	// Claim takes up to n ready emails for owner, highest Priority first
	// and in order of acceptance within a priority, and leases them for
	// lease, as one step: no two claims get the same email while its lease
	// runs. Ready means accepted, without a result, its retry time come,
	// and not held, or held under a lease that has expired (a takeover:
	// the old holder's token is fenced from then on). Each email returned
	// has a new Token.
	//
	// When it claims fewer than n, next is the earliest time at which an
	// email not ready now can become ready (its retry time, or the expiry
	// of a lease), or zero when there is none: a claimer waits for that
	// time or for Wake. An error claims nothing.
	Claim(ctx context.Context, owner string, n int, lease time.Duration) (claimed []*Claimed, next time.Time, err error)

	// Renew extends the leases of toks to lease from now, in one round
	// trip. errs[i] is nil when toks[i] was renewed and a *FencedError
	// when its claim moved on. A non-nil err renewed none (or, when
	// ErrUnavailable, maybe some).
	Renew(ctx context.Context, toks []Token, lease time.Duration) (errs []error, err error)

	// Ending records, in one round trip for a whole pipeline window, that
	// the end of data of each of toks is about to be written: once it
	// returns, a takeover of the email sees an unanswered end of data
	// (Claimed.Unanswered). errs[i] is nil when the record for toks[i] is
	// durable and its end of data may be written; ErrCanceled when Cancel
	// was asked for it (nothing recorded: write no end of data, Finish it);
	// a *FencedError when its claim moved on (nothing recorded: write no
	// end of data and forget it, its new holder decides). A non-nil err
	// means no end of data may be written; with ErrUnavailable some of the
	// records may be durable all the same, which only makes a later
	// takeover take them for unknown outcomes, the safe side.
	Ending(ctx context.Context, toks []Token) (errs []error, err error)

	// Requeue records p, where the email stands after an attempt (p
	// answers every Ending before it), and releases the email, ready again
	// at notBefore (zero: now). When it returns both are durable and the
	// token is spent. A *FencedError means nothing was written.
	Requeue(ctx context.Context, tok Token, p *Progress, notBefore time.Time) error

	// HandBack releases the email unfinished, ready now for any claimer:
	// the holder is closing, or took more than it can send. With p it
	// records p as Requeue does; with nil p the email keeps its last
	// progress and its unanswered Ending records, which a later claim then
	// reports as unknown outcomes. A *FencedError means nothing was
	// written.
	HandBack(ctx context.Context, tok Token, p *Progress) error

	// Finish records the email's result and ends it: when it returns the
	// result is durable, its body is gone, the token is spent, and
	// Result and WaitResult, in any process, return r (with Finished set by
	// the store) until the store's retention time has passed. A
	// *FencedError means nothing was written: the email is not this
	// holder's to finish. With ErrUnavailable the result may be recorded
	// all the same; calling Finish again with the same token then returns
	// nil if it was.
	Finish(ctx context.Context, tok Token, r *Result) error

	// Body returns the body of email id, read from its start, streamed
	// with bounded memory whatever its size; it may be called once per
	// attempt. Reads are bound by ctx. It fails with ErrNotFound when the
	// email is unknown or finished (its body goes with its result); a read
	// of a body removed meanwhile fails with ErrNotFound too.
	Body(ctx context.Context, id string) (io.ReadCloser, error)

	// Cancel asks that email id be withdrawn, its result to be r. An
	// email that no one holds is finished with r at once: finished is
	// true. An email that is held is marked: the holder's next Ending of
	// it returns ErrCanceled, and a later claim of it reports
	// Claimed.Canceled; an end of data already recorded is not withdrawn
	// (its reply decides). finished is false then, and for an email
	// already finished. ErrNotFound: no such email is kept.
	Cancel(ctx context.Context, id string, r *Result) (finished bool, err error)

	// Result returns the result of email id, whichever process finished
	// it. ErrNotFinished: it is kept and has no result yet. ErrNotFound:
	// no email of that ID is kept (never accepted, or its result was
	// removed after the retention time).
	Result(ctx context.Context, id string) (*Result, error)

	// WaitResult blocks until email id has a result, whichever process
	// sends it, and returns it; it returns ErrNotFound as Result does, and
	// ctx's error when ctx ends first. Temporary failures to reach the
	// store are waited out, not returned.
	WaitResult(ctx context.Context, id string) (*Result, error)

	// Wake returns a channel that is closed once an email may have become
	// ready since the call: accepted or released by any process, or
	// notifications were possibly missed (then it is closed too). A
	// claimer that found nothing waits on it and on Claim's next. It never
	// returns nil.
	Wake() <-chan struct{}

	// Close stops the store's own goroutines and waits for them; later
	// calls fail with ErrClosed. Emails stay as they are: held ones stay
	// held until their leases expire, so hand them back first. Safe to
	// call more than once.
	Close() error
}

// Draft is an email being accepted: its body is written to it, then
// Commit or Abort ends it. Its writes are bound by the ctx given to
// Accept. A Draft is used by one goroutine.
type Draft interface {
	// Existing reports whether the email's IdempotencyKey was accepted
	// before, and which email that is. Then writing is pointless: nothing
	// written is kept, and Commit returns that email.
	Existing() (Accepted, bool)
	// Write appends to the body. Memory stays bounded whatever the body's
	// size.
	io.Writer
	// Commit accepts the email, with meta kept as given (see
	// Claimed.Meta): when it returns, the envelope, meta and the whole
	// body are durable, and the email is ready to be claimed by any
	// process (Wake fires there). An error accepts nothing, except with
	// ErrUnavailable, when the commit may have reached the store: an
	// Accept with the same IdempotencyKey then tells.
	Commit(ctx context.Context, meta []byte) (Accepted, error)
	// Abort ends the Draft without accepting anything; after Commit it
	// does nothing. Safe to call more than once.
	Abort()
}

// Envelope is what the store keeps of an email besides its body: what it
// was given at Accept, and returns with each claim.
type Envelope struct {
	// ID names the email; unique among the emails and results kept.
	ID string `json:"id"`
	// IdempotencyKey, if not empty, makes a second Accept with the same
	// key return the first email instead of a copy, while it or its
	// result is kept.
	IdempotencyKey string                       `json:"key,omitempty"`
	From           string                       `json:"from"`
	To             []string                     `json:"to"`
	Mail           *smtp.MailOptions            `json:"mail,omitempty"`
	Rcpt           map[string]*smtp.RcptOptions `json:"rcpt,omitempty"`
	Priority       int                          `json:"priority"` // higher first
	Retries        int                          `json:"retries"`
	Immediate      bool                         `json:"immediate,omitempty"`
	Deadline       time.Time                    `json:"deadline,omitzero"`
}

// Accepted is an email the store accepted.
type Accepted struct {
	ID     string
	Queued time.Time // when the store accepted it
	// Existing is set when the email was accepted by an earlier Accept
	// with the same IdempotencyKey.
	Existing bool
}

// Token is the fencing token of one claim of one email: the holder's
// writes carry it. Attempt counts the claims of the email, this one
// included; it only grows.
type Token struct {
	ID      string
	Owner   string
	Attempt int64
}

// Claimed is an email handed to a claim holder.
type Claimed struct {
	Envelope
	// Token is this claim's fencing token, for the holder's writes.
	Token  Token
	Queued time.Time // when it was accepted
	// Meta is the meta given to Draft.Commit, as given: the Client keeps
	// there what it learnt of the body while it was written (its size as
	// sent, whether it is UTF-8), so that no claim has to read it twice.
	// It is nil for an email a store found written in a format that had
	// no meta (a spool file of before): the Client learns it from the
	// body again.
	Meta     []byte
	BodySize int64     // the body's length in bytes
	Expires  time.Time // the lease's end, by the store's clock
	// Progress is the last progress recorded (Requeue, HandBack); nil
	// when none was: no attempt was answered, every recipient in To is
	// still to be tried.
	Progress *Progress
	// Unanswered counts the Ending records after Progress: ends of data
	// whose outcome is unknown. Each was an attempt, not counted in
	// Progress.Attempts.
	Unanswered int
	// Canceled is the reason given to Cancel, when it was asked while the
	// email was held; empty otherwise. Finish it, do not send it.
	Canceled string
}

// Progress is where an email stands between attempts, as the spool's "D"
// line records it.
type Progress struct {
	Attempts int               `json:"attempts"`          // SMTP transactions that count
	Unknown  bool              `json:"unknown,omitempty"` // an attempt's outcome was unknown
	Accepted []string          `json:"accepted,omitempty"`
	Rejected map[string]string `json:"rejected,omitempty"` // address: the refusal's text
	Pending  []string          `json:"pending"`            // still to be tried
	// Error is the text of the last temporary failure, for an operator
	// (Inspector); empty when none was given.
	Error string `json:"error,omitempty"`
	// Reply is the server's reply to the end of data that delivered the
	// email to Accepted; nil before any recipient accepted it.
	Reply *Reply `json:"reply,omitempty"`
	// Kind is what the Client keeps to rebuild the refusals' errors, as
	// Result.Kind; kept as given.
	Kind string `json:"kind,omitempty"`
}

// Result is an email's result as the store keeps it: text, not Go
// errors, so that any process can read it back.
type Result struct {
	ID             string            `json:"id"`
	Delivered      bool              `json:"delivered"`
	MaybeDelivered bool              `json:"maybeDelivered,omitempty"`
	Attempts       int               `json:"attempts"`
	Accepted       []string          `json:"accepted,omitempty"`
	Rejected       map[string]string `json:"rejected,omitempty"`
	Reply          Reply             `json:"reply,omitzero"`
	// Error is the text of the result's error; empty when delivered.
	Error string `json:"error,omitempty"`
	// Kind is what the Client keeps to rebuild the result's errors so
	// that errors.Is and errors.As match them (its outcome, the sentinels
	// each error matched, the SMTP replies), in an encoding of its own
	// (the root package's stored.go: JSON); kept as given.
	Kind   string    `json:"kind,omitempty"`
	Queued time.Time `json:"queued"`
	// Finished is when the store recorded the result, set by Finish and
	// Cancel.
	Finished time.Time `json:"finished"`
}

// Reply is the server's reply to the delivering end of data.
type Reply struct {
	Code     int    `json:"code"`
	Enhanced [3]int `json:"enhanced,omitzero"`
	Message  string `json:"message,omitempty"`
}

// The sentinels. Messages start with "mxrelay: store: ".
var (
	// ErrFenced is matched by every *FencedError.
	ErrFenced = errors.New("mxrelay: store: the claim has moved on")
	// ErrCanceled is returned by Ending for an email Cancel was asked for.
	ErrCanceled = errors.New("mxrelay: store: the email was canceled")
	// ErrNotFound: no email of that ID is kept.
	ErrNotFound = errors.New("mxrelay: store: no such email")
	// ErrNotFinished: the email is kept and has no result yet.
	ErrNotFinished = errors.New("mxrelay: store: the email has no result yet")
	// ErrDuplicateID: Accept was given the ID of an email already kept.
	ErrDuplicateID = errors.New("mxrelay: store: an email with this ID is already kept")
	// ErrUnavailable is matched by an *UnavailableError.
	ErrUnavailable = errors.New("mxrelay: store: unavailable")
	// ErrClosed is returned by every method after Close.
	ErrClosed = errors.New("mxrelay: store: closed")
)

// FencedError is a write refused because its claim moved on: Token is
// what the caller held, Attempt and Owner the email's now (Owner empty:
// not held), Finished whether it has its result.
type FencedError struct {
	Token    Token
	Attempt  int64
	Owner    string
	Finished bool
}

func (e *FencedError) Error() string {
	switch {
	case e.Finished:
		return fmt.Sprintf("mxrelay: store: email %s (attempt %d) is finished", e.Token.ID, e.Token.Attempt)
	case e.Attempt != e.Token.Attempt:
		return fmt.Sprintf("mxrelay: store: email %s: attempt %d was taken over by attempt %d", e.Token.ID, e.Token.Attempt, e.Attempt)
	}
	return fmt.Sprintf("mxrelay: store: email %s (attempt %d) is no longer held by %q", e.Token.ID, e.Token.Attempt, e.Token.Owner)
}

// Is makes errors.Is(err, ErrFenced) match.
func (e *FencedError) Is(target error) bool { return target == ErrFenced }

// UnavailableError is a temporary failure to reach the store: Op is the
// method, Err the cause.
type UnavailableError struct {
	Op  string
	Err error
}

func (e *UnavailableError) Error() string {
	return fmt.Sprintf("mxrelay: store: %s: unavailable: %v", e.Op, e.Err)
}

// Unwrap returns the cause.
func (e *UnavailableError) Unwrap() error { return e.Err }

// Is makes errors.Is(err, ErrUnavailable) match.
func (e *UnavailableError) Is(target error) bool { return target == ErrUnavailable }

// Temporary reports true: the call may be made again.
func (e *UnavailableError) Temporary() bool { return true }
