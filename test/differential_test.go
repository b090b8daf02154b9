package test

import (
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/emersion/go-smtp"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mxrelay/mxrelay"
	"github.com/mxrelay/mxrelay/internal/relayconn"
	"github.com/mxrelay/mxrelay/internal/testkit"
	"github.com/mxrelay/mxrelay/relaytest"
)

// diffEmail is one email of the differential batch: what our client is
// given, and what go-smtp's Client is given for the same message.
type diffEmail struct {
	from  string
	to    []string
	body  string
	mail  *smtp.MailOptions
	rcpt  map[string]*smtp.RcptOptions
	utf8  bool // go-smtp's Client must be told; ours asks by itself
	fixLF bool // the body has bare LFs: go-smtp's DotWriter makes them CRLF, ours with FixLineEndings
}

func diffBatch() []diffEmail {
	// Over two BDAT chunks of 256 KiB, with two-byte characters that
	// straddle the chunk boundaries.
	var big strings.Builder
	big.WriteString("Subject: big\r\n\r\n")
	for big.Len() < 600<<10 {
		big.WriteString(strings.Repeat("é", 37) + "x\r\n")
	}
	return []diffEmail{
		{from: "a@example.com", to: []string{"b@example.com"}, body: testkit.Msg("plain")},
		{from: "a@example.com", to: []string{"b@example.com"}, body: "Subject: dots\r\n\r\n.\r\n..\r\n.leading\r\n...\r\nlast line without CRLF"},
		{from: "a@example.com", to: []string{"b@example.com"}, body: ""},
		{from: "a@example.com", to: []string{"b@example.com"}, body: big.String()},
		{from: "a@example.com", to: []string{"x@example.com", "y@example.com", "z@example.com"}, body: testkit.Msg("dsn"),
			mail: &smtp.MailOptions{Return: smtp.DSNReturnHeaders, EnvelopeID: "env+id=1"},
			rcpt: map[string]*smtp.RcptOptions{
				"x@example.com": {Notify: []smtp.DSNNotify{smtp.DSNNotifySuccess, smtp.DSNNotifyFailure}},
				"z@example.com": {Notify: []smtp.DSNNotify{smtp.DSNNotifyNever}, OriginalRecipientType: smtp.DSNAddressTypeRFC822, OriginalRecipient: "orig+z@example.com"},
			}},
		{from: "jösé@exämple.com", to: []string{"ü@example.com"}, body: "Subject: =?UTF-8?Q?=C3=BC?=\r\n\r\nGrüße\r\n", utf8: true},
		{from: "", to: []string{"postmaster@example.com"}, body: testkit.Msg("bounce")},
		{from: "a@example.com", to: []string{"b@example.com"}, body: "Subject: lf\n\nwritten with LF\n.\nonly\n", fixLF: true},
	}
}

// TestDifferentialAgainstGoSMTP sends the same batch through go-smtp's
// Client (lock-step DATA, through the relay) and through our client in
// each engine mode, and asks the upstream go-smtp server to have received
// exactly the same envelopes, parameters and bytes.
func TestDifferentialAgainstGoSMTP(t *testing.T) {
	batch := diffBatch()

	ref := testkit.NewRelay(t, nil)
	sendWithGoSMTP(t, ref, batch)
	want := ref.Mailbox()
	require.Len(t, want, len(batch))

	type variant struct {
		name   string
		hide   []string
		lock   bool
		noBin  bool
		window int
	}
	variants := []variant{{name: "JSON pipelined BDAT", noBin: true}, {name: "window 1", window: 1}}
	for _, m := range testkit.Modes {
		variants = append(variants, variant{name: m.Name, hide: m.Hide, lock: m.Lockstep})
	}
	for _, v := range variants {
		t.Run(v.name, func(t *testing.T) {
			s := testkit.NewRelay(t, &relaytest.Options{HideExtensions: v.hide, DisableBinary: v.noBin})
			c := testkit.NewClient(t, s, &mxrelay.Options{DisablePipelining: v.lock, PipelineWindow: v.window, FixLineEndings: true, MaxEmailsPerSession: len(batch), BatchWait: 10 * time.Second})
			var hs []*mxrelay.Handle
			for _, e := range batch {
				h, err := c.Enqueue(mxrelay.Email{From: e.from, To: e.to, Body: strings.NewReader(e.body), MailOptions: e.mail, RcptOptions: e.rcpt})
				require.NoError(t, err)
				hs = append(hs, h)
			}
			for _, h := range hs {
				_, err := h.Wait(testkit.Ctx(t))
				require.NoError(t, err)
			}
			got := s.Mailbox()
			require.Len(t, got, len(want))
			for i := range want {
				w, g := want[i], got[i]
				assert.Equal(t, w.From, g.From, "email %d", i)
				assert.Equal(t, w.To, g.To, "email %d", i)
				assert.Equal(t, string(w.Data), string(g.Data), "email %d", i)
				assert.Equal(t, int64(len(g.Data)), g.MailOptions.Size, "email %d: SIZE is the message's size", i)
				w.MailOptions.Size, g.MailOptions.Size = 0, 0
				assert.Equal(t, w.MailOptions, g.MailOptions, "email %d", i)
				assert.Equal(t, w.RcptOptions, g.RcptOptions, "email %d", i)
			}
			assert.Equal(t, 1, s.Stats().Channels, "one session")
		})
	}
}

// sendWithGoSMTP sends batch with go-smtp's Client over one channel of s.
func sendWithGoSMTP(t *testing.T, s *relaytest.Server, batch []diffEmail) {
	ctx := testkit.Ctx(t)
	conn, err := relayconn.Dial(ctx, relayconn.Config{URL: s.URL, APIKey: s.APIKey, Binary: true})
	require.NoError(t, err)
	defer conn.Close(websocket.StatusNormalClosure, "")
	require.NoError(t, conn.Authenticate(ctx))
	ch, err := conn.OpenChannel(ctx)
	require.NoError(t, err)
	defer ch.Close()
	sc := smtp.NewClient(ch)
	require.NoError(t, sc.Hello("localhost"))
	for _, e := range batch {
		mo := &smtp.MailOptions{}
		if e.mail != nil {
			*mo = *e.mail
		}
		mo.UTF8 = e.utf8
		mo.Size = 1 // SIZE is checked apart: go-smtp's Client does not count it
		require.NoError(t, sc.Mail(e.from, mo))
		for _, to := range e.to {
			require.NoError(t, sc.Rcpt(to, e.rcpt[to]))
		}
		w, err := sc.Data()
		require.NoError(t, err)
		_, err = w.Write([]byte(e.body))
		require.NoError(t, err)
		require.NoError(t, w.Close())
	}
	require.NoError(t, sc.Quit())
}
