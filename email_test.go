package mxrelay_test

import (
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
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

func TestInvalidEmails(t *testing.T) {
	s := testkit.NewRelay(t, nil)
	c := testkit.NewClient(t, s, nil)
	long := strings.Repeat("a", 250) + "@example.com"
	for _, tc := range []struct {
		name string
		e    mxrelay.Email
	}{
		{"no recipient", mxrelay.Email{From: "a@example.com", Body: strings.NewReader("x")}},
		{"nil body", mxrelay.Email{From: "a@example.com", To: []string{"b@example.com"}}},
		{"CRLF in sender", mxrelay.Email{From: "a@example.com>\r\nRCPT TO:<evil@example.com", To: []string{"b@example.com"}, Body: strings.NewReader("x")}},
		{"LF in recipient", mxrelay.Email{From: "a@example.com", To: []string{"b@example.com\nDATA"}, Body: strings.NewReader("x")}},
		{"NUL", mxrelay.Email{From: "a@exa\x00mple.com", To: []string{"b@example.com"}, Body: strings.NewReader("x")}},
		{"angle bracket", mxrelay.Email{From: "a@example.com", To: []string{"b@example.com> NOTIFY=NEVER"}, Body: strings.NewReader("x")}},
		{"space parameter", mxrelay.Email{From: "a@example.com SIZE=1", To: []string{"b@example.com"}, Body: strings.NewReader("x")}},
		{"too long", mxrelay.Email{From: "a@example.com", To: []string{long}, Body: strings.NewReader("x")}},
		{"not an address", mxrelay.Email{From: "a@example.com", To: []string{"bob"}, Body: strings.NewReader("x")}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			res, err := c.Send(testkit.Ctx(t), tc.e)
			require.ErrorIs(t, err, mxrelay.ErrInvalidEmail)
			assert.Nil(t, res)
		})
	}
	_, err := c.Enqueue(testkit.Mail("x"), mxrelay.WithPriority(mxrelay.Priority(7)))
	require.ErrorIs(t, err, mxrelay.ErrInvalidEmail)
	assert.Zero(t, s.Stats().Connections, "nothing invalid makes the client connect")
	// The null reverse-path is valid.
	_, err = c.Send(testkit.Ctx(t), mxrelay.Email{From: "", To: []string{"b@example.com"}, Body: strings.NewReader(testkit.Msg("bounce"))})
	require.NoError(t, err)
}

// MAIL and RCPT parameters: what the server does not offer fails the email
// before anything of it is sent; what it offers arrives as asked.
func TestMailAndRcptParameters(t *testing.T) {
	s := testkit.NewRelay(t, &relaytest.Options{HideExtensions: []string{"SMTPUTF8"}})
	c := testkit.NewClient(t, s, nil)
	for name, e := range map[string]mxrelay.Email{
		"REQUIRETLS without TLS":     {From: "a@example.com", To: []string{"b@example.com"}, Body: strings.NewReader(testkit.Msg("x")), MailOptions: &mxrelay.MailOptions{RequireTLS: true}},
		"non-ASCII without SMTPUTF8": {From: "a@example.com", To: []string{"ü@example.com"}, Body: strings.NewReader(testkit.Msg("x"))},
		"RRVS": {From: "a@example.com", To: []string{"b@example.com"}, Body: strings.NewReader(testkit.Msg("x")),
			RcptOptions: map[string]*mxrelay.RcptOptions{"b@example.com": {RequireRecipientValidSince: time.Now()}}},
	} {
		res, err := c.Send(testkit.Ctx(t), e)
		require.ErrorIs(t, err, mxrelay.ErrInvalidEmail, name)
		assert.Equal(t, 1, res.Attempts, name)
	}
	assert.Empty(t, s.Mailbox())

	_, err := c.Enqueue(mxrelay.Email{From: "a@example.com", To: []string{"b@example.com"}, Body: strings.NewReader(testkit.Msg("x")),
		RcptOptions: map[string]*mxrelay.RcptOptions{"c@example.com": {}}})
	require.ErrorIs(t, err, mxrelay.ErrInvalidEmail, "RcptOptions for an address not in To")

	_, err = c.Send(testkit.Ctx(t), mxrelay.Email{From: "a@example.com", To: []string{"b@example.com"}, Body: strings.NewReader(testkit.Msg("dsn")),
		MailOptions: &mxrelay.MailOptions{EnvelopeID: "id-1"},
		RcptOptions: map[string]*mxrelay.RcptOptions{"b@example.com": {Notify: []smtp.DSNNotify{smtp.DSNNotifyFailure}}}})
	require.NoError(t, err)
	box := s.Mailbox()
	require.Len(t, box, 1)
	assert.Equal(t, "id-1", box[0].MailOptions.EnvelopeID)
	assert.Equal(t, []smtp.DSNNotify{smtp.DSNNotifyFailure}, box[0].RcptOptions[0].Notify)
	assert.Equal(t, smtp.Body8BitMIME, box[0].MailOptions.Body)
	assert.EqualValues(t, len(box[0].Data), box[0].MailOptions.Size)
}
