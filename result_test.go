package mxrelay_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mxrelay/mxrelay"
	"github.com/mxrelay/mxrelay/internal/testkit"
	"github.com/mxrelay/mxrelay/relaytest"
)

// counters are the Stats counters an Outcome moves.
type counters struct {
	delivered, failed, unknown, handedBack, maybe int64
}

func countersOf(st mxrelay.Stats) counters {
	return counters{st.EmailsDelivered, st.EmailsFailed, st.EmailsUnknown, st.EmailsHandedBack, st.EmailsMaybeDelivered}
}

// Each outcome, produced through the public API: Outcome, Err,
// MaybeDelivered, Delivered and the Stats counters agree.
func TestResultOutcome(t *testing.T) {
	for _, tc := range []struct {
		name   string
		to     []string
		faults []relaytest.Fault
		opts   mxrelay.Options
		// handBack: the relay is down and Close gives up at once.
		handBack bool
		spool    bool

		want     mxrelay.Outcome
		errIs    []error // what Err matches; none: Err is nil
		maybe    bool
		attempts int
		accepted int
		stats    counters
	}{
		{
			name: "delivered", want: mxrelay.OutcomeDelivered, attempts: 1, accepted: 1,
			stats: counters{delivered: 1},
		},
		{
			name: "delivered to one, refused for the other", to: []string{"ok@example.com", "gone@example.com"},
			faults: []relaytest.Fault{{Kind: relaytest.ReplaceReply, Command: "RCPT", Recipient: "gone@example.com", Reply: "550 5.1.1 no such user"}},
			want:   mxrelay.OutcomeDelivered, attempts: 1, accepted: 1,
			stats: counters{delivered: 1},
		},
		{
			name:   "delivered after an unknown end of data",
			faults: []relaytest.Fault{{Kind: relaytest.DropAfterFinalDot}},
			opts:   mxrelay.Options{RetryUnknown: true},
			want:   mxrelay.OutcomeDelivered, maybe: true, attempts: 2, accepted: 1,
			stats: counters{delivered: 1, maybe: 1},
		},
		{
			name:   "refused",
			faults: []relaytest.Fault{{Kind: relaytest.ReplaceReply, Command: "MAIL", Reply: "550 5.7.1 sender refused"}},
			want:   mxrelay.OutcomeFailed, errIs: []error{}, attempts: 1,
			stats: counters{failed: 1},
		},
		{
			name:   "unknown",
			faults: []relaytest.Fault{{Kind: relaytest.DropAfterFinalDot}},
			want:   mxrelay.OutcomeUnknown, errIs: []error{mxrelay.ErrUnknownOutcome}, maybe: true, attempts: 1,
			stats: counters{failed: 1, unknown: 1, maybe: 1},
		},
		{
			name:   "unknown at the last retry",
			faults: []relaytest.Fault{{Kind: relaytest.DropAfterFinalDot, Times: 2}},
			opts:   mxrelay.Options{RetryUnknown: true, Retries: 1},
			want:   mxrelay.OutcomeUnknown, errIs: []error{mxrelay.ErrUnknownOutcome}, maybe: true, attempts: 2,
			stats: counters{failed: 1, unknown: 1, maybe: 1},
		},
		{
			name: "handed back", handBack: true,
			want: mxrelay.OutcomeHandedBack, errIs: []error{mxrelay.ErrClosed},
			stats: counters{failed: 1, handedBack: 1},
		},
		{
			name: "handed back to the spool", handBack: true, spool: true,
			want: mxrelay.OutcomeHandedBack, errIs: []error{mxrelay.ErrClosed, mxrelay.ErrSpooled},
			stats: counters{failed: 1, handedBack: 1},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := testkit.NewRelay(t, nil)
			for _, f := range tc.faults {
				s.Inject(f)
			}
			o := tc.opts
			if tc.spool {
				o.SpoolDir = t.TempDir()
			}
			if tc.handBack {
				s.SetDown(true)
				o.ReconnectInterval = time.Hour
			}
			c := testkit.NewClient(t, s, &o)
			e := testkit.Mail(tc.name, tc.to...)
			var res *mxrelay.Result
			var err error
			if tc.handBack {
				h, qerr := c.Enqueue(e)
				require.NoError(t, qerr)
				ctx, cancel := context.WithCancel(context.Background())
				cancel()
				require.ErrorIs(t, c.Close(ctx), context.Canceled)
				res, err = h.Wait(testkit.Ctx(t))
			} else {
				res, err = c.Send(testkit.Ctx(t), e)
			}
			require.NotNil(t, res)

			assert.Equal(t, tc.want, res.Outcome)
			assert.Equal(t, tc.want == mxrelay.OutcomeDelivered, res.Delivered())
			assert.Equal(t, tc.maybe, res.MaybeDelivered)
			assert.Equal(t, tc.attempts, res.Attempts)
			assert.Len(t, res.Accepted, tc.accepted)
			assert.Equal(t, res.Err, err, "Send returns Result.Err")
			if tc.errIs == nil {
				assert.NoError(t, res.Err)
			} else {
				var ee *mxrelay.EmailError
				assert.ErrorAs(t, res.Err, &ee)
				for _, target := range tc.errIs {
					assert.ErrorIs(t, res.Err, target)
				}
			}
			assert.Equal(t, tc.stats, countersOf(c.Stats()))
		})
	}
}

// The zero Outcome is in no Result; each outcome has a name.
func TestOutcomeString(t *testing.T) {
	for o, want := range map[mxrelay.Outcome]string{
		mxrelay.OutcomeDelivered: "DELIVERED", mxrelay.OutcomeFailed: "FAILED",
		mxrelay.OutcomeUnknown: "UNKNOWN", mxrelay.OutcomeHandedBack: "HANDED_BACK",
		0: "Outcome(0)",
	} {
		assert.Equal(t, want, o.String())
	}
}

// A refused recipient is an error, and its reply is in its fields.
func TestRecipientErrorCarriesTheReply(t *testing.T) {
	s := testkit.NewRelay(t, nil)
	s.Inject(relaytest.Fault{Kind: relaytest.ReplaceReply, Command: "RCPT", Recipient: "gone@example.com", Reply: "550 5.1.1 no such user"})
	c := testkit.NewClient(t, s, nil)
	res, err := c.Send(testkit.Ctx(t), testkit.Mail("refused", "ok@example.com", "gone@example.com"))
	require.NoError(t, err)
	require.Len(t, res.Rejected, 1)
	r := res.Rejected[0]
	assert.Equal(t, "gone@example.com", r.Address)
	assert.Equal(t, 550, r.Code)
	assert.Equal(t, [3]int{5, 1, 1}, r.EnhancedCode)
	assert.Equal(t, "no such user", r.Message)

	var asErr error = r
	assert.Contains(t, asErr.Error(), "gone@example.com")
	assert.Contains(t, asErr.Error(), "550")
	var se *mxrelay.SMTPError
	require.ErrorAs(t, asErr, &se, "Unwrap reaches the SMTP reply")
	assert.Equal(t, 550, se.Code)

	// A drop-in's *PartialError unwraps to the refusal.
	pe := &mxrelay.PartialError{Result: res}
	var re mxrelay.RecipientError
	require.ErrorAs(t, pe, &re)
	assert.Equal(t, "gone@example.com", re.Address)
	assert.True(t, errors.As(pe, &se))
}
