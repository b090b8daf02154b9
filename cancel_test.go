package mxrelay_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mxrelay/mxrelay"
	"github.com/mxrelay/mxrelay/internal/fakesmtp"
	"github.com/mxrelay/mxrelay/internal/testkit"
	"github.com/mxrelay/mxrelay/relaytest"
)

func TestCancellation(t *testing.T) {
	t.Run("while queued", func(t *testing.T) {
		s := testkit.NewRelay(t, nil)
		s.SetDown(true)
		c := testkit.NewClient(t, s, &mxrelay.Options{MaxReconnectAttempts: 1000})
		ctx, cancel := context.WithCancel(context.Background())
		time.AfterFunc(20*time.Millisecond, cancel)
		res, err := c.Send(ctx, testkit.Mail("cancelled"))
		require.ErrorIs(t, err, mxrelay.ErrCanceled)
		require.ErrorIs(t, err, context.Canceled)
		assert.Equal(t, 0, res.Attempts)
		assert.Equal(t, 0, c.Stats().QueueSize)
	})
	t.Run("in its transaction", func(t *testing.T) {
		s := testkit.NewRelay(t, &relaytest.Options{HideExtensions: []string{"CHUNKING"}})
		s.Inject(relaytest.Fault{Kind: relaytest.StallReply, Command: "DATA"})
		logs := &testkit.LogBuffer{}
		c := testkit.NewClient(t, s, &mxrelay.Options{CommandTimeout: time.Minute, Logger: logs.Logger()})
		h, err := c.Enqueue(testkit.Mail("withdrawn"))
		require.NoError(t, err)
		// DATA was written; the relay swallows it and never answers.
		require.Eventually(t, func() bool { return strings.Contains(logs.String(), "dir=C line=DATA") }, 10*time.Second, time.Millisecond)
		h.Cancel()
		res, err := h.Wait(testkit.Ctx(t))
		require.ErrorIs(t, err, mxrelay.ErrCanceled)
		assert.Equal(t, 1, res.Attempts)
		assert.Empty(t, s.Mailbox())
		_, err = c.Send(testkit.Ctx(t), testkit.Mail("next"))
		require.NoError(t, err)
	})
	t.Run("context already done", func(t *testing.T) {
		s := testkit.NewRelay(t, nil)
		c := testkit.NewClient(t, s, nil)
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		_, err := c.Send(ctx, testkit.Mail("x"))
		require.ErrorIs(t, err, context.Canceled)
		assert.Zero(t, c.Stats().EmailsQueued)
	})
}

func TestCancelAfterEndOfDataIsNotWithdrawn(t *testing.T) {
	s := testkit.NewRelay(t, &relaytest.Options{HideExtensions: []string{"CHUNKING"}})
	s.Inject(relaytest.Fault{Kind: relaytest.StallReply, Command: "."})
	logs := &testkit.LogBuffer{}
	c := testkit.NewClient(t, s, &mxrelay.Options{CommandTimeout: 300 * time.Millisecond, Logger: logs.Logger()})
	h, err := c.Enqueue(testkit.Mail("past the point of no return"))
	require.NoError(t, err)
	// The transcript logs the end of data once it is written.
	require.Eventually(t, func() bool { return strings.Contains(logs.String(), "dir=C line=.\n") }, 10*time.Second, time.Millisecond)
	h.Cancel()
	res, err := h.Wait(testkit.Ctx(t))
	require.ErrorIs(t, err, mxrelay.ErrUnknownOutcome, "the reply (here: its absence) decides, not the cancel")
	assert.False(t, errors.Is(err, mxrelay.ErrCanceled))
	assert.True(t, res.MaybeDelivered)
}

func TestLateCancelStopsRetries(t *testing.T) {
	s := testkit.NewRelay(t, &relaytest.Options{Latency: relaytest.Latency{ToClient: 150 * time.Millisecond}, HideExtensions: []string{"CHUNKING"}})
	s.Inject(relaytest.Fault{Kind: relaytest.ReplaceReply, Command: ".", Reply: "451 4.3.0 try later"})
	logs := &testkit.LogBuffer{}
	c := testkit.NewClient(t, s, &mxrelay.Options{Logger: logs.Logger()})
	h, err := c.Enqueue(testkit.Mail("cancelled while its reply travels"))
	require.NoError(t, err)
	require.Eventually(t, func() bool { return strings.Contains(logs.String(), "dir=C line=.\n") }, 10*time.Second, time.Millisecond)
	h.Cancel()
	res, err := h.Wait(testkit.Ctx(t))
	require.ErrorIs(t, err, mxrelay.ErrCanceled, "not retried after the cancel")
	var se *mxrelay.SMTPError
	require.ErrorAs(t, err, &se, "the server's answer is kept")
	assert.Equal(t, 451, se.Code)
	assert.Equal(t, 1, res.Attempts)
	assert.Empty(t, s.Mailbox())
}

