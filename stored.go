package mxrelay

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"os"
	"slices"
	"strings"

	"github.com/mxrelay/mxrelay/internal/store"
)

// What the store keeps of a Result is text (store.Result), so that any
// process, or a later Client, can read it back: its Kind says, besides
// the outcome, what the text of each error cannot, which of the
// package's sentinels it matched and the SMTP reply it carried, so that
// the Result read back matches errors.Is and errors.As as the original
// did.

// kindRecord is store.Result.Kind, as JSON. A Kind that is not JSON is
// the outcome's name alone (the records of earlier versions).
type kindRecord struct {
	Outcome  string        `json:"outcome"`
	ID       string        `json:"id,omitempty"` // Email.ID, when the store's ID is not it
	Priority Priority      `json:"priority,omitempty"`
	Session  string        `json:"session,omitempty"`
	Err      *errorRecord  `json:"err,omitempty"`
	Rejected []errorRecord `json:"rejected,omitempty"` // in Result.Rejected's order
}

// errorRecord is what is kept of an error besides its text.
type errorRecord struct {
	Address string   `json:"address,omitempty"` // the recipient's, in Rejected
	Text    string   `json:"text,omitempty"`    // EmailError.Err's text (a recipient's is in store.Result.Rejected)
	Is      []string `json:"is,omitempty"`      // the names of the sentinels it matches
	SMTP    *Reply   `json:"smtp,omitempty"`    // the *SMTPError it holds
}

// sentinels are the errors a Result's errors are matched against, by the
// names the store keeps.
var sentinels = []struct {
	name string
	err  error
}{
	{"closed", ErrClosed}, {"spooled", ErrSpooled}, {"auth", ErrAuthFailed},
	{"unknown", ErrUnknownOutcome}, {"invalid", ErrInvalidEmail}, {"canceled", ErrCanceled},
	{"bare_line_ending", ErrBareLineEnding}, {"line_too_long", ErrLineTooLong}, {"not_utf8", ErrNotUTF8},
	{"timeout", ErrTimeout}, {"deadline", context.DeadlineExceeded}, {"context_canceled", context.Canceled},
	{"os_deadline", os.ErrDeadlineExceeded}, {"setup", errPermanentSetup}, {"body", errBody},
}

// recordError is what the store keeps of err besides its text.
func recordError(err error) errorRecord {
	var r errorRecord
	for _, s := range sentinels {
		if errors.Is(err, s.err) {
			r.Is = append(r.Is, s.name)
		}
	}
	var se *SMTPError
	if errors.As(err, &se) {
		r.SMTP = &Reply{Code: se.Code, EnhancedCode: se.EnhancedCode, Message: se.Message}
	}
	return r
}

// storedError is an error read back from the store: its text, and what
// the original matched.
type storedError struct {
	text string
	is   []error
	smtp *SMTPError
}

func (e *storedError) Error() string { return e.text }

// Is matches the sentinels the original matched.
func (e *storedError) Is(target error) bool { return slices.Contains(e.is, target) }

// Unwrap returns the SMTP reply the original held, if any.
func (e *storedError) Unwrap() error {
	if e.smtp == nil {
		return nil
	}
	return e.smtp
}

// error is the error r and text say.
func (r *errorRecord) error(text string) error {
	e := &storedError{text: text}
	for _, name := range r.Is {
		for _, s := range sentinels {
			if s.name == name {
				e.is = append(e.is, s.err)
			}
		}
	}
	if r.SMTP != nil {
		e.smtp = &SMTPError{Code: r.SMTP.Code, EnhancedCode: r.SMTP.EnhancedCode, Message: r.SMTP.Message}
	}
	return e
}

// storeResult is res as the store keeps it, for email sid.
func (c *Client) storeResult(sid string, res *Result) *store.Result {
	if !c.keepsResults {
		// Read by no one: the memory store keeps no result.
		return &store.Result{ID: sid, Delivered: res.Outcome == OutcomeDelivered, Attempts: res.Attempts, Queued: res.Queued}
	}
	return storeResult(sid, res)
}

// storeResult is res as the store keeps it, for email sid, kind and all.
func storeResult(sid string, res *Result) *store.Result {
	r := &store.Result{
		ID: sid, Delivered: res.Outcome == OutcomeDelivered, MaybeDelivered: res.MaybeDelivered,
		Attempts: res.Attempts, Accepted: res.Accepted, Rejected: rejectedText(res.Rejected),
		Reply:  store.Reply{Code: res.Reply.Code, Enhanced: res.Reply.EnhancedCode, Message: res.Reply.Message},
		Queued: res.Queued,
	}
	k := kindRecord{Outcome: strings.ToLower(res.Outcome.String()), Priority: res.Priority, Session: res.SessionID}
	if res.EmailID != sid {
		k.ID = res.EmailID
	}
	if res.Err != nil {
		r.Error = res.Err.Error()
		cause := res.Err
		var ee *EmailError
		if errors.As(res.Err, &ee) && ee.Err != nil {
			cause = ee.Err
		}
		e := recordError(cause)
		e.Text = cause.Error()
		k.Err = &e
	}
	k.Rejected = recordRefusals(res.Rejected)
	b, _ := json.Marshal(k) // of plain fields: it cannot fail
	r.Kind = string(b)
	return r
}

