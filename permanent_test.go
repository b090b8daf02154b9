package mxrelay_test

import (
	"crypto/tls"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mxrelay/mxrelay"
	"github.com/mxrelay/mxrelay/internal/testkit"
)

// TestPermanentSetupIsNotTemporary: a session set-up that the client does
// not retry (here STARTTLS required and not offered) is not reported as
// temporary either, so that a caller does not resend in vain.
func TestPermanentSetupIsNotTemporary(t *testing.T) {
	s := testkit.NewRelay(t, nil)
	c := testkit.NewClient(t, s, &mxrelay.Options{StartTLS: mxrelay.StartTLSRequired, TLSConfig: &tls.Config{ServerName: "mx.test"}, MaxReconnectAttempts: 5})
	_, err := c.Send(testkit.Ctx(t), testkit.Mail("never"))
	var ee *mxrelay.EmailError
	require.ErrorAs(t, err, &ee)
	assert.False(t, ee.Temporary(), "%v", err)
	assert.Equal(t, 1, s.Stats().Channels, "not retried")
}
