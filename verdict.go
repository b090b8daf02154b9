package mxrelay

import (
	"errors"
	"fmt"

	"github.com/mxrelay/mxrelay/internal/smtpc"
)

// attempt is what the verdict is decided from: one transaction of one
// email, as the engine reported it, and what the client asked meanwhile.
type attempt struct {
	rcpts []string      // the recipients this transaction was for, in order
	res   *smtpc.Result // the engine's report
	// broke is why the session could not run the transaction to its end,
	// as the caller should see it (the engine's error explained); nil
	// when res.Err is nil.
	broke    error
	canceled error // why the caller withdrew the email, if it did
	closing  bool  // Close gave up while the transaction ran
	// draining: the session was past its SessionTimeout (or Close's
	// deadline) and wrote no new end of data.
	draining bool
	// lastTry is set when the email's retries are used up: no attempt
	// may follow but a free try (freeTry).
	lastTry      bool
	retryUnknown bool // Options.RetryUnknown
	// slow is set when a reply of the attempt asked the client to slow
	// down (see slowDown); throttleTexts are the texts that make a 5xx
	// such a reply, temporary (nil: throttle feedback off).
	slow          bool
	throttleTexts []string
	// freeTry is set when the email has free tries left (maxFreeTries):
	// an attempt the upstream refused asking to slow down then goes
	// again even on its last try. An unknown outcome is no refusal: it
	// takes none.
	freeTry bool
}

// throttled5xx reports whether err is a 5xx the upstream sends to mean
// "slow down": temporary, not final.
func (a attempt) throttled5xx(err error) bool {
	return a.throttleTexts != nil && slowDown(err, a.throttleTexts)
}

// outcome is what becomes of the email after an attempt: what the record
// does next. It is not the Result's Outcome, which record.go's result
// sets from it (outFail with unknown set is OutcomeUnknown, outHandBack
// is OutcomeHandedBack, and any recipient accepted makes it delivered).
type outcome int

const (
	outDone     outcome = iota + 1 // every recipient is decided: delivered or refused
	outRetry                       // the recipients left go again later
	outFail                        // the recipients left are given up: the email ends
	outHandBack                    // the recipients left are handed back unsent (Close)
)

func (o outcome) String() string {
	return [...]string{"?", "done", "retry", "fail", "hand back"}[o]
}

// verdict is the fate of one attempt, decided by decide.
type verdict struct {
	outcome outcome
	// accepted are the recipients that have the email now: their RCPT
	// was answered 2xx and the end of data 2xx, on replies confirmed in
	// step.
	accepted []string
	// refused are the recipients refused for good one by one by this
	// attempt (a 5xx to their RCPT). A refusal of the whole message (a
	// 5xx to MAIL, DATA or the end of data) fails the email with its
	// recipients in left.
	refused []RecipientError
	// left are the recipients not decided (those whose RCPT got a 2xx
	// first), each with the upstream's own refusal of it in this attempt
	// (a 4xx) or nil.
	left []RecipientError
	// err is why the recipients left are left: the cause for a retry,
	// the failure of the email, or what handed it back.
	err error
	// unknown is set when the server may have the email for the
	// recipients left: its end of data was sent and no trusted reply
	// decided it.
	unknown bool
	// end is the reply to the end of data of a delivery.
	end *smtpc.Reply
	// attempt reports whether the attempt counts (Result.Attempts): an
	// attempt Close interrupted before its end of data does not.
	attempt bool
	// slow: the upstream asked the client to slow down and refused what
	// is left (the outcome is not unknown); a retry then spends no retry
	// while the email has free tries (record.go).
	slow bool
}

