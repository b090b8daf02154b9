package mxrelay_test

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mxrelay/mxrelay"
	"github.com/mxrelay/mxrelay/internal/testkit"
	"github.com/mxrelay/mxrelay/relaytest"
)

// The per-email settings are Email fields; a SendOption given too wins.
func TestPerEmailSettingsOnEmail(t *testing.T) {
	s := testkit.NewRelay(t, nil)
	s.Inject(relaytest.Fault{Kind: relaytest.ReplaceReply, Command: "MAIL", Reply: "451 4.3.0 try later", Times: -1})
	c := testkit.NewClient(t, s, &mxrelay.Options{Retries: 2})

	e := testkit.Mail("high, no retry")
	e.Priority, e.Retries = mxrelay.PriorityHigh, -1
	res, err := c.Send(testkit.Ctx(t), e)
	require.Error(t, err)
	assert.Equal(t, mxrelay.PriorityHigh, res.Priority)
	assert.Equal(t, 1, res.Attempts, "Retries -1: no retry")

	e = testkit.Mail("default retries")
	res, err = c.Send(testkit.Ctx(t), e)
	require.Error(t, err)
	assert.Equal(t, 3, res.Attempts, "Retries 0: Options.Retries")

	e = testkit.Mail("option wins")
	e.Priority, e.Retries = mxrelay.PriorityLow, 5
	res, err = c.Send(testkit.Ctx(t), e, mxrelay.WithPriority(mxrelay.PriorityCritical), mxrelay.WithRetries(1))
	require.Error(t, err)
	assert.Equal(t, mxrelay.PriorityCritical, res.Priority)
	assert.Equal(t, 2, res.Attempts)
}

// An unknown priority is refused at Enqueue, from the field or an option.
func TestUnknownPriorityIsRefused(t *testing.T) {
	c := testkit.NewClient(t, testkit.NewRelay(t, nil), nil)
	e := testkit.Mail("bad priority")
	e.Priority = 7
	_, err := c.Enqueue(e)
	require.ErrorIs(t, err, mxrelay.ErrInvalidEmail)
	assert.Contains(t, err.Error(), "priority 7")
	_, err = c.Enqueue(testkit.Mail("bad option"), mxrelay.WithPriority(-2))
	require.ErrorIs(t, err, mxrelay.ErrInvalidEmail)
}

// Email.Immediate skips BatchWait as the Immediate option does.
func TestImmediateField(t *testing.T) {
	c := testkit.NewClient(t, testkit.NewRelay(t, nil), &mxrelay.Options{BatchWait: 1 << 62})
	e := testkit.Mail("now")
	e.Immediate = true
	_, err := c.Send(testkit.Ctx(t), e)
	require.NoError(t, err, "Immediate started the session despite BatchWait")
}
