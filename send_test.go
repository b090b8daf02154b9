package mxrelay_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mxrelay/mxrelay"
	"github.com/mxrelay/mxrelay/internal/testkit"
	"github.com/mxrelay/mxrelay/relaytest"
)

func TestSendDelivers(t *testing.T) {
	for _, tc := range []struct {
		name          string
		relayBinary   bool
		disableBinary bool
	}{
		{name: "binary", relayBinary: true},
		{name: "json because the client asks for it", relayBinary: true, disableBinary: true},
		{name: "json because the relay refuses binary", relayBinary: false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := testkit.NewRelay(t, &relaytest.Options{DisableBinary: !tc.relayBinary})
			c := testkit.NewClient(t, s, &mxrelay.Options{DisableBinary: tc.disableBinary})
			body := testkit.Msg("hello") + "..leading dot\r\n.\r\nnot the end\r\n"
			res, err := c.Send(testkit.Ctx(t), mxrelay.Email{ID: "e1", From: "a@example.com", To: []string{"b@example.com", "c@example.com"}, Body: strings.NewReader(body)})
			require.NoError(t, err)
			assert.True(t, res.Delivered())
			assert.Equal(t, mxrelay.OutcomeDelivered, res.Outcome)
			assert.Equal(t, "e1", res.EmailID)
			assert.Equal(t, []string{"b@example.com", "c@example.com"}, res.Accepted)
			assert.Empty(t, res.Rejected)
			assert.Equal(t, 250, res.Reply.Code)
			assert.Equal(t, 1, res.Attempts)
			assert.False(t, res.MaybeDelivered)

			box := s.Mailbox()
			require.Len(t, box, 1)
			assert.Equal(t, "a@example.com", box[0].From)
			assert.Equal(t, []string{"b@example.com", "c@example.com"}, box[0].To)
			assert.Equal(t, body, string(box[0].Data), "the upstream gets the exact bytes, dot-stuffing undone")
			st := c.Stats()
			assert.EqualValues(t, 1, st.EmailsDelivered)
			assert.EqualValues(t, 0, st.EmailsFailed)
		})
	}
}

// EnqueueWait waits for room instead of failing, gives up with its
// context, and ends with ErrClosed when the Client closes.
func TestEnqueueWait(t *testing.T) {
	s := testkit.NewRelay(t, nil)
	s.SetDown(true) // nothing leaves the queue by sending
	c, err := mxrelay.New(s.URL, s.APIKey, &mxrelay.Options{MaxQueueSize: 2, ReconnectInterval: time.Hour})
	require.NoError(t, err)
	first, err := c.Enqueue(testkit.Mail("one"))
	require.NoError(t, err)
	_, err = c.Enqueue(testkit.Mail("two"))
	require.NoError(t, err)
	_, err = c.Enqueue(testkit.Mail("three"))
	require.ErrorIs(t, err, mxrelay.ErrQueueFull)

	short, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	_, err = c.EnqueueWait(short, testkit.Mail("three"))
	require.ErrorIs(t, err, mxrelay.ErrQueueFull)
	require.ErrorIs(t, err, context.DeadlineExceeded)

	got := make(chan error, 1)
	go func() {
		_, err := c.EnqueueWait(testkit.Ctx(t), testkit.Mail("three"))
		got <- err
	}()
	select {
	case err := <-got:
		t.Fatalf("EnqueueWait returned %v with the queue full", err)
	case <-time.After(50 * time.Millisecond):
	}
	first.Cancel() // a place frees up
	require.NoError(t, <-got)
	assert.Equal(t, 2, c.QueueSize())

	go func() {
		_, err := c.EnqueueWait(testkit.Ctx(t), testkit.Mail("four"))
		got <- err
	}()
	ctx, cancelClose := context.WithCancel(context.Background())
	cancelClose()
	c.Close(ctx)
	require.ErrorIs(t, <-got, mxrelay.ErrClosed)
}