// gatedReader blocks its first Read until gate is closed, and says when
// that Read has started.
type gatedReader struct {
	*strings.Reader
	started, gate chan struct{}
	once          sync.Once
}

func (g *gatedReader) Read(p []byte) (int, error) {
	g.once.Do(func() {
		close(g.started)
		<-g.gate
	})
	return g.Reader.Read(p)
}

func TestCancelDoesNotHurtTheNextEmail(t *testing.T) {
	t.Run("cancel while its body is read", func(t *testing.T) {
		// Pipelined BDAT: a is withdrawn with RSET before its last chunk;
		// b, behind it on the same channel, must not suffer.
		s := testkit.NewRelay(t, nil)
		c := testkit.NewClient(t, s, &mxrelay.Options{MaxEmailsPerSession: 10, BatchWait: time.Hour})
		g := &gatedReader{Reader: strings.NewReader(testkit.Msg("a")), started: make(chan struct{}), gate: make(chan struct{})}
		a, err := c.Enqueue(mxrelay.Email{From: "a@example.com", To: []string{"b@example.com"}, Body: g}, mxrelay.WithPriority(mxrelay.PriorityHigh))
		require.NoError(t, err)
		b, err := c.Enqueue(testkit.Mail("b"), mxrelay.WithRetries(0), mxrelay.Immediate())
		require.NoError(t, err)
		<-g.started
		a.Cancel()
		close(g.gate)
		_, err = a.Wait(testkit.Ctx(t))
		require.ErrorIs(t, err, mxrelay.ErrCanceled)
		res, err := b.Wait(testkit.Ctx(t))
		require.NoError(t, err, "the next email goes through, without losing an attempt")
		assert.Equal(t, 1, res.Attempts)
		assert.Equal(t, []string{"b"}, testkit.Subjects(s))
		assert.Equal(t, 1, s.Stats().Channels, "withdrawn by RSET: the channel stayed open")
	})
	t.Run("an email that cannot travel in JSON", func(t *testing.T) {
		s := testkit.NewRelay(t, &relaytest.Options{DisableBinary: true})
		c := testkit.NewClient(t, s, &mxrelay.Options{MaxEmailsPerSession: 10, BatchWait: time.Hour})
		a, err := c.Enqueue(mxrelay.Email{From: "a@example.com", To: []string{"b@example.com"}, Body: strings.NewReader("Subject: caf\xe9\r\n\r\n.\r\n")}, mxrelay.WithPriority(mxrelay.PriorityHigh))
		require.NoError(t, err)
		b, err := c.Enqueue(testkit.Mail("b"), mxrelay.WithRetries(0), mxrelay.Immediate())
		require.NoError(t, err)
		_, err = a.Wait(testkit.Ctx(t))
		require.ErrorIs(t, err, mxrelay.ErrNotUTF8)
		res, err := b.Wait(testkit.Ctx(t))
		require.NoError(t, err)
		assert.Equal(t, 1, res.Attempts)
	})
}

func TestEmailTimeoutMatchesErrCanceled(t *testing.T) {
	s := testkit.NewRelay(t, nil)
	s.SetDown(true)
	c := testkit.NewClient(t, s, &mxrelay.Options{MaxReconnectAttempts: 1000})
	_, err := c.Send(testkit.Ctx(t), testkit.Mail("late"), mxrelay.WithTimeout(20*time.Millisecond))
	require.ErrorIs(t, err, mxrelay.ErrCanceled)
	require.ErrorIs(t, err, context.DeadlineExceeded)
	var ee *mxrelay.EmailError
	require.ErrorAs(t, err, &ee)
	assert.False(t, ee.Temporary(), "a withdrawn email is not to be retried by the caller as if the relay failed")
}

// Regression (issue "Every reply accounted for"): an email cancelled while
// it waited for a slot in the pipeline window returned only when the
// window moved: up to CommandTimeout behind a stalled upstream.
func TestCancelWhileWaitingForTheWindow(t *testing.T) {
	testkit.Bubble(t, testCancelWhileWaitingForTheWindow)
}

