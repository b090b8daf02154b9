package mxrelay_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/mxrelay/mxrelay"
	"github.com/mxrelay/mxrelay/internal/testkit"
	"github.com/mxrelay/mxrelay/relaytest"
)

// Send's context cancelled, and Close given a short context, at phases
// where the client waits on the relay (no READY) or on the upstream (a
// stalled MAIL, RCPT, DATA, end of data), in lock-step and pipelined
// modes: Send and Close return promptly, the email ends once, and no
// goroutine is left after Close. Held at the time of writing.
func TestRedTeamCancelAndCloseAtEveryStall(t *testing.T) {
	for _, tc := range []struct {
		name  string
		fault relaytest.Fault
		opts  mxrelay.Options
	}{
		{"no READY", relaytest.Fault{Kind: relaytest.IgnoreChannel, Times: -1}, mxrelay.Options{}},
		{"stalled MAIL, lock-step", relaytest.Fault{Kind: relaytest.StallReply, Command: "MAIL"}, mxrelay.Options{DisablePipelining: true}},
		{"stalled RCPT, pipelined", relaytest.Fault{Kind: relaytest.StallReply, Command: "RCPT"}, mxrelay.Options{}},
		{"stalled BDAT, lock-step", relaytest.Fault{Kind: relaytest.StallReply, Command: "BDAT"}, mxrelay.Options{DisablePipelining: true}},
		{"stalled end of data, pipelined", relaytest.Fault{Kind: relaytest.StallReply, Command: "."}, mxrelay.Options{}},
		{"stalled end of data, lock-step", relaytest.Fault{Kind: relaytest.StallReply, Command: "."}, mxrelay.Options{DisablePipelining: true}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
			s := relaytest.NewServer(nil)
			defer s.Close()
			s.Inject(tc.fault)
			o := tc.opts
			o.CommandTimeout, o.ChannelTimeout = 2*time.Second, 30*time.Second
			c, err := mxrelay.New(s.URL, s.APIKey, testkit.Fast(&o))
			require.NoError(t, err)
			ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
			defer cancel()
			start := time.Now()
			res, err := c.Send(ctx, testkit.Mail("stalled"))
			took := time.Since(start)
			require.Error(t, err)
			require.NotNil(t, res)
			assert.Less(t, took, 300*time.Millisecond+2*time.Second+time.Second, "Send waited %v past a 300 ms context and CommandTimeout", took)
			if !errors.Is(err, mxrelay.ErrCanceled) {
				// Only an email whose end of data was sent may wait for it.
				assert.True(t, res.MaybeDelivered, "%v", err)
			}
			h, err := c.Enqueue(testkit.Mail("queued behind"))
			require.NoError(t, err)
			cctx, ccancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
			defer ccancel()
			start = time.Now()
			c.Close(cctx)
			assert.Less(t, time.Since(start), 5*time.Second, "Close waited past its context")
			res2, err := h.Wait(testkit.Ctx(t))
			require.NotNil(t, res2)
			// Close drains what it can in its time: delivered once, or
			// handed back unsent.
			if err == nil {
				assert.Equal(t, 1, testkit.CountSubject(s, "queued behind"))
			} else {
				assert.ErrorIs(t, err, mxrelay.ErrClosed)
				assert.Equal(t, 0, testkit.CountSubject(s, "queued behind"))
			}
			st := c.Stats()
			assert.Equal(t, st.EmailsQueued, st.EmailsDelivered+st.EmailsFailed)
		})
	}
}
