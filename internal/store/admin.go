package store

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"slices"
	"time"
)

// The operator's side of a store (cmd/mxrelay-queue): Inspector reads
// what a store keeps, Admin changes it. Neither is part of Store: the
// Client never calls them, and nothing on a claim's path looks at them
// beyond the one fact they add, that an email may be on hold. ("Held" in
// Store's docs is a claim's; an email on hold is in StateHeld, held by
// no claim.)
//
// Emails on hold: an email on hold is kept as it is, with its progress
// and its Ending records, and no Claim takes it, whatever its retry time
// or its lease, until Release: in every process, and after a restart.
// Cancel still finishes it.
//
// Claimed emails: Hold and Delete refuse an email a claim holds (a
// *ClaimedError) unless forced. Forced, they fence the holder first: its
// claim is released, so that every later write of its token (Renew,
// Ending, Requeue, HandBack, Finish) is refused with a *FencedError, and
// no end of data follows. An Ending the holder made before stays
// unanswered: an email on hold claimed after its Release is an unknown
// outcome (Claimed.Unanswered), and a deleted one's result says it may
// have been delivered. That is the safe side: a holder that wrote its
// end of data may have delivered the email, and nothing the store does
// can take that back.

// State is where an email stands, as an operator sees it.
type State string

// The states, in the order StateOf decides them.
const (
	StateFinished State = "finished" // it has its result
	StateHeld     State = "held"     // Admin.Hold: no claim takes it until Release
	StateClaimed  State = "claimed"  // a claim holds it (Owner, Expires)
	StateDeferred State = "deferred" // waiting for its retry time (NotBefore)
	StateReady    State = "ready"    // any claim may take it now
)

// States are the states, in the order a listing shows them.
var States = []State{StateReady, StateDeferred, StateClaimed, StateHeld, StateFinished}

// StateOf is the state of an email that is finished, on hold, claimed
// and waiting for a retry time (or not), as these facts decide it: one
// rule for every store. A store reads waiting by its own clock
// (pgstore's is the server's).
func StateOf(finished, onHold, claimed, waiting bool) State {
	switch {
	case finished:
		return StateFinished
	case onHold:
		return StateHeld
	case claimed:
		return StateClaimed
	case waiting:
		return StateDeferred
	}
	return StateReady
}

// Info is what a store says of one email to an operator.
type Info struct {
	Envelope
	State    State     `json:"state"`
	Queued   time.Time `json:"queued"`
	BodySize int64     `json:"bodySize"`
	// Attempt counts the claims of the email: the last fencing token's.
	Attempt int64 `json:"claims"`
	// Owner and Expires are the claim's holder and its lease's end, while
	// it is claimed; a lease that ran out is still its holder's until a
	// claim takes the email over.
	Owner   string    `json:"owner,omitempty"`
	Expires time.Time `json:"leaseExpires,omitzero"`
	// NotBefore is the retry time the last attempt set; zero when none.
	NotBefore time.Time `json:"notBefore,omitzero"`
	// Progress is the last progress recorded (nil: no attempt answered),
	// Unanswered the Ending records after it (see Claimed).
	Progress   *Progress `json:"progress,omitempty"`
	Unanswered int       `json:"unanswered,omitempty"`
	Canceled   string    `json:"canceled,omitempty"`
	// Result is the email's result, when it is finished.
	Result *Result `json:"result,omitempty"`
}

// Attempts is how many SMTP transactions of the email count so far, its
// unanswered ends of data included (each was an attempt).
func (i *Info) Attempts() int {
	if i.Result != nil {
		return i.Result.Attempts
	}
	n := i.Unanswered
	if i.Progress != nil {
		n += i.Progress.Attempts
	}
	return n
}

// LastError is the text of the email's last failure: its result's error,
// or the last temporary failure its progress records; empty when none is
// known.
func (i *Info) LastError() string {
	switch {
	case i.Result != nil:
		return i.Result.Error
	case i.Progress != nil:
		return i.Progress.Error
	}
	return ""
}

// Filter chooses the emails a listing returns.
type Filter struct {
	// States are the states listed; empty: every state but finished.
	States []State
}

// Has reports whether f lists emails in state st.
func (f Filter) Has(st State) bool {
	if len(f.States) == 0 {
		return st != StateFinished
	}
	return slices.Contains(f.States, st)
}

// Inspector reads what a store keeps, for an operator, while processes
// use the store. Its methods are safe for concurrent use. What it
// returns is the store's at one moment: an email finished or claimed a
// moment later is not shown so.
type Inspector interface {
	// List returns the emails in the states f lists: the unfinished ones
	// in the order claims take them (highest Priority first, then in
	// order of acceptance), then the finished ones, the last finished
	// first. Result is set on the finished ones.
	List(ctx context.Context, f Filter) ([]*Info, error)
	// Inspect returns email id's Info, with its Result once finished.
	// ErrNotFound: no email or result of that ID is kept.
	Inspect(ctx context.Context, id string) (*Info, error)
	// Counts returns how many emails are in each state: every state of
	// States has an entry.
	Counts(ctx context.Context) (map[State]int, error)
	// Body returns email id's body, as Store.Body does: ErrNotFound once
	// it is finished.
	Body(ctx context.Context, id string) (io.ReadCloser, error)
}