func testCancelWhileWaitingForTheWindow(t *testing.T) {
	s := testkit.NewRelay(t, nil)
	s.Inject(relaytest.Fault{Kind: relaytest.StallReply, Command: "."})
	logs := &testkit.LogBuffer{}
	c := testkit.NewClient(t, s, &mxrelay.Options{PipelineWindow: 1, CommandTimeout: 30 * time.Second, MaxEmailsPerSession: 5, Logger: logs.Logger()})
	first, err := c.Enqueue(testkit.Mail("first"))
	require.NoError(t, err)
	synctest.Wait() // first's end of data is out, its reply stalled
	require.True(t, strings.Contains(logs.String(), "BDAT") && strings.Contains(logs.String(), "LAST"), "%s", logs.String())
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		_, err := c.Send(ctx, testkit.Mail("second"))
		done <- err
	}()
	synctest.Wait() // taken by the session, waiting for the window
	cancel()
	select {
	case err := <-done:
		require.ErrorIs(t, err, mxrelay.ErrCanceled)
	case <-time.After(10 * time.Second):
		t.Fatal("Send did not return when its context was cancelled: it waits for the window")
	}
	first.Cancel()
	assert.Equal(t, 0, testkit.CountSubject(s, "second"))
}

// stallingUpstream reads commands until a DATA or BDAT, then stops reading:
// a large body fills the buffers, and the client's write blocks.
func stallingUpstream(t *testing.T) (*fakesmtp.Server, chan struct{}) {
	stalled := make(chan struct{})
	var once sync.Once
	u := testkit.NewUpstream(t, func(c *fakesmtp.Conn) {
		c.Say("220 mx.test ESMTP")
		c.Commands(func(verb, l string) bool {
			switch verb {
			case "EHLO":
				c.Say("250-mx.test\r\n250-PIPELINING\r\n250 CHUNKING")
			case "BDAT", "DATA":
				once.Do(func() { close(stalled) })
				c.Stall() // until the test ends
				return false
			default:
				c.Say("250 2.0.0 ok")
			}

			return true
		})
	})
	return u, stalled
}

// bigBody is larger than every buffer between the client and a server
// that stopped reading.
func bigBody() io.Reader {
	line := strings.Repeat("y", 78) + "\r\n"
	return bytes.NewReader([]byte("Subject: big\r\n\r\n" + strings.Repeat(line, 800_000))) // 64 MB
}

// Regression (issue "Every reply accounted for"): when the relay stopped
// reading during a large body, cancelling Send's context returned only
// after the write deadline, and Close with a short context waited as long:
// closing a channel did not interrupt a frame write in progress.
func TestCancelAndCloseDoNotWaitBehindAStuckWrite(t *testing.T) {
	testkit.Bubble(t, testCancelAndCloseDoNotWaitBehindAStuckWrite)
}

func testCancelAndCloseDoNotWaitBehindAStuckWrite(t *testing.T) {
	u, stalled := stallingUpstream(t)
	s := testkit.NewRelay(t, &relaytest.Options{UpstreamAddr: u.Addr})
	c, err := mxrelay.New(s.URL, s.APIKey, testkit.ClientOptions(s, &mxrelay.Options{CommandTimeout: 30 * time.Second}))
	require.NoError(t, err)
	defer c.Close(context.Background())

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		_, err := c.Send(ctx, mxrelay.Email{From: "a@example.com", To: []string{"b@example.com"}, Body: bigBody()})
		done <- err
	}()
	<-stalled
	synctest.Wait() // the buffers are full: the client is blocked in a write
	cancel()
	select {
	case err := <-done:
		require.ErrorIs(t, err, mxrelay.ErrCanceled)
	case <-time.After(10 * time.Second):
		t.Fatal("Send did not return when its context was cancelled: it waits behind the stuck write")
	}

	h, err := c.Enqueue(mxrelay.Email{From: "a@example.com", To: []string{"b@example.com"}, Body: bigBody()})
	require.NoError(t, err)
	cctx, ccancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer ccancel()
	closed := make(chan error, 1)
	go func() { closed <- c.Close(cctx) }()
	select {
	case <-closed:
	case <-time.After(10 * time.Second):
		t.Fatal("Close with a 500 ms context did not return: it waits behind the stuck write")
	}
	res, err := h.Wait(testkit.Ctx(t))
	require.Error(t, err)
	assert.False(t, res.Delivered())
}
