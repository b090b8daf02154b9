package main

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/stretchr/testify/assert"

	"github.com/mxrelay/mxrelay"
)

// TestExitCode maps each kind of outcome, as Client.Send reports it, to its
// sysexits.h status. The end-to-end tests in run_test.go reach the same
// statuses through a relay; this table also covers those a test relay
// cannot produce (EX_SOFTWARE, EX_PROTOCOL).
func TestExitCode(t *testing.T) {
	smtpErr := func(code int) error { return &mxrelay.SMTPError{Code: code, Message: "x"} }
	failed := func(cause error) error { return &mxrelay.EmailError{EmailID: "e", Attempts: 1, Err: cause} }
	rejected := func(errs ...error) *mxrelay.Result {
		res := &mxrelay.Result{}
		for i, err := range errs {
			var se *mxrelay.SMTPError
			errors.As(err, &se) // as the library fills Code from the refusal
			res.Rejected = append(res.Rejected, mxrelay.RecipientError{Address: fmt.Sprintf("r%d@example.com", i), Code: se.Code, Err: err})
		}
		return res
	}
	for _, tc := range []struct {
		name string
		res  *mxrelay.Result
		err  error
		want int
	}{
		{name: "delivered", res: &mxrelay.Result{Outcome: mxrelay.OutcomeDelivered, Accepted: []string{"a@example.com"}}, want: exOK},
		{name: "every recipient refused", res: rejected(smtpErr(550)), err: failed(smtpErr(550)), want: exNoUser},
		{name: "one of two refused", res: &mxrelay.Result{Outcome: mxrelay.OutcomeDelivered, Accepted: []string{"a@example.com"}, Rejected: rejected(smtpErr(550)).Rejected}, want: exNoUser},
		{name: "recipients deferred past the retries", res: rejected(smtpErr(450), smtpErr(452)), err: failed(smtpErr(450)), want: exTempFail},
		{name: "deferred and refused", res: rejected(smtpErr(450), smtpErr(550)), err: failed(smtpErr(450)), want: exNoUser},
		{name: "API key refused", err: fmt.Errorf("%w: bad key", mxrelay.ErrAuthFailed), want: exConfig},
		{name: "invalid email", err: fmt.Errorf("%w: no recipient", mxrelay.ErrInvalidEmail), want: exDataErr},
		{name: "not UTF-8 for a JSON relay", err: failed(mxrelay.ErrNotUTF8), want: exDataErr},
		{name: "unknown outcome", res: &mxrelay.Result{Outcome: mxrelay.OutcomeUnknown, MaybeDelivered: true}, err: failed(&mxrelay.UnknownOutcomeError{Err: errors.New("lost")}), want: exTempFail},
		{name: "handed back", res: &mxrelay.Result{Outcome: mxrelay.OutcomeHandedBack}, err: failed(mxrelay.ErrClosed), want: exTempFail},
		{name: "timed out", err: failed(fmt.Errorf("%w: %w", mxrelay.ErrCanceled, context.DeadlineExceeded)), want: exTempFail},
		{name: "451 to MAIL", err: failed(smtpErr(451)), want: exTempFail},
		{name: "554 to DATA", err: failed(smtpErr(554)), want: exUnavailable},
		{name: "535 to AUTH", err: failed(fmt.Errorf("set-up failed: %w", smtpErr(535))), want: exConfig},
		{name: "530 auth required", err: failed(smtpErr(530)), want: exConfig},
		{name: "relay unreachable", err: failed(&mxrelay.ConnectError{Attempts: 3, Err: errors.New("503")}), want: exTempFail},
		{name: "relay closed", err: failed(&mxrelay.RelayError{Code: 1011, Err: errors.New("closed")}), want: exTempFail},
		{name: "protocol broken", err: failed(&mxrelay.ProtocolError{Err: errors.New("bad frame")}), want: exProtocol},
		{name: "other temporary", err: failed(errors.New("connection reset")), want: exTempFail},
		{name: "other permanent", err: failed(mxrelay.ErrClosed), want: exUnavailable},
		{name: "not an EmailError", err: errors.New("surprise"), want: exSoftware},
	} {
		t.Run(tc.name, func(t *testing.T) {
			assert.Equal(t, tc.want, exitCode(tc.res, tc.err))
		})
	}
}
