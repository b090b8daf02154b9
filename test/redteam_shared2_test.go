package test

import (
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mxrelay/mxrelay"
	"github.com/mxrelay/mxrelay/internal/testkit"
)

// The red team's second round on the Client on a shared store (issue 12):
// what round 1 (redteam_shared_test.go) did not reach.

// TestSharedStoreCancelAfterEndOfDataIsNotCanceled: A's end of data is
// out (Ending recorded, the server's reply held) when C, another process,
// finds the email by its IdempotencyKey and cancels it: the store marks
// it (A holds it). A then dies (its lease runs out) and B takes it over:
// an end of data recorded with no answer, which may have reached the
// server. Cancel's doc: an end of data already out is not withdrawn, its
// reply decides; ErrCanceled is for an email withdrawn before its end of
// data; OutcomeUnknown is the outcome of an end of data with no reply
// "after a cancel" too. The result must be unknown (ErrUnknownOutcome),
// not "failed: cancelled", which tells the caller the email never left,
// and it is not sent again (canceled), RetryUnknown or not. (Whichever
// live Client claims it first, B or C, takes it over.)
func TestSharedStoreCancelAfterEndOfDataIsNotCanceled(t *testing.T) {
	for _, retry := range []bool{false, true} {
		t.Run(fmt.Sprint("RetryUnknown ", retry), func(t *testing.T) {
			q := testkit.NewQueue(t)
			a := newGated(t)
			ca := testkit.NewClient(t, a.relay, &mxrelay.Options{Store: q.Store(t, nil), Lease: time.Hour,
				CommandTimeout: time.Minute})
			e := testkit.Mail("sent")
			e.ID, e.IdempotencyKey = "sent", "order-1"
			_, err := ca.Enqueue(e)
			require.NoError(t, err)
			ctx := testkit.Ctx(t)
			select {
			case <-a.hit: // pipelined: MAIL, RCPT and BDAT LAST in one write, its Ending recorded first
			case <-ctx.Done():
				t.Fatal("A's session did not start")
			}
			require.Equal(t, 1, q.Count(`SELECT ends FROM {s}.email WHERE id = 'sent'`))

			// C finds the email by its key, and cancels it.
			cc := testkit.NewClient(t, testkit.NewRelay(t, nil), &mxrelay.Options{Store: q.Store(t, nil)})
			again := testkit.Mail("sent")
			again.IdempotencyKey = "order-1"
			hc, err := cc.Enqueue(again)
			require.NoError(t, err)
			require.Equal(t, "sent", hc.ID(), "the key's email")
			hc.Cancel()
			require.Equal(t, 1, q.Count(`SELECT count(*) FROM {s}.email WHERE id = 'sent' AND cancel IS NOT NULL AND finished_at IS NULL`),
				"marked: A holds it")

			// A dies; B (or C) takes the email over.
			q.Exec(`UPDATE {s}.email SET lease_expires = now() - interval '1 second' WHERE id = 'sent'`)
			relayB := testkit.NewRelay(t, nil)
			testkit.NewClient(t, relayB, &mxrelay.Options{Store: q.Store(t, nil), RetryUnknown: retry})
			b, err := hc.Wait(ctx)
			require.NotNil(t, b, "no result")
			assert.Equal(t, b.Err, err)
			assert.Empty(t, relayB.Mailbox(), "canceled: not sent again")
			assert.True(t, b.MaybeDelivered)
			assert.Equal(t, mxrelay.OutcomeUnknown, b.Outcome,
				"an end of data out with no reply, canceled after it: the takeover says %v (%v)", b.Outcome, b.Err)
			assert.ErrorIs(t, b.Err, mxrelay.ErrUnknownOutcome)
			assert.NotErrorIs(t, b.Err, mxrelay.ErrCanceled, "withdrawn before its end of data, says the error")
			got, err := cc.Result(ctx, "sent")
			require.NoError(t, err)
			testkit.SameResult(t, b, got)
			a.open()
		})
	}
}
