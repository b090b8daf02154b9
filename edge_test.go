package mxrelay_test

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mxrelay/mxrelay"
	"github.com/mxrelay/mxrelay/internal/fakesmtp"
	"github.com/mxrelay/mxrelay/internal/testkit"
	"github.com/mxrelay/mxrelay/relaytest"
)

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

func TestStartTLSOverJSONChannel(t *testing.T) {
	serverTLS, pool := selfSigned(t)
	s := testkit.NewRelay(t, &relaytest.Options{DisableBinary: true, TLSConfig: serverTLS})
	t.Run("opportunistic goes on in clear", func(t *testing.T) {
		c := testkit.NewClient(t, s, &mxrelay.Options{StartTLS: mxrelay.StartTLSOpportunistic, TLSConfig: &tls.Config{ServerName: "mx.test"}})
		_, err := c.Send(testkit.Ctx(t), testkit.Mail("clear over json"))
		require.NoError(t, err)
	})
	t.Run("required fails at once", func(t *testing.T) {
		before := s.Stats().Channels
		c := testkit.NewClient(t, s, &mxrelay.Options{StartTLS: mxrelay.StartTLSRequired, TLSConfig: &tls.Config{RootCAs: pool, ServerName: "mx.test"}, MaxReconnectAttempts: 5})
		_, err := c.Send(testkit.Ctx(t), testkit.Mail("never"))
		require.Error(t, err)
		var ce *mxrelay.ConnectError
		assert.False(t, errors.As(err, &ce), "permanent, not retried until the attempts run out")
		assert.Equal(t, before+1, s.Stats().Channels)
		assert.Equal(t, 0, testkit.CountSubject(s, "never"))
	})
}

// fakeSMTP is a minimal SMTP server with a multi-line greeting and no
// STARTTLS, to put behind relaytest.Options.UpstreamAddr. It returns its
// address and how many messages it accepted.
func fakeSMTP(t *testing.T) (string, func() int) {
	var mu sync.Mutex
	got := 0
	u := fakesmtp.Listen(t, func(c *fakesmtp.Conn) {
		c.Say("220-mx.fake.test first line\r\n220-second line\r\n220 mx.fake.test ESMTP")
		for {
			line, ok := c.Line()
			if !ok {
				return
			}
			switch strings.ToUpper(strings.Fields(line + " x")[0]) {
			case "EHLO":
				c.Say("250-mx.fake.test\r\n250 PIPELINING")
			case "DATA":
				c.Say("354 go")
				if _, ok := c.Body(); !ok {
					return
				}
				mu.Lock()
				got++
				mu.Unlock()
				c.Say("250 2.0.0 queued")
			case "QUIT":
				c.Say("221 bye")
				return
			default:
				c.Say("250 ok")
			}
		}
	})
	return u.Addr, func() int {
		mu.Lock()
		defer mu.Unlock()
		return got
	}
}

func TestMultiLineGreeting(t *testing.T) {
	addr, received := fakeSMTP(t)
	s := testkit.NewRelay(t, &relaytest.Options{UpstreamAddr: addr})
	for _, mode := range []mxrelay.StartTLS{mxrelay.StartTLSNever, mxrelay.StartTLSOpportunistic} {
		c := testkit.NewClient(t, s, &mxrelay.Options{StartTLS: mode, TLSConfig: &tls.Config{ServerName: "mx.test"}})
		_, err := c.Send(testkit.Ctx(t), testkit.Mail("greeted"))
		require.NoError(t, err, "mode %d", mode)
	}
	assert.Equal(t, 2, received())
}

// failingBody is a seekable body whose reads fail past a given offset.
type failingBody struct {
	*strings.Reader
	failAt int64
}

func (f *failingBody) Read(p []byte) (int, error) {
	off, _ := f.Seek(0, io.SeekCurrent)
	if off >= f.failAt {
		return 0, errors.New("disk went away")
	}
	if room := f.failAt - off; int64(len(p)) > room {
		p = p[:room]
	}
	return f.Reader.Read(p)
}

func TestBodyReadErrorNeverEndsTheData(t *testing.T) {
	s := testkit.NewRelay(t, nil)
	c := testkit.NewClient(t, s, nil)
	body := testkit.Msg("broken body") + strings.Repeat("line of the body\r\n", 2000)
	res, err := c.Send(testkit.Ctx(t), mxrelay.Email{From: "a@example.com", To: []string{"b@example.com"}, Body: &failingBody{Reader: strings.NewReader(body), failAt: 10000}})
	require.Error(t, err)
	var ee *mxrelay.EmailError
	require.ErrorAs(t, err, &ee)
	assert.False(t, ee.Temporary(), "the caller's reader failed: retrying would not help")
	assert.False(t, res.MaybeDelivered)
	assert.Empty(t, s.Mailbox(), "a partial body is never ended with a dot")
	_, err = c.Send(testkit.Ctx(t), testkit.Mail("after"))
	require.NoError(t, err)
	assert.Equal(t, []string{"after"}, testkit.Subjects(s))
}

func TestUnspoolableBodyIsRefused(t *testing.T) {
	s := testkit.NewRelay(t, nil)
	c := testkit.NewClient(t, s, &mxrelay.Options{TempDir: "/nonexistent/mxrelay-test"})
	_, err := c.Enqueue(mxrelay.Email{From: "a@example.com", To: []string{"b@example.com"}, Body: io.MultiReader(strings.NewReader(testkit.Msg("x")))})
	require.Error(t, err)
	assert.Zero(t, c.Stats().EmailsQueued, "nothing accepted")
}