// Admin changes what a store keeps, for an operator. Each method acts on
// one email, as one step under the store's lock of it, and returns its
// Info as it was just before (nil when there was no such email), with
// changed false when there was nothing to do. Errors, matched with
// errors.Is or errors.As: ErrNotFound, ErrFinished, *ClaimedError
// (ErrClaimed), ErrClosed, ErrUnavailable (as for Store: the change may
// have been made all the same).
type Admin interface {
	// Hold puts email id on hold (see the top of admin.go): no Claim
	// takes it until Release. An email a claim holds is refused unless
	// force; forced, its holder is fenced. An email on hold already is
	// left as it is.
	Hold(ctx context.Context, id string, force bool) (before *Info, changed bool, err error)
	// Release takes email id off hold: claimable again, at its retry
	// time if it has one. An email not on hold is left as it is.
	Release(ctx context.Context, id string) (before *Info, changed bool, err error)
	// Retry clears email id's retry time: it is ready now (still on hold
	// if it is). An email that waits for no retry time is left as it is;
	// one that a claim holds is refused: it is being tried.
	Retry(ctx context.Context, id string) (before *Info, changed bool, err error)
	// Delete removes email id from the queue: its body goes, and it ends
	// with the result DeletedResult gives, kept as any result is (Result
	// and WaitResult return it, its IdempotencyKey stays taken). An email
	// a claim holds is refused unless force; forced, its holder is
	// fenced first.
	Delete(ctx context.Context, id string, force bool) (before *Info, changed bool, err error)
}

// More sentinels, for Admin.
var (
	// ErrFinished: the email has its result; there is nothing to change.
	ErrFinished = errors.New("mxrelay: store: the email is finished")
	// ErrClaimed is matched by every *ClaimedError.
	ErrClaimed = errors.New("mxrelay: store: the email is claimed")
)

// ClaimedError is an Admin change refused because a claim holds the
// email: who holds it, which claim, and until when.
type ClaimedError struct {
	ID      string
	Owner   string
	Attempt int64
	Expires time.Time
}

func (e *ClaimedError) Error() string {
	return fmt.Sprintf("mxrelay: store: email %s is claimed by %s (claim %d, lease until %s)",
		e.ID, e.Owner, e.Attempt, e.Expires.UTC().Format(time.RFC3339))
}

// Is makes errors.Is(err, ErrClaimed) match.
func (e *ClaimedError) Is(target error) bool { return target == ErrClaimed }

// Op is an Admin change.
type Op int

// The Admin changes.
const (
	OpHold Op = iota
	OpRelease
	OpRetry
	OpDelete
)

// Decide says what op does at now to the email i describes (nil: there
// is no such email): an error when it is refused, or whether there is
// anything to do. The one rule of every store's Admin.
func Decide(op Op, i *Info, force bool, now time.Time) (change bool, err error) {
	switch {
	case i == nil:
		return false, ErrNotFound
	case i.State == StateFinished:
		return false, ErrFinished
	}
	claimed := i.State == StateClaimed
	switch op {
	case OpHold:
		if claimed && !force {
			return false, i.claimedError()
		}
		return i.State != StateHeld, nil
	case OpRelease:
		return i.State == StateHeld, nil
	case OpRetry:
		if claimed {
			return false, i.claimedError()
		}
		return i.NotBefore.After(now), nil
	case OpDelete:
		if claimed && !force {
			return false, i.claimedError()
		}
		return true, nil
	}
	return false, fmt.Errorf("mxrelay: store: unknown admin op %d", op)
}

func (i *Info) claimedError() error {
	return &ClaimedError{ID: i.ID, Owner: i.Owner, Attempt: i.Attempt, Expires: i.Expires}
}

// DeletedError is the error text of a deleted email's result.
const DeletedError = "mxrelay: deleted from the queue by an operator"

// DeletedKind is the Kind of a deleted email's result.
const DeletedKind = "deleted"

// DeletedResult is the result of the email i describes, deleted: the
// recipients its progress says have it stay accepted (it is delivered to
// them), those refused stay refused, and every other one is refused with
// DeletedError. An end of data left unanswered, or an unknown outcome
// before, makes it MaybeDelivered.
func DeletedResult(i *Info) *Result {
	p := i.Progress
	if p == nil {
		p = &Progress{Pending: i.To}
	}
	r := &Result{
		ID:             i.ID,
		Delivered:      len(p.Accepted) > 0,
		MaybeDelivered: p.Unknown || i.Unanswered > 0,
		Attempts:       p.Attempts + i.Unanswered,
		Accepted:       slices.Clone(p.Accepted),
		Rejected:       maps.Clone(p.Rejected),
		Error:          DeletedError,
		Kind:           DeletedKind,
		Queued:         i.Queued,
	}
	for _, to := range p.Pending {
		if r.Rejected == nil {
			r.Rejected = map[string]string{}
		}
		r.Rejected[to] = DeletedError
	}
	return r
}
