package mxrelay_test

import (
	"fmt"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mxrelay/mxrelay"
	"github.com/mxrelay/mxrelay/internal/fakesmtp"
	"github.com/mxrelay/mxrelay/internal/testkit"
	"github.com/mxrelay/mxrelay/relaytest"
)

func TestPermanentAndTemporaryReplies(t *testing.T) {
	for _, tc := range []struct {
		name      string
		command   string
		reply     string
		delivered bool
		attempts  int
	}{
		{"550 to MAIL", "MAIL", "550 5.7.1 sender refused", false, 1},
		{"451 to MAIL", "MAIL", "451 4.3.0 try later", true, 2},
		{"554 to DATA", "DATA", "554 5.5.1 no valid recipients", false, 1},
		{"554 to BDAT", "BDAT", "554 5.5.1 no valid recipients", false, 1},
		{"452 to end of data", ".", "452 4.3.1 insufficient storage", true, 2},
		{"552 to end of data", ".", "552 5.3.4 too big", false, 1},
		{"421 to MAIL", "MAIL", "421 4.3.2 shutting down", true, 2},
		{"421 to RCPT", "RCPT", "421 4.3.2 shutting down", true, 2},
		{"421 to end of data", ".", "421 4.3.2 shutting down", true, 2},
	} {
		for _, m := range testkit.Modes {
			if m.Chunking != (tc.command != "DATA") {
				continue
			}
			t.Run(m.Name+"/"+tc.name, func(t *testing.T) {
				s := testkit.NewRelay(t, &relaytest.Options{HideExtensions: m.Hide})
				s.Inject(relaytest.Fault{Kind: relaytest.ReplaceReply, Command: tc.command, Reply: tc.reply})
				c := testkit.NewClient(t, s, &mxrelay.Options{DisablePipelining: m.Lockstep})
				res, err := c.Send(testkit.Ctx(t), testkit.Mail(tc.name))
				assert.Equal(t, tc.attempts, res.Attempts)
				if tc.delivered {
					require.NoError(t, err)
					assert.Equal(t, 1, testkit.CountSubject(s, tc.name))
					return
				}
				var se *mxrelay.SMTPError
				require.ErrorAs(t, err, &se)
				assert.Equal(t, tc.reply[:3], fmt.Sprint(se.Code))
				assert.Equal(t, 0, testkit.CountSubject(s, tc.name))
				// RSET keeps the session usable for the next email.
				_, err = c.Send(testkit.Ctx(t), testkit.Mail("next"))
				require.NoError(t, err)
			})
		}
	}
}

func TestRecipientReplies(t *testing.T) {
	s := testkit.NewRelay(t, nil)
	s.Inject(relaytest.Fault{Kind: relaytest.ReplaceReply, Command: "RCPT", Recipient: "gone@example.com", Reply: "550 5.1.1 <gone@example.com>: no such user", Times: -1})
	s.Inject(relaytest.Fault{Kind: relaytest.ReplaceReply, Command: "RCPT", Recipient: "busy@example.com", Reply: "450 4.2.1 mailbox busy"})
	c := testkit.NewClient(t, s, nil)
	res, err := c.Send(testkit.Ctx(t), testkit.Mail("partial", "ok@example.com", "gone@example.com", "busy@example.com"))
	require.NoError(t, err, "delivered to the accepted recipients")
	assert.Equal(t, mxrelay.OutcomeDelivered, res.Outcome, "delivered to some, refused for others")
	assert.ElementsMatch(t, []string{"ok@example.com", "busy@example.com"}, res.Accepted)
	require.Len(t, res.Rejected, 1)
	assert.Equal(t, "gone@example.com", res.Rejected[0].Address)
	var rse *mxrelay.SMTPError
	require.ErrorAs(t, res.Rejected[0].Err, &rse)
	assert.Equal(t, 550, rse.Code)
	assert.Equal(t, [3]int{5, 1, 1}, [3]int(rse.EnhancedCode))
	assert.Equal(t, 2, res.Attempts, "the 450 recipient was retried alone")
	box := s.Mailbox()
	require.Len(t, box, 2)
	assert.Equal(t, []string{"ok@example.com"}, box[0].To)
	assert.Equal(t, []string{"busy@example.com"}, box[1].To)

	t.Run("all rejected fails with the reply", func(t *testing.T) {
		res, err := c.Send(testkit.Ctx(t), testkit.Mail("nobody", "gone@example.com"))
		var se *mxrelay.SMTPError
		require.ErrorAs(t, err, &se)
		assert.Equal(t, 550, se.Code)
		assert.Equal(t, mxrelay.OutcomeFailed, res.Outcome)
		assert.Len(t, res.Rejected, 1)
		assert.Equal(t, 1, res.Attempts, "5xx is not retried")
	})
	t.Run("temporary rejection runs out of retries", func(t *testing.T) {
		s.Inject(relaytest.Fault{Kind: relaytest.ReplaceReply, Command: "RCPT", Recipient: "full@example.com", Reply: "452 4.2.2 over quota", Times: -1})
		res, err := c.Send(testkit.Ctx(t), testkit.Mail("full", "full@example.com"), mxrelay.WithRetries(2))
		var ee *mxrelay.EmailError
		require.ErrorAs(t, err, &ee)
		assert.True(t, ee.Temporary())
		assert.Equal(t, 3, ee.Attempts)
		assert.Equal(t, 3, res.Attempts)
		require.Len(t, res.Rejected, 1)
		var rse *mxrelay.SMTPError
		require.ErrorAs(t, res.Rejected[0].Err, &rse)
		assert.Equal(t, 452, rse.Code)
		s.ClearFaults()
	})
}