// outcomes are the Outcomes by the names the store keeps.
var outcomes = map[string]Outcome{
	"delivered": OutcomeDelivered, "failed": OutcomeFailed, "unknown": OutcomeUnknown, "handed_back": OutcomeHandedBack,
}

// resultOf is the Result r says, for the Handle of Email.ID id (empty:
// the ID r keeps).
func resultOf(id string, r *store.Result) *Result {
	var k kindRecord
	if json.Unmarshal([]byte(r.Kind), &k) != nil {
		k = kindRecord{Outcome: r.Kind}
	}
	id = cmp.Or(id, k.ID, r.ID)
	res := &Result{
		EmailID: id, Priority: k.Priority, Outcome: outcomes[k.Outcome], Accepted: r.Accepted,
		Reply:    Reply{Code: r.Reply.Code, EnhancedCode: r.Reply.Enhanced, Message: r.Reply.Message},
		Attempts: r.Attempts, SessionID: k.Session, MaybeDelivered: r.MaybeDelivered,
		Queued: r.Queued, Duration: r.Finished.Sub(r.Queued),
	}
	if res.Outcome == 0 {
		res.Outcome = OutcomeFailed
		if r.Delivered {
			res.Outcome = OutcomeDelivered
		}
	}
	res.Rejected = refusals(r.Rejected, k.Rejected)
	if res.Outcome != OutcomeDelivered {
		var cause error
		switch {
		case k.Err != nil:
			cause = k.Err.error(k.Err.Text)
		case r.Error != "":
			// A record of before the kind: the cause is the text after
			// what EmailError puts before it.
			text := r.Error
			if p := (&EmailError{EmailID: id, Attempts: r.Attempts, Err: errors.New("")}).Error(); strings.HasPrefix(text, p) {
				text = text[len(p):]
			}
			cause = errors.New(text)
		default:
			cause = fmt.Errorf("%w: no recipient accepted", ErrInvalidEmail)
		}
		res.Err = &EmailError{EmailID: id, Attempts: r.Attempts, Err: cause}
	}
	return res
}

// recordRefusals is what the store keeps of the refusals rs besides
// their texts, in their order.
func recordRefusals(rs []RecipientError) []errorRecord {
	var out []errorRecord
	for _, r := range rs {
		e := recordError(r.Err)
		e.Address = r.Address
		out = append(out, e)
	}
	return out
}

// refusals are the recipients refused, read back from their texts
// (address: text) and recs: in recs' order, with the errors they say;
// those recs does not name follow, by address, with their texts alone.
func refusals(texts map[string]string, recs []errorRecord) []RecipientError {
	var out []RecipientError
	done := map[string]bool{}
	for _, e := range recs {
		if text, ok := texts[e.Address]; ok && !done[e.Address] {
			done[e.Address] = true
			out = append(out, recipientError(e.Address, e.error(text)))
		}
	}
	for _, to := range slices.Sorted(maps.Keys(texts)) {
		if !done[to] {
			out = append(out, recipientError(to, errors.New(texts[to])))
		}
	}
	return out
}

// progressKind is store.Progress.Kind for the refusals rs: what their
// errors were, as JSON; empty for none.
func progressKind(rs []RecipientError) string {
	if len(rs) == 0 {
		return ""
	}
	b, _ := json.Marshal(recordRefusals(rs)) // of plain fields: it cannot fail
	return string(b)
}

// progressRefusals are the refusals p records.
func progressRefusals(p *store.Progress) []RecipientError {
	var recs []errorRecord
	if p.Kind != "" {
		json.Unmarshal([]byte(p.Kind), &recs) // not JSON: by their texts alone
	}
	return refusals(p.Rejected, recs)
}

// Result returns the result of email id (Email.ID, or the ID a Handle
// has) as the store keeps it, whichever Client recorded it: an earlier
// one on the same SpoolDir, or any process on the same Store. The store
// keeps results for Options.ResultRetention (a Store, for its own
// option); the memory store keeps none by default. The Result read back
// keeps the Outcome, the recipients accepted and refused (each refusal's
// SMTP code and text), Reply, Attempts, MaybeDelivered, Priority and
// SessionID, and an Err whose text is the original's and that errors.Is
// (and errors.As, for an *SMTPError) matches as the original did. It
// fails with an error matching ErrNoSuchEmail when the store keeps no
// email of that ID, ErrNotFinished when the email is kept and has no
// result yet, ErrClosed after Close, and with the store's error when it
// cannot be reached (a Store's database). Two emails given the same
// Email.ID are kept under IDs of their own: Result finds the first.
func (c *Client) Result(ctx context.Context, id string) (*Result, error) {
	c.mu.Lock()
	closed := c.followed
	c.mu.Unlock()
	if closed {
		return nil, ErrClosed
	}
	r, err := c.st.Result(ctx, id)
	switch {
	case errors.Is(err, store.ErrNotFound):
		return nil, fmt.Errorf("%w: %q", ErrNoSuchEmail, id)
	case errors.Is(err, store.ErrNotFinished):
		return nil, fmt.Errorf("%w: %q", ErrNotFinished, id)
	case errors.Is(err, store.ErrClosed):
		return nil, ErrClosed
	case err != nil:
		return nil, fmt.Errorf("mxrelay: the result of %q: %w", id, err)
	}
	return resultOf("", r), nil
}
