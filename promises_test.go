package mxrelay_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/emersion/go-smtp"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mxrelay/mxrelay"
	"github.com/mxrelay/mxrelay/internal/fakesmtp"
	"github.com/mxrelay/mxrelay/internal/testcert"
	"github.com/mxrelay/mxrelay/internal/testkit"
	"github.com/mxrelay/mxrelay/relaytest"
)

// The tests in this file each hold one promise that a server or a relay
// misbehaving in a way our own test relay never does once broke (issue
// "Every reply accounted for").

// smtpServe is a fakesmtp.Session for the client's four modes, worded as
// go-smtp words its replies (2.0.0 to MAIL and RCPT): greeting replaces
// the greeting, ehlo the reply to EHLO (given the honest one), and end
// answers each end of data and says whether the message is kept, counted
// in kept.
type smtpServe struct {
	greeting string
	ext      []string
	ehlo     func(honest string) []string
	end      func() ([]string, bool)
	kept     atomic.Int64
	ends     atomic.Int64
}

func (s *smtpServe) serve(c *fakesmtp.Conn) {
	sess := &fakesmtp.Session{Ext: s.ext, Enhanced: true, Answer: func(cmd fakesmtp.Cmd) ([]string, bool) {
		switch cmd.Verb {
		case "EHLO":
			if s.ehlo != nil {
				return s.ehlo(cmd.Honest), true
			}
		case "MAIL", "RCPT":
			return []string{"250 2.0.0 ok"}, true
		case "END":
			s.ends.Add(1)
			writes, kept := []string{cmd.Honest}, true
			if s.end != nil {
				writes, kept = s.end()
			}
			if kept {
				s.kept.Add(1)
			}
			return writes, true
		}
		return nil, false
	}}
	if s.greeting != "" {
		sess.Greeting = []string{s.greeting}
	}
	sess.Serve(c)
}

func sendAll(t *testing.T, c *mxrelay.Client, n int, opts ...mxrelay.SendOption) []*mxrelay.Result {
	t.Helper()
	var hs []*mxrelay.Handle
	for i := range n {
		h, err := c.Enqueue(testkit.Mail(fmt.Sprint("m", i)), opts...)
		require.NoError(t, err)
		hs = append(hs, h)
	}
	return testkit.Results(t, hs)
}

// One reply line too many shifted every later reply by one in the BDAT
// modes: BDAT LAST took RCPT's 250 while the server answered the end of
// data 554, and 40 of 40 emails were reported delivered.
func TestStrayReplyIsNoDelivery(t *testing.T) {
	for _, variant := range []struct {
		name     string
		greeting string
		ehlo     func(honest string) []string
	}{
		{name: "the last EHLO line twice", ehlo: func(honest string) []string { return []string{honest + "\r\n250 ENHANCEDSTATUSCODES"} }},
		{name: "a 250 before any command", greeting: "220 mx.test ESMTP\r\n250 2.0.0 hello again"},
	} {
		for _, m := range fakesmtp.EngineModes {
			t.Run(variant.name+"/"+m.Name, func(t *testing.T) {
				srv := &smtpServe{greeting: variant.greeting, ext: m.Ext, ehlo: variant.ehlo,
					end: func() ([]string, bool) { return []string{"554 5.6.0 refused"}, false }}
				u := fakesmtp.Listen(t, srv.serve)
				s := testkit.NewRelay(t, &relaytest.Options{UpstreamAddr: u.Addr})
				c := testkit.NewClient(t, s, &mxrelay.Options{MaxEmailsPerSession: 40, BatchWait: 100 * time.Millisecond, MaxReconnectAttempts: 2})
				for i, res := range sendAll(t, c, 40, mxrelay.WithRetries(0)) {
					assert.Error(t, res.Err, "email %d reported delivered; the server kept %d", i, srv.kept.Load())
					assert.Empty(t, res.Accepted)
				}
				assert.Zero(t, srv.kept.Load())
			})
		}
	}
}

// A server that stores the message and answers its end of data outside
// the grammar (a 3xx) left the email to be retried as never sent: two
// copies upstream, and a Result saying delivered, MaybeDelivered false.
func TestOutOfGrammarEndOfDataIsUnknown(t *testing.T) {
	for _, m := range fakesmtp.EngineModes {
		t.Run(m.Name, func(t *testing.T) {
			srv := &smtpServe{ext: m.Ext, end: func() ([]string, bool) { return []string{"354 queued"}, true }}
			u := fakesmtp.Listen(t, srv.serve)
			s := testkit.NewRelay(t, &relaytest.Options{UpstreamAddr: u.Addr})
			c := testkit.NewClient(t, s, nil)
			res, err := c.Send(testkit.Ctx(t), testkit.Mail("once"))
			require.ErrorIs(t, err, mxrelay.ErrUnknownOutcome)
			assert.True(t, res.MaybeDelivered)
			assert.Equal(t, 1, res.Attempts, "not retried as never sent")
			assert.Equal(t, int64(1), srv.ends.Load(), "one copy upstream")
		})
	}
}