func TestPermanentRecipientRefusalIsNotRetried(t *testing.T) {
	s := testkit.NewRelay(t, nil)
	s.Inject(relaytest.Fault{Kind: relaytest.ReplaceReply, Command: "RCPT", Recipient: "gone@example.com", Reply: "550 5.1.1 no such user"})
	s.Inject(relaytest.Fault{Kind: relaytest.ReplaceReply, Command: ".", Reply: "451 4.3.0 try later"})
	logs := &testkit.LogBuffer{}
	c := testkit.NewClient(t, s, &mxrelay.Options{Logger: logs.Logger()})
	res, err := c.Send(testkit.Ctx(t), testkit.Mail("retry without the refused one", "ok@example.com", "gone@example.com"))
	require.NoError(t, err)
	assert.Equal(t, 2, res.Attempts)
	assert.Equal(t, []string{"ok@example.com"}, res.Accepted)
	require.Len(t, res.Rejected, 1)
	assert.Equal(t, "gone@example.com", res.Rejected[0].Address)
	assert.Equal(t, 1, strings.Count(logs.String(), "RCPT TO:<gone@example.com>"), "a 550 recipient is not asked for again")
	require.Len(t, s.Mailbox(), 1)
	assert.Equal(t, []string{"ok@example.com"}, s.Mailbox()[0].To)
}

// Regression (issue "Every reply accounted for"): an email whose last
// attempt got a 421 before its RCPTs failed with an empty Result.Rejected:
// the 4xx its recipient got in the attempt before was lost. The first
// connection answers RCPT 450, the second MAIL 421.
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

func TestDropAfterRcptRetries(t *testing.T) {
	s := testkit.NewRelay(t, nil)
	s.Inject(relaytest.Fault{Kind: relaytest.DropAfterRcpt})
	c := testkit.NewClient(t, s, &mxrelay.Options{DisablePipelining: true})
	res, err := c.Send(testkit.Ctx(t), testkit.Mail("dropped once"))
	require.NoError(t, err)
	assert.Equal(t, 2, res.Attempts)
	assert.False(t, res.MaybeDelivered, "the drop came before the end of data")
	assert.Equal(t, 1, testkit.CountSubject(s, "dropped once"))
	assert.Equal(t, 2, s.Stats().Connections, "the client reconnected")
}

// Pipelined, the end of data goes out with the RCPT: a drop before the
// RCPT's reply leaves the outcome unknown, never "not sent".
func TestDropAfterPipelinedRcptIsUnknown(t *testing.T) {
	s := testkit.NewRelay(t, nil)
	s.Inject(relaytest.Fault{Kind: relaytest.DropAfterRcpt})
	c := testkit.NewClient(t, s, nil)
	res, err := c.Send(testkit.Ctx(t), testkit.Mail("dropped in the pipe"))
	require.ErrorIs(t, err, mxrelay.ErrUnknownOutcome)
	assert.True(t, res.MaybeDelivered)
	assert.Equal(t, 1, res.Attempts)
	assert.Equal(t, 0, testkit.CountSubject(s, "dropped in the pipe"), "the relay cut before forwarding the data")
}

func TestDropAfterFinalDot(t *testing.T) {
	t.Run("unknown outcome fails by default", func(t *testing.T) {
		s := testkit.NewRelay(t, nil)
		s.Inject(relaytest.Fault{Kind: relaytest.DropAfterFinalDot})
		c := testkit.NewClient(t, s, nil)
		res, err := c.Send(testkit.Ctx(t), testkit.Mail("maybe"))
		require.ErrorIs(t, err, mxrelay.ErrUnknownOutcome)
		var ue *mxrelay.UnknownOutcomeError
		require.ErrorAs(t, err, &ue)
		assert.Equal(t, mxrelay.OutcomeUnknown, res.Outcome)
		assert.True(t, res.MaybeDelivered)
		assert.Equal(t, 1, res.Attempts)
		assert.Equal(t, 1, testkit.CountSubject(s, "maybe"), "the upstream did get it")
		// The next email goes through a new connection.
		_, err = c.Send(testkit.Ctx(t), testkit.Mail("next"))
		require.NoError(t, err)
	})
	t.Run("retried when allowed", func(t *testing.T) {
		s := testkit.NewRelay(t, nil)
		s.Inject(relaytest.Fault{Kind: relaytest.DropAfterFinalDot})
		c := testkit.NewClient(t, s, &mxrelay.Options{RetryUnknown: true})
		res, err := c.Send(testkit.Ctx(t), testkit.Mail("twice"))
		require.NoError(t, err)
		assert.Equal(t, mxrelay.OutcomeDelivered, res.Outcome, "delivered, though an earlier attempt may have delivered it too")
		assert.True(t, res.MaybeDelivered)
		assert.Equal(t, 2, res.Attempts)
		assert.Equal(t, 2, testkit.CountSubject(s, "twice"), "a retried unknown outcome may duplicate, and the result says so")
	})
}

// A MAIL refused with 5xx is final for that email even when the
// connection breaks before the rest of its transaction is answered.
func TestMailRefusalSurvivesACut(t *testing.T) {
	s := testkit.NewRelay(t, nil)
	s.Inject(relaytest.Fault{Kind: relaytest.ReplaceReply, Command: "MAIL", Reply: "550 5.7.1 sender refused"})
	s.Inject(relaytest.Fault{Kind: relaytest.DropAfterFinalDot})
	c := testkit.NewClient(t, s, nil)
	res, err := c.Send(testkit.Ctx(t), testkit.Mail("refused then cut"))
	var se *mxrelay.SMTPError
	require.ErrorAs(t, err, &se)
	assert.Equal(t, 550, se.Code)
	assert.Equal(t, 1, res.Attempts)
	assert.False(t, res.MaybeDelivered)
	assert.Empty(t, s.Mailbox())
}
