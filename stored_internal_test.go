package mxrelay

import (
	"context"
	"errors"
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mxrelay/mxrelay/internal/store"
)

// A Result read back from the store (resultOf of storeResult) says what
// the Result said: its outcome, recipients and reply, and errors whose
// text is the original's and that errors.Is and errors.As match as the
// original's did, for each kind of ending.
func TestResultReadBackFromTheStore(t *testing.T) {
	queued := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	refusal := &SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: "no such user"}
	full := &SMTPError{Code: 452, EnhancedCode: smtp.EnhancedCode{4, 2, 2}, Message: "mailbox full"}
	canceled := classify(fmt.Errorf("%w: %w: email timeout of %v", ErrCanceled, context.DeadlineExceeded, time.Second))
	for _, tc := range []struct {
		name string
		res  *Result
	}{
		{"delivered, one recipient refused", &Result{Outcome: OutcomeDelivered, Accepted: []string{"b@example.com"},
			Rejected: []RecipientError{recipientError("bad@example.com", refusal)},
			Reply:    Reply{Code: 250, EnhancedCode: [3]int{2, 0, 0}, Message: "queued as 42"}, Priority: PriorityHigh}},
		{"refused as a whole", &Result{Outcome: OutcomeFailed,
			Err: &EmailError{Attempts: 1, Err: &SMTPError{Code: 554, EnhancedCode: smtp.EnhancedCode{5, 7, 1}, Message: "spam"}}}},
		{"retries used up", &Result{Outcome: OutcomeFailed, Rejected: []RecipientError{recipientError("b@example.com", full)},
			Err: &EmailError{Attempts: 4, Err: full}}},
		{"its own timeout", &Result{Outcome: OutcomeFailed, Err: &EmailError{Err: canceled}}},
		{"unknown", &Result{Outcome: OutcomeUnknown, MaybeDelivered: true,
			Err: &EmailError{Attempts: 1, Err: &UnknownOutcomeError{Err: classify(os.ErrDeadlineExceeded)}}}},
		{"handed back", &Result{Outcome: OutcomeHandedBack, Err: &EmailError{Err: fmt.Errorf("%w: %w", ErrClosed, ErrSpooled)}}},
		{"not UTF-8", &Result{Outcome: OutcomeFailed, Err: &EmailError{Attempts: 1, Err: ErrNotUTF8}}},
		{"refused key", &Result{Outcome: OutcomeFailed, Err: &EmailError{Err: fmt.Errorf("%w: no such key", ErrAuthFailed)}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			want := tc.res
			want.EmailID, want.Queued, want.Attempts, want.SessionID = "e1", queued, 2, "s7"
			if ee, ok := want.Err.(*EmailError); ok {
				ee.EmailID, ee.Attempts = "e1", 2
			}
			r := storeResult("e1~x", want)
			r.Finished = queued.Add(time.Minute)
			got := resultOf("", r)
			assert.Equal(t, view(want), view(got))
			assert.Equal(t, "e1", got.EmailID, "Email.ID, not the store's")
			assert.Equal(t, time.Minute, got.Duration)
			if want.Err != nil {
				var ee *EmailError
				require.ErrorAs(t, got.Err, &ee)
				assert.Equal(t, want.Err.(*EmailError).Temporary(), ee.Temporary())
			}
		})
	}
}

// view is what res says, in values that compare: its errors as their
// texts, the sentinels they match and the SMTP reply they hold.
func view(res *Result) []any {
	v := []any{res.EmailID, res.Outcome, res.Priority, res.Accepted, res.Reply, res.Attempts, res.MaybeDelivered,
		res.SessionID, res.Queued, errView(res.Err)}
	for _, r := range res.Rejected {
		v = append(v, r.Address, r.Code, r.EnhancedCode, r.Message, r.Error(), errView(r.Err))
	}
	return v
}

// errView is err's text, which sentinels it matches, and its SMTP reply.
func errView(err error) []any {
	if err == nil {
		return nil
	}
	v := []any{err.Error()}
	for _, s := range sentinels {
		v = append(v, errors.Is(err, s.err))
	}
	var se *SMTPError
	if errors.As(err, &se) {
		v = append(v, *se)
	}
	return v
}

// A result recorded before the kind was kept as JSON (its outcome's name
// alone) is read back by its outcome, with its texts.
func TestResultReadBackFromAnOlderRecord(t *testing.T) {
	got := resultOf("", &store.Result{ID: "e1", Attempts: 1, Error: "mxrelay: email e1 not delivered after 1 attempt(s): SMTP error 554: no",
		Rejected: map[string]string{"b@example.com": "SMTP error 550: no"}, Kind: "failed"})
	assert.Equal(t, OutcomeFailed, got.Outcome)
	require.Len(t, got.Rejected, 1)
	assert.Equal(t, "b@example.com", got.Rejected[0].Address)
	var ee *EmailError
	require.ErrorAs(t, got.Err, &ee)
	assert.Equal(t, "mxrelay: email e1 not delivered after 1 attempt(s): SMTP error 554: no", got.Err.Error())
	got = resultOf("", &store.Result{ID: "e2", Delivered: true, Accepted: []string{"b@example.com"}, Kind: "delivered"})
	assert.Equal(t, OutcomeDelivered, got.Outcome)
	assert.NoError(t, got.Err)
}

// The refusals an email's progress records (a retry, a hand back) are
// read back with their SMTP replies and sentinels, in their order, by
// whichever Client resumes it; a progress without the kind, by text.
func TestRefusalsReadBackFromProgress(t *testing.T) {
	rs := []RecipientError{
		recipientError("z@example.com", &SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: "no such user"}),
		recipientError("a@example.com", fmt.Errorf("%w: %w", ErrClosed, ErrSpooled)),
	}
	p := &store.Progress{Rejected: rejectedText(rs), Kind: progressKind(rs)}
	got := progressRefusals(p)
	require.Len(t, got, 2)
	for i := range rs {
		assert.Equal(t, view(&Result{Rejected: rs[i : i+1]}), view(&Result{Rejected: got[i : i+1]}))
	}
	p.Kind = ""
	got = progressRefusals(p)
	require.Len(t, got, 2)
	assert.Equal(t, "a@example.com", got[0].Address, "by address")
	assert.Equal(t, rs[1].Err.Error(), got[0].Err.Error())
	assert.Zero(t, got[1].Code)
	assert.Empty(t, progressKind(nil))
}