// Close(ctx) interrupting a spooled email's last allowed attempt before its
// end of data charged the attempt, failed the email with "use of closed
// network connection" and removed its file.
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

// When the relay stopped reading during a large body, cancelling Send's
// context returned only after the write deadline, and Close with a short
// context waited as long: closing a channel did not interrupt a frame
// write in progress.
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

// An email cancelled while it waited for a slot in the pipeline window
// returned only when the window moved: up to CommandTimeout behind a
// stalled upstream.
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

// BODY=BINARYMIME was accepted, but the body was still checked and encoded
// as text: refused for a bare LF, or with FixLineEndings rewritten.
func TestBinaryMIMEBodyGoesAsItIs(t *testing.T) {
	s := testkit.NewRelay(t, nil)
	body := []byte("Subject: bin\r\n\r\n\x00\x01 bare LF\n bare CR\r no final line end \xff")
	for _, fix := range []bool{false, true} {
		t.Run(fmt.Sprint("FixLineEndings=", fix), func(t *testing.T) {
			before := len(s.Mailbox())
			c := testkit.NewClient(t, s, &mxrelay.Options{FixLineEndings: fix})
			_, err := c.Send(testkit.Ctx(t), mxrelay.Email{From: "a@example.com", To: []string{"b@example.com"}, Body: bytes.NewReader(body),
				MailOptions: &mxrelay.MailOptions{Body: smtp.BodyBinaryMIME}})
			require.NoError(t, err)
			box := s.Mailbox()
			require.Len(t, box, before+1)
			assert.Equal(t, body, box[before].Data, "byte for byte")
		})
	}
	t.Run("over JSON frames, not UTF-8", func(t *testing.T) {
		c := testkit.NewClient(t, s, &mxrelay.Options{DisableBinary: true})
		_, err := c.Enqueue(mxrelay.Email{From: "a@example.com", To: []string{"b@example.com"}, Body: bytes.NewReader(body),
			MailOptions: &mxrelay.MailOptions{Body: smtp.BodyBinaryMIME}})
		require.ErrorIs(t, err, mxrelay.ErrNotUTF8)
	})
}

// With DisableBinary an 8-bit body was accepted by Enqueue and failed only
// after connecting, with a message blaming the relay.
func TestDisableBinaryRefusesAn8BitBodyAtEnqueue(t *testing.T) {
	s := testkit.NewRelay(t, nil)
	c := testkit.NewClient(t, s, &mxrelay.Options{DisableBinary: true})
	_, err := c.Enqueue(mxrelay.Email{From: "a@example.com", To: []string{"b@example.com"}, Body: strings.NewReader("Subject: x\r\n\r\nLatin-1 \xe9\r\n")})
	require.ErrorIs(t, err, mxrelay.ErrNotUTF8)
	require.ErrorIs(t, err, mxrelay.ErrInvalidEmail)
	assert.Zero(t, s.Stats().Connections, "refused before connecting")
}

// Every lost connection cost at least ReconnectInterval before the next
// dial, the first one after a connection that worked included.
func TestFirstRedialAfterAWorkingConnectionGoesAtOnce(t *testing.T) {
	s := testkit.NewRelay(t, nil)
	c := testkit.NewClient(t, s, &mxrelay.Options{ReconnectInterval: 20 * time.Second, MaxReconnectInterval: 20 * time.Second, IdleTimeout: time.Minute})
	_, err := c.Send(testkit.Ctx(t), testkit.Mail("before"))
	require.NoError(t, err)
	s.CloseClientConnections()
	require.Eventually(t, func() bool { return c.ConnState() == mxrelay.StateDisconnected }, 10*time.Second, time.Millisecond)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err = c.Send(ctx, testkit.Mail("after"))
	require.NoError(t, err, "the redial after a connection that worked does not wait ReconnectInterval")
}

