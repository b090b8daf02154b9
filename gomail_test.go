package mxrelay_test

import (
	"bytes"
	"encoding/base64"
	"io"
	"math/rand/v2"
	"mime"
	"mime/multipart"
	"mime/quotedprintable"
	netmail "net/mail"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	gomail "gopkg.in/mail.v2"

	"github.com/mxrelay/mxrelay"
	"github.com/mxrelay/mxrelay/internal/testkit"
	"github.com/mxrelay/mxrelay/relaytest"
)

// A Sender is what gomail wants from a dialer.
var (
	_ gomail.Sender     = (*mxrelay.Sender)(nil)
	_ gomail.SendCloser = (*mxrelay.Sender)(nil)
)

// mimePart is a leaf of a MIME message, its transfer encoding undone.
type mimePart struct {
	mediaType string
	filename  string
	body      []byte
}

// parseMIME takes a message apart with net/mail and mime/multipart: its
// header and its leaf parts, in order.
func parseMIME(t *testing.T, data []byte) (netmail.Header, []mimePart) {
	t.Helper()
	m, err := netmail.ReadMessage(bytes.NewReader(data))
	require.NoError(t, err)
	return m.Header, leafParts(t, m.Header.Get("Content-Type"), m.Header.Get("Content-Transfer-Encoding"), m.Header.Get("Content-Disposition"), m.Body)
}

func leafParts(t *testing.T, contentType, encoding, disposition string, body io.Reader) []mimePart {
	t.Helper()
	mediaType, params, err := mime.ParseMediaType(contentType)
	require.NoError(t, err, "Content-Type %q", contentType)
	if strings.HasPrefix(mediaType, "multipart/") {
		mr := multipart.NewReader(body, params["boundary"])
		var out []mimePart
		for {
			p, err := mr.NextRawPart()
			if err == io.EOF {
				return out
			}
			require.NoError(t, err)
			out = append(out, leafParts(t, p.Header.Get("Content-Type"), p.Header.Get("Content-Transfer-Encoding"), p.Header.Get("Content-Disposition"), p)...)
		}
	}
	switch strings.ToLower(encoding) {
	case "base64":
		body = base64.NewDecoder(base64.StdEncoding, body)
	case "quoted-printable":
		body = quotedprintable.NewReader(body)
	}
	b, err := io.ReadAll(body)
	require.NoError(t, err)
	part := mimePart{mediaType: mediaType, body: b}
	if disposition != "" {
		_, dp, err := mime.ParseMediaType(disposition)
		require.NoError(t, err)
		part.filename = dp["filename"]
	}
	return []mimePart{part}
}

// decodeHeader undoes RFC 2047 encoded words.
func decodeHeader(t *testing.T, s string) string {
	t.Helper()
	d, err := new(mime.WordDecoder).DecodeHeader(s)
	require.NoError(t, err)
	return d
}

// attachmentBytes are bytes that are not text: every byte value, at random.
func attachmentBytes(n int) []byte {
	r := rand.New(rand.NewPCG(1, 2))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.UintN(256))
	}
	return b
}

func TestGomailSend(t *testing.T) {
	s := testkit.NewRelay(t, nil)
	c := testkit.NewClient(t, s, nil)
	data := attachmentBytes(100 << 10)
	const subject = "Grüße aus Köln ✓"
	const text = "Hello from gomail.\r\n.\r\nA lone dot above, and after it more text.\r\n"

	m := gomail.NewMessage()
	m.SetAddressHeader("From", "app@example.com", "Äpp")
	m.SetHeader("To", "b@example.com", "c@example.com")
	m.SetHeader("Cc", "d@example.com")
	m.SetHeader("Bcc", "hidden@example.com")
	m.SetHeader("Subject", subject)
	m.SetBody("text/plain", text)
	m.AttachReader("data.bin", bytes.NewReader(data))

	require.NoError(t, gomail.Send(mxrelay.NewSender(c), m))

	box := s.Mailbox()
	require.Len(t, box, 1)
	assert.Equal(t, "app@example.com", box[0].From)
	assert.ElementsMatch(t, []string{"b@example.com", "c@example.com", "d@example.com", "hidden@example.com"}, box[0].To)
	assert.NotContains(t, string(box[0].Data), "hidden@example.com", "Bcc is in the envelope only")

	h, parts := parseMIME(t, box[0].Data)
	assert.Equal(t, subject, decodeHeader(t, h.Get("Subject")))
	from, err := h.AddressList("From")
	require.NoError(t, err)
	assert.Equal(t, []*netmail.Address{{Name: "Äpp", Address: "app@example.com"}}, from)
	require.Len(t, parts, 2)
	assert.Equal(t, "text/plain", parts[0].mediaType)
	assert.Equal(t, text, string(parts[0].body))
	assert.Equal(t, "data.bin", parts[1].filename)
	assert.Equal(t, data, parts[1].body)
}

func TestGomailSendError(t *testing.T) {
	s := testkit.NewRelay(t, nil)
	c := testkit.NewClient(t, s, nil)
	m := gomail.NewMessage()
	m.SetHeader("From", "app@example.com")
	m.SetHeader("To", "b@example.com")
	m.SetBody("text/plain", "x")
	s.Inject(relaytest.Fault{Kind: relaytest.ReplaceReply, Command: "MAIL", Reply: "553 5.7.1 sender refused"})

	err := gomail.Send(mxrelay.NewSender(c), m)
	var sendErr *gomail.SendError
	require.ErrorAs(t, err, &sendErr)
	var se *mxrelay.SMTPError
	require.ErrorAs(t, sendErr.Cause, &se)
	assert.Equal(t, 553, se.Code)
}
