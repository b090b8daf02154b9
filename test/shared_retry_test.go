package test

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mxrelay/mxrelay"
	"github.com/mxrelay/mxrelay/internal/testkit"
	"github.com/mxrelay/mxrelay/relaytest"
)

// TestSharedStoreRetryKeepsTheDeliveringReply: an email delivered to b at
// its first attempt and retried for c, which the server keeps answering
// 450, goes back to a shared store between attempts, and is claimed again
// with its progress, by any process: its Result is delivered (to b), c
// refused, and its Reply the server's reply to the end of data that
// delivered it, as with a store of the Client's own.
func TestSharedStoreRetryKeepsTheDeliveringReply(t *testing.T) {
	for _, shared := range []bool{false, true} {
		name := map[bool]string{false: "memory", true: "shared"}[shared]
		t.Run(name, func(t *testing.T) {
			relay := testkit.NewRelay(t, nil)
			relay.Inject(relaytest.Fault{Kind: relaytest.ReplaceReply, Command: "RCPT", Recipient: "c@example.com", Reply: "450 4.2.1 busy", Times: -1})
			o := &mxrelay.Options{Retries: 2}
			if shared {
				o.Store = testkit.NewQueue(t).Store(t, nil)
			}
			c := testkit.NewClient(t, relay, o)
			e := testkit.Mail("partial", "b@example.com", "c@example.com")
			res, err := c.Send(testkit.Ctx(t), e)
			require.NoError(t, err)
			assert.Equal(t, mxrelay.OutcomeDelivered, res.Outcome)
			assert.Equal(t, []string{"b@example.com"}, res.Accepted)
			if assert.Len(t, res.Rejected, 1) {
				assert.Equal(t, "c@example.com", res.Rejected[0].Address)
			}
			assert.Equal(t, 3, res.Attempts)
			assert.Equal(t, 250, res.Reply.Code, "the reply to the end of data that delivered it")
		})
	}
}
