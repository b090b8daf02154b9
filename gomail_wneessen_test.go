package mxrelay_test

import (
	"bytes"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	gomail "github.com/wneessen/go-mail"

	"github.com/mxrelay/mxrelay"
	"github.com/mxrelay/mxrelay/internal/testkit"
	"github.com/mxrelay/mxrelay/relaytest"
)

// TestGoMailMsg sends a message composed with wneessen/go-mail (its Msg is
// an io.WriterTo) through a Sender, over binary and JSON text frames, and
// takes apart what the upstream received: the same subject, HTML and
// attachment come out.
func TestGoMailMsg(t *testing.T) {
	const subject = "Grüße aus Köln – 日本語 ✓"
	const html = "<html><body>\r\n<h1>Grüße</h1>\r\n.\r\n<p>A lone dot above; <b>ünïcödé</b> ✓</p>\r\n</body></html>\r\n"
	attachment := attachmentBytes(64 << 10)

	for _, binary := range []bool{true, false} {
		t.Run(map[bool]string{true: "binary", false: "json"}[binary], func(t *testing.T) {
			s := testkit.NewRelay(t, &relaytest.Options{DisableBinary: !binary})
			c := testkit.NewClient(t, s, nil)

			m := gomail.NewMsg()
			require.NoError(t, m.FromFormat("Zoë App", "app@example.com"))
			require.NoError(t, m.To("b@example.com"))
			require.NoError(t, m.Cc("c@example.com"))
			m.Subject(subject)
			m.SetBodyString(gomail.TypeTextHTML, html)
			require.NoError(t, m.AttachReader("report.bin", bytes.NewReader(attachment)))
			from, err := m.GetSender(false)
			require.NoError(t, err)
			rcpts, err := m.GetRecipients()
			require.NoError(t, err)

			require.NoError(t, mxrelay.NewSender(c).Send(from, rcpts, m))

			box := s.Mailbox()
			require.Len(t, box, 1)
			assert.Equal(t, "app@example.com", box[0].From)
			assert.Equal(t, []string{"b@example.com", "c@example.com"}, box[0].To)
			h, parts := parseMIME(t, box[0].Data)
			assert.Equal(t, subject, decodeHeader(t, h.Get("Subject")))
			fromHdr, err := h.AddressList("From")
			require.NoError(t, err)
			require.Len(t, fromHdr, 1)
			assert.Equal(t, "Zoë App", fromHdr[0].Name)

			var htmlPart, filePart *mimePart
			for i := range parts {
				switch {
				case parts[i].filename != "":
					filePart = &parts[i]
				case parts[i].mediaType == "text/html":
					htmlPart = &parts[i]
				}
			}
			require.NotNil(t, htmlPart, "an HTML part")
			assert.Equal(t, html, string(htmlPart.body))
			require.NotNil(t, filePart, "an attachment")
			assert.Equal(t, "report.bin", filePart.filename)
			assert.Equal(t, attachment, filePart.body)
		})
	}
}
