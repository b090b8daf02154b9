package test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mxrelay/mxrelay"
	"github.com/mxrelay/mxrelay/internal/fakesmtp"
	"github.com/mxrelay/mxrelay/internal/testkit"
	"github.com/mxrelay/mxrelay/relaytest"
)

// ErrTimeout where an email is in the middle of its transaction when a
// deadline passes: the client's own (SessionTimeout, the email's timeout)
// match it; the caller's (Send's context, Close's) do not, and match
// context.DeadlineExceeded or ErrClosed as before. The upstream stalls at
// the command named, in each mode, on the bubble's clock.
func TestRedteam8TimeoutsMidTransaction(t *testing.T) {
	for _, tc := range []struct {
		name    string
		stall   string // the verb the upstream never answers
		opts    mxrelay.Options
		send    []mxrelay.SendOption
		sendCtx time.Duration // Send's own deadline; 0: none
		closeBy time.Duration // Close, with this deadline, once the stall is reached; 0: no Close
		timeout bool          // the error matches ErrTimeout
		is      []error
		outcome mxrelay.Outcome
	}{
		{name: "SessionTimeout cuts a stalled RCPT", stall: "RCPT", opts: mxrelay.Options{SessionTimeout: 30 * time.Second, CommandTimeout: time.Hour},
			timeout: true, is: []error{context.DeadlineExceeded}, outcome: mxrelay.OutcomeFailed},
		{name: "the email's timeout at a stalled RCPT", stall: "RCPT", opts: mxrelay.Options{CommandTimeout: time.Hour, SessionTimeout: 2 * time.Hour},
			send: []mxrelay.SendOption{mxrelay.WithTimeout(time.Minute)}, timeout: true, is: []error{mxrelay.ErrCanceled, context.DeadlineExceeded}, outcome: mxrelay.OutcomeFailed},
		{name: "Send's deadline at a stalled RCPT", stall: "RCPT", opts: mxrelay.Options{CommandTimeout: time.Hour, SessionTimeout: 2 * time.Hour},
			sendCtx: time.Minute, is: []error{mxrelay.ErrCanceled, context.DeadlineExceeded}, outcome: mxrelay.OutcomeFailed},
		{name: "Close's deadline at a stalled RCPT", stall: "RCPT", opts: mxrelay.Options{CommandTimeout: time.Hour, SessionTimeout: 2 * time.Hour},
			closeBy: time.Minute, is: []error{mxrelay.ErrClosed}, outcome: mxrelay.OutcomeHandedBack},
		{name: "Close's deadline at a stalled end of data", stall: "END", opts: mxrelay.Options{CommandTimeout: time.Hour, SessionTimeout: 2 * time.Hour},
			closeBy: time.Minute, is: []error{mxrelay.ErrUnknownOutcome}, outcome: mxrelay.OutcomeUnknown},
	} {
		for _, m := range fakesmtp.EngineModes {
			if tc.stall == "RCPT" && m.Name == "pipelined BDAT" {
				// A BDAT window writes the whole transaction at once: its
				// end of data is out before RCPT's reply, and the reply to
				// it decides (Close's deadline case below).
				continue
			}
			t.Run(tc.name+"/"+m.Name, func(t *testing.T) {
				testkit.Bubble(t, func(t *testing.T) {
					reached := make(chan struct{}, 1)
					up := testkit.NewUpstream(t, (&fakesmtp.Session{Ext: m.Ext, Enhanced: true, Answer: func(cmd fakesmtp.Cmd) ([]string, bool) {
						if cmd.Verb == tc.stall {
							reached <- struct{}{}
							return []string{"STALL"}, true
						}
						return nil, false
					}}).Serve)
					s := testkit.NewRelay(t, &relaytest.Options{UpstreamAddr: up.Addr})
					o := tc.opts
					c := testkit.NewClient(t, s, &o)
					ctx := context.Background()
					if tc.sendCtx > 0 {
						var cancel context.CancelFunc
						ctx, cancel = context.WithTimeout(ctx, tc.sendCtx)
						defer cancel()
					}
					type sent struct {
						res *mxrelay.Result
						err error
					}
					done := make(chan sent, 1)
					go func() {
						res, err := c.Send(ctx, testkit.Mail("stalled"), append(tc.send, mxrelay.WithRetries(0))...)
						done <- sent{res, err}
					}()
					if tc.closeBy > 0 {
						<-reached
						cctx, cancel := context.WithTimeout(context.Background(), tc.closeBy)
						defer cancel()
						c.Close(cctx)
					}
					got := <-done
					res, err := got.res, got.err
					require.NotNil(t, res)
					require.Error(t, err)
					assert.Equal(t, tc.outcome, res.Outcome, "%v", err)
					assert.Equal(t, tc.timeout, errors.Is(err, mxrelay.ErrTimeout), "ErrTimeout: %v", err)
					for _, is := range tc.is {
						assert.ErrorIs(t, err, is)
					}
				})
			})
		}
	}
}
