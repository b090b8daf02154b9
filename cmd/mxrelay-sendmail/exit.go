package main

import (
	"context"
	"errors"

	"github.com/mxrelay/mxrelay"
)

// Exit statuses, from sysexits.h.
const (
	exOK          = 0
	exUsage       = 64 // EX_USAGE: the command line is wrong
	exDataErr     = 65 // EX_DATAERR: the message or an address is malformed
	exNoUser      = 67 // EX_NOUSER: a recipient was refused (5xx)
	exUnavailable = 69 // EX_UNAVAILABLE: the server refused the message for good
	exSoftware    = 70 // EX_SOFTWARE: an error this command does not know
	exIOErr       = 74 // EX_IOERR: reading standard input failed
	exTempFail    = 75 // EX_TEMPFAIL: try again later
	exProtocol    = 76 // EX_PROTOCOL: the relay broke the protocol
	exConfig      = 78 // EX_CONFIG: the relay, the API key or the SMTP credentials are wrong
)

// exitCode maps the outcome of Client.Send to an exit status. A message
// that reached some recipients and not others is not a success: the status
// is that of the refused recipients, and stderr says who got it. An
// unknown outcome (the message may have been delivered) and a message
// handed back unsent are EX_TEMPFAIL.
func exitCode(res *mxrelay.Result, err error) int {
	if res != nil {
		switch {
		case len(res.Rejected) > 0:
			for _, r := range res.Rejected {
				if r.Code/100 == 5 {
					return exNoUser
				}
			}
			return exTempFail
		case res.Outcome == mxrelay.OutcomeDelivered:
			return exOK
		case res.Outcome == mxrelay.OutcomeUnknown, res.Outcome == mxrelay.OutcomeHandedBack:
			return exTempFail
		}
	}
	if err == nil {
		return exOK
	}
	var se *mxrelay.SMTPError
	var ee *mxrelay.EmailError
	var pe *mxrelay.ProtocolError
	var ce *mxrelay.ConnectError
	var re *mxrelay.RelayError
	switch {
	case errors.Is(err, mxrelay.ErrAuthFailed):
		return exConfig
	case errors.Is(err, mxrelay.ErrInvalidEmail):
		return exDataErr
	case errors.Is(err, mxrelay.ErrCanceled),
		errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		// Withdrawn (a signal, the time out), or ctx's error alone from a
		// Send whose ctx had ended before it began.
		return exTempFail
	case errors.As(err, &se):
		switch {
		case se.Code/100 == 4:
			return exTempFail
		case se.Code == 530 || se.Code == 534 || se.Code == 535 || se.Code == 538:
			return exConfig // SMTP AUTH: credentials missing, refused or too weak
		}
		return exUnavailable
	case errors.As(err, &pe):
		return exProtocol
	case errors.As(err, &ce), errors.As(err, &re):
		return exTempFail
	case errors.As(err, &ee):
		if ee.Temporary() {
			return exTempFail
		}
		return exUnavailable
	}
	return exSoftware
}
