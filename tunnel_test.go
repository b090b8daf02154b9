package mxrelay_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mxrelay/mxrelay"
	"github.com/mxrelay/mxrelay/internal/testkit"
	"github.com/mxrelay/mxrelay/relaytest"
)

// Raw tunnel mode: the same client (queue, pipelining, results) over a
// websockify-style tunnel, with the key as a bearer token.
func TestRawTunnel(t *testing.T) {
	s := testkit.NewRelay(t, &relaytest.Options{RawTunnel: true, Users: map[string]string{"app": "pw"}})
	c := testkit.NewClient(t, s, &mxrelay.Options{RawTunnel: true, Username: "app", Password: "pw", PasswordInClear: true, MaxEmailsPerSession: 50, BatchWait: time.Second})
	res := testkit.EnqueueBatch(t, c, 40)
	for i, r := range res {
		require.NoError(t, r.Err, "email %d", i)
		assert.Equal(t, 1, testkit.CountSubject(s, fmt.Sprint("p", i)))
	}
	assert.Equal(t, 1, s.Stats().Channels, "one tunnel, one session for the batch")
	assert.Equal(t, "app", s.Mailbox()[0].User)

	t.Run("a wrong key is refused for good", func(t *testing.T) {
		bad, err := mxrelay.New(s.URL, "wrong", testkit.Fast(&mxrelay.Options{RawTunnel: true}))
		require.NoError(t, err)
		defer bad.Close(testkit.Ctx(t))
		_, err = bad.Send(testkit.Ctx(t), testkit.Mail("never"))
		require.ErrorIs(t, err, mxrelay.ErrAuthFailed)
	})
	t.Run("a gateway that is down, then up", func(t *testing.T) {
		s2 := testkit.NewRelay(t, &relaytest.Options{RawTunnel: true})
		c2 := testkit.NewClient(t, s2, &mxrelay.Options{RawTunnel: true, MaxReconnectAttempts: 2})
		s2.SetDown(true)
		_, err := c2.Send(testkit.Ctx(t), testkit.Mail("while down"))
		var ce *mxrelay.ConnectError
		require.ErrorAs(t, err, &ce)
		s2.SetDown(false)
		_, err = c2.Send(testkit.Ctx(t), testkit.Mail("back up"))
		require.NoError(t, err)
		assert.Equal(t, []string{"back up"}, testkit.Subjects(s2))
	})

}