// decide is the verdict on attempt a. It is a pure function: the session
// applies the verdict, in one place (smtpSession.apply).
//
// The rules, after docs/protocol.md §11:
//   - delivered only on a 2xx to the email's own end of data, on a reply
//     confirmed in step (see smtpc.Result.Confirmed), and only to the
//     recipients whose RCPT got a 2xx;
//   - a 5xx is final for what it answers: MAIL, DATA or the end of data
//     for the whole email, RCPT for its recipient;
//   - a 4xx is temporary: retried while retries last;
//   - an end of data that was sent and not answered by a trusted 2xx, 4xx
//     or 5xx (no reply, a reply out of grammar or of a contradictory
//     enhanced code, a 2xx not confirmed or with an address status, any
//     reply at all when the stream broke out of step before a reply
//     confirmed it) leaves the outcome unknown: it is retried only with
//     RetryUnknown;
//   - withdrawn by the caller: fails with the cancellation, unless the
//     end of data was sent (then the reply decides, and no retry follows);
//   - interrupted by Close before its end of data: handed back unsent, and
//     not counted as an attempt; stopped there by a session past its
//     SessionTimeout: sent again, not counted either.
func decide(a attempt) verdict {
	res := a.res
	v := verdict{attempt: true, slow: a.slow}
	if a.draining && a.canceled == nil && !res.EndSent && errors.Is(res.Err, smtpc.ErrWithdrawn) {
		// The session stopped it before its end of data, not the server
		// nor the caller: it goes in the next session, and the attempt
		// does not count.
		v.attempt, a.lastTry = false, false
	}
	if res.Body != nil {
		v.outcome, v.err = outFail, bodyErr(res.Body)
		v.left = pending(a.rcpts, nil)
		return v
	}
	switch {
	case a.canceled != nil && !res.EndSent:
		// Withdrawn before its end of data: nothing of it can be
		// delivered, whatever the replies said. Withdrawn because its end
		// of data could not be recorded in the spool: handed back there.
		v.outcome, v.err = outFail, a.canceled
		if errors.Is(a.canceled, ErrSpooled) {
			v.outcome = outHandBack
		}
		v.left = pending(a.rcpts, nil)
		return v
	case a.closing && !res.EndSent:
		v.outcome, v.err, v.attempt = outHandBack, ErrClosed, false
		v.left = pending(a.rcpts, nil)
		return v
	case res.Untrusted && res.EndSent:
		// The stream was found shifted before its replies were confirmed:
		// whatever it was answered may be another command's reply.
		return a.settle(v, pending(a.rcpts, nil), a.unknownErr(), true)
	case res.Untrusted:
		// Nothing of it was processed as an email: sent again.
		return a.settle(v, pending(a.rcpts, nil), a.brokeErr(), false)
	case res.Mail != nil:
		return a.settle(v, pending(a.rcpts, nil), res.Mail, false)
	}
	// Per recipient, by its own RCPT reply.
	var candidates []string
	var rcptLeft []RecipientError
	for i, to := range a.rcpts {
		switch e := res.Rcpt[i]; {
		case i >= res.RcptAnswered:
			rcptLeft = append(rcptLeft, RecipientError{Address: to})
		case e == nil:
			candidates = append(candidates, to)
		case e.Code/100 == 5 && !a.throttled5xx(e):
			v.refused = append(v.refused, recipientError(to, e))
		default:
			rcptLeft = append(rcptLeft, recipientError(to, e))
		}
	}
	end := res.End
	switch {
	case len(candidates) == 0 && res.RcptAnswered == len(a.rcpts):
		// Every recipient answered, none accepted: the message went to
		// nobody, whatever was said to its data (a refusal for lack of
		// recipients, as RFC 2920 asks).
		return a.settle(v, rcptLeft, firstErr(rcptLeft), false)
	case end != nil && end.Code/100 == 2 && res.Confirmed && !end.BadEnhanced && !end.AddressStatus():
		v.accepted, v.end = candidates, end
		return a.settle(v, rcptLeft, firstErr(rcptLeft), false)
	case end != nil && !end.BadEnhanced && (end.Code/100 == 4 || end.Code/100 == 5):
		// Refused as a whole: trusted even when not confirmed, since a
		// refusal delivers nothing.
		return a.settle(v, append(pending(candidates, nil), rcptLeft...), end.Err(), false)
	case end != nil || res.EndSent:
		// Sent, and no trusted answer: a 2xx not confirmed in step, a
		// reply out of grammar, or none.
		return a.settle(v, append(pending(candidates, nil), rcptLeft...), a.unknownErr(), true)
	case res.DataCmd != nil:
		return a.settle(v, append(pending(candidates, nil), rcptLeft...), res.DataCmd, false)
	}
	return a.settle(v, append(pending(candidates, nil), rcptLeft...), a.brokeErr(), false)
}

