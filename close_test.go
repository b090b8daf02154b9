package mxrelay_test

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mxrelay/mxrelay"
	"github.com/mxrelay/mxrelay/internal/testkit"
	"github.com/mxrelay/mxrelay/relaytest"
)

func TestCloseDrainsTheQueue(t *testing.T) {
	s := testkit.NewRelay(t, nil)
	c := testkit.NewClient(t, s, nil)
	var hs []*mxrelay.Handle
	for i := range 30 {
		h, err := c.Enqueue(testkit.Mail(fmt.Sprint(i)))
		require.NoError(t, err)
		hs = append(hs, h)
	}
	require.NoError(t, c.Close(testkit.Ctx(t)))
	for _, h := range hs {
		res, err := h.Wait(testkit.Ctx(t))
		require.NoError(t, err)
		assert.True(t, res.Delivered())
	}
	assert.Len(t, s.Mailbox(), 30)
	assert.Equal(t, mxrelay.StateDisconnected, c.ConnState())
}

func TestCloseHandsBackWhatIsLeft(t *testing.T) {
	s := testkit.NewRelay(t, nil)
	s.SetDown(true)
	c := testkit.NewClient(t, s, &mxrelay.Options{MaxReconnectAttempts: 1000})
	var hs []*mxrelay.Handle
	for i := range 5 {
		h, err := c.Enqueue(testkit.Mail(fmt.Sprint(i)))
		require.NoError(t, err)
		hs = append(hs, h)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	err := c.Close(ctx)
	require.ErrorIs(t, err, context.DeadlineExceeded)
	for _, h := range hs {
		res, err := h.Wait(testkit.Ctx(t))
		require.ErrorIs(t, err, mxrelay.ErrClosed)
		assert.False(t, res.Delivered())
		assert.Equal(t, mxrelay.OutcomeHandedBack, res.Outcome)
	}
	_, err = c.Enqueue(testkit.Mail("late"))
	require.ErrorIs(t, err, mxrelay.ErrClosed)
	st := c.Stats()
	assert.EqualValues(t, 5, st.EmailsFailed)
	assert.EqualValues(t, 5, st.EmailsHandedBack)
}

func TestCloseDuringStalledSession(t *testing.T) {
	rcpt := make(chan struct{})
	var once sync.Once
	var sent testkit.LogBuffer // what the client sent upstream
	s := testkit.NewRelay(t, &relaytest.Options{OnSMTPData: func(d relaytest.SMTPData) {
		if !d.FromServer {
			sent.Write(d.Data)
			if strings.Contains(sent.String(), "RCPT TO:") {
				once.Do(func() { close(rcpt) })
			}
		}
	}})
	s.Inject(relaytest.Fault{Kind: relaytest.StallReply, Command: "RCPT"})
	c := testkit.NewClient(t, s, &mxrelay.Options{CommandTimeout: time.Minute})
	h, err := c.Enqueue(testkit.Mail("stuck"))
	require.NoError(t, err)
	select {
	case <-rcpt: // the session waits for the stalled reply
	case <-testkit.Ctx(t).Done():
		t.Fatal("RCPT never reached the relay")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	require.Error(t, c.Close(ctx))
	res, err := h.Wait(testkit.Ctx(t))
	require.Error(t, err)
	assert.False(t, res.Delivered())
	assert.Empty(t, s.Mailbox())
}

func TestCloseSendsQuit(t *testing.T) {
	s := testkit.NewRelay(t, nil)
	logs := &testkit.LogBuffer{}
	c := testkit.NewClient(t, s, &mxrelay.Options{Logger: logs.Logger(), IdleTimeout: time.Hour})
	_, err := c.Send(testkit.Ctx(t), testkit.Mail("q"))
	require.NoError(t, err)
	require.NoError(t, c.Close(testkit.Ctx(t)))
	out := logs.String()
	assert.Contains(t, out, `dir=C line=QUIT`)
	assert.Contains(t, out, `dir=S line="221`)
	assert.Equal(t, mxrelay.StateDisconnected, c.ConnState())
}

func TestCloseWaitsForARetry(t *testing.T) {
	s := testkit.NewRelay(t, nil)
	s.Inject(relaytest.Fault{Kind: relaytest.ReplaceReply, Command: "MAIL", Reply: "451 4.3.0 later"})
	c := testkit.NewClient(t, s, &mxrelay.Options{RetryInterval: 100 * time.Millisecond, MaxRetryInterval: 100 * time.Millisecond})
	h, err := c.Enqueue(testkit.Mail("retried during Close"))
	require.NoError(t, err)
	require.Eventually(t, func() bool { return c.Stats().RetriesScheduled == 1 }, 10*time.Second, time.Millisecond)
	require.NoError(t, c.Close(testkit.Ctx(t)), "Close keeps sending what is queued, delayed retries included")
	res, err := h.Wait(testkit.Ctx(t))
	require.NoError(t, err)
	assert.Equal(t, 2, res.Attempts)
}

// Regression (issue "Every reply accounted for"): Close(ctx) interrupting
// a spooled email's last allowed attempt before its end of data charged
// the attempt, failed the email with "use of closed network connection"
// and removed its file.
func TestCloseHandsBackASpooledEmailMidTransaction(t *testing.T) {
	s := testkit.NewRelay(t, nil)
	s.Inject(relaytest.Fault{Kind: relaytest.StallReply, Command: "RCPT"})
	dir := t.TempDir()
	logs := &testkit.LogBuffer{}
	c, err := mxrelay.New(s.URL, s.APIKey, testkit.Fast(&mxrelay.Options{SpoolDir: dir, DisablePipelining: true, CommandTimeout: time.Minute, Logger: logs.Logger()}))
	require.NoError(t, err)
	h, err := c.Enqueue(testkit.Mail("interrupted"), mxrelay.WithRetries(0))
	require.NoError(t, err)
	require.Eventually(t, func() bool { return strings.Contains(logs.String(), "dir=C line=\"RCPT") }, 10*time.Second, time.Millisecond)
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	require.Error(t, c.Close(ctx))
	res, err := h.Wait(testkit.Ctx(t))
	require.ErrorIs(t, err, mxrelay.ErrClosed)
	require.ErrorIs(t, err, mxrelay.ErrSpooled)
	assert.Equal(t, 0, res.Attempts, "an interruption by Close is not an attempt")
	assert.Empty(t, testkit.SpoolResults(t, dir))

	s.ClearFaults()
	c2 := testkit.NewClient(t, s, &mxrelay.Options{SpoolDir: dir})
	require.Len(t, c2.Recovered(), 1)
	res, err = c2.Recovered()[0].Wait(testkit.Ctx(t))
	require.NoError(t, err, "the next Client sends it")
	assert.Equal(t, 1, testkit.CountSubject(s, "interrupted"))
	assert.False(t, res.MaybeDelivered)
}