// A channel that failed on a live, authenticated WebSocket waited a whole
// ReconnectInterval before the next open.
func TestChannelFailureOnALiveConnectionIsRetriedAtOnce(t *testing.T) {
	s := testkit.NewRelay(t, nil)
	s.Inject(relaytest.Fault{Kind: relaytest.FailChannel, Error: "upstream busy"})
	c := testkit.NewClient(t, s, &mxrelay.Options{ReconnectInterval: 20 * time.Second, MaxReconnectInterval: 20 * time.Second})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err := c.Send(ctx, testkit.Mail("retried on the same WebSocket"))
	require.NoError(t, err)
	assert.Equal(t, 1, s.Stats().Connections, "on the same WebSocket")
}

// An email whose last attempt got a 421 before its RCPTs failed with an
// empty Result.Rejected: the 4xx its recipient got in the attempt before
// was lost. The first connection answers RCPT 450, the second MAIL 421.
func TestRecipientsLastRefusalIsReported(t *testing.T) {
	var conns atomic.Int32
	u := fakesmtp.Listen(t, func(c *fakesmtp.Conn) {
		n := conns.Add(1)
		c.Say("220 mx.test ESMTP")
		c.Commands(func(verb, l string) bool {
			switch {
			case verb == "EHLO":
				c.Say("250-mx.test\r\n250 ENHANCEDSTATUSCODES")
			case verb == "MAIL" && n > 1:
				c.Say("421 4.3.2 shutting down")
				return false
			case verb == "RCPT":
				c.Say("450 4.2.1 mailbox busy")
			default:
				c.Say("250 2.0.0 ok")
			}
			return true
		})
	})
	s := testkit.NewRelay(t, &relaytest.Options{UpstreamAddr: u.Addr})
	c := testkit.NewClient(t, s, &mxrelay.Options{DisablePipelining: true})
	res, err := c.Send(testkit.Ctx(t), testkit.Mail("busy", "busy@example.com"), mxrelay.WithRetries(1))
	require.Error(t, err)
	assert.Equal(t, 2, res.Attempts)
	require.Len(t, res.Rejected, 1)
	assert.Equal(t, "busy@example.com", res.Rejected[0].Address)
	var se *mxrelay.SMTPError
	require.ErrorAs(t, res.Rejected[0].Err, &se)
	assert.Equal(t, 450, se.Code)
}

// STARTTLS checks the certificate against the name the caller gives, never
// the one in the greeting, which the relay writes: a relay answering
// "220 evil.example" with a valid certificate for evil.example gets no
// AUTH.
func TestStartTLSChecksTheCallersName(t *testing.T) {
	evilTLS, evilPool := selfSignedFor(t, "evil.example")
	u := fakesmtp.Listen(t, func(c *fakesmtp.Conn) {
		c.Say("220 evil.example ESMTP")
		c.Commands(func(verb, l string) bool {
			switch verb {
			case "EHLO":
				c.Say("250-evil.example\r\n250-AUTH PLAIN\r\n250 STARTTLS")
			case "STARTTLS":
				if !c.StartTLS(evilTLS) {
					return false
				}
			default:
				c.Say("250 ok")
			}

			return true
		})
	})
	s := testkit.NewRelay(t, &relaytest.Options{UpstreamAddr: u.Addr})
	c := testkit.NewClient(t, s, &mxrelay.Options{StartTLS: mxrelay.StartTLSRequired, TLSConfig: &tls.Config{ServerName: "mx.example.com", RootCAs: evilPool},
		Username: "u", Password: "secret-password", MaxReconnectAttempts: 1})
	_, err := c.Send(testkit.Ctx(t), testkit.Mail("x"))
	var cve *tls.CertificateVerificationError
	require.ErrorAs(t, err, &cve)
	assert.False(t, u.Saw("AUTH"), "%q", u.Transcript())

	// Without a ServerName there is no name of the caller's to check:
	// New refuses, where the greeting's evil.example was checked and the
	// password sent to it.
	c2, err := mxrelay.New(s.URL, s.APIKey, testkit.Fast(&mxrelay.Options{StartTLS: mxrelay.StartTLSRequired, TLSConfig: &tls.Config{RootCAs: evilPool},
		Username: "u", Password: "secret-password", MaxReconnectAttempts: 1}))
	if err == nil {
		c2.Send(testkit.Ctx(t), testkit.Mail("y"))
		c2.Close(testkit.Ctx(t))
	}
	require.Error(t, err, "STARTTLS with no TLSConfig.ServerName")
	assert.False(t, u.Saw("AUTH"), "%q", u.Transcript())
}

// selfSignedFor returns a server TLS config for host and a pool that
// trusts it.
func selfSignedFor(t *testing.T, host string) (*tls.Config, *x509.CertPool) {
	t.Helper()
	cert, pool, err := testcert.New(host)
	require.NoError(t, err)
	return &tls.Config{Certificates: []tls.Certificate{cert}}, pool
}