// smtp5xx reports an *SMTPError with a 5xx code in err's chain. (A
// function of its own: the variable errors.As fills escapes, and would be
// allocated by settle on every call, the common ones with nothing left.)
func smtp5xx(err error) bool {
	var se *SMTPError
	return errors.As(err, &se) && se.Code/100 == 5
}

// brokeErr is the cause of an attempt that ended before its end of data.
func (a attempt) brokeErr() error {
	if a.broke != nil {
		return a.broke
	}
	return &ProtocolError{Err: errors.New("SMTP: the transaction ended without its end of data")}
}

// settle decides what becomes of the recipients left by an attempt that
// ended with cause: failed for good when it is a 5xx, otherwise retried,
// failed or handed back.
func (a attempt) settle(v verdict, left []RecipientError, cause error, unknown bool) verdict {
	v.left, v.unknown = left, unknown && len(left) > 0
	if v.unknown {
		// The upstream may have it: a "slow down" it said meanwhile did
		// not refuse it, and sending it again is a retry, never free.
		v.slow = false
	}
	if v.slow && a.freeTry {
		a.lastTry = false
	}
	switch {
	case len(left) > 0 && smtp5xx(cause) && !unknown && !a.throttled5xx(cause):
		// Refused as a whole (MAIL, DATA, the end of data): the email
		// fails with it; the recipients are not refused one by one.
		v.outcome, v.err = outFail, cause
		return v
	case len(left) == 0:
		v.outcome = outDone
		if len(v.accepted) == 0 && len(v.refused) > 0 {
			v.err = v.refused[0].Err
		}
		return v
	case v.unknown && (!a.retryUnknown || a.canceled != nil):
		// The missing reply decides, not a cancel that came too late.
		v.outcome, v.err = outFail, cause
		return v
	case a.canceled != nil:
		// Withdrawn, and the end of data's reply did not deliver it: no
		// further attempt. Both causes are shown.
		v.outcome, v.err = outFail, fmt.Errorf("%w (last attempt: %w)", a.canceled, cause)
		return v
	case a.closing && (!v.attempt || (!a.lastTry && temporary(cause))):
		// Close interrupted it, and it could go again: handed back. An
		// attempt that counted (its end of data went out) and was the last
		// one, or that failed for good, fails as it would without Close:
		// a next Client must not send it past its retries.
		v.outcome, v.err = outHandBack, fmt.Errorf("%w (last attempt: %w)", ErrClosed, cause)
		return v
	case a.lastTry || !temporary(cause) && !a.throttled5xx(cause):
		v.outcome, v.err = outFail, cause
		return v
	}
	v.outcome, v.err = outRetry, cause
	return v
}

// unknownErr is the cause of an attempt whose end of data was sent and
// not answered by a trusted reply.
func (a attempt) unknownErr() error {
	switch end := a.res.End; {
	case end == nil:
		return &UnknownOutcomeError{Err: a.broke}
	case a.res.Untrusted && end.AddressStatus():
		return &UnknownOutcomeError{Err: &ProtocolError{Err: fmt.Errorf("SMTP: reply %q to the end of data has an address status (RFC 3463 X.1.X), as MAIL's and RCPT's do: the replies are out of step with the commands", end.String())}}
	case a.res.Untrusted && end.Code/100 != 3 && !end.BadEnhanced:
		return &UnknownOutcomeError{Err: &ProtocolError{Err: fmt.Errorf("SMTP: reply %q to the end of data cannot be trusted: a later reply showed the replies out of step with the commands", end.String())}}
	case end.Code/100 == 2 && !end.BadEnhanced:
		err := a.broke
		if err == nil {
			err = errors.New("the connection ended before the replies were confirmed in step")
		}
		return &UnknownOutcomeError{Err: fmt.Errorf("%d to the end of data, not confirmed by the next reply: %w", end.Code, err)}
	default:
		return &UnknownOutcomeError{Err: &ProtocolError{Err: fmt.Errorf("SMTP: reply %q to the end of data is outside its grammar", end.String())}}
	}
}

// pending lists addrs as recipients left, with err.
func pending(addrs []string, err error) []RecipientError {
	out := make([]RecipientError, len(addrs))
	for i, a := range addrs {
		out[i] = recipientError(a, err)
	}
	return out
}

func firstErr(rs []RecipientError) error {
	for _, r := range rs {
		if r.Err != nil {
			return r.Err
		}
	}
	return nil
}
