package mxrelay_test

import (
	"bytes"
	"encoding/base64"
	"errors"
	"io"
	"math/rand/v2"
	"mime"
	"mime/multipart"
	"mime/quotedprintable"
	netmail "net/mail"
	"os"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	wneessen "github.com/wneessen/go-mail"
	gomail "gopkg.in/mail.v2"

	"github.com/mxrelay/mxrelay"
	"github.com/mxrelay/mxrelay/internal/testkit"
	"github.com/mxrelay/mxrelay/relaytest"
)

// writerTo is a message that writes itself out in chunks and may fail after
// some of them, recording how its WriteTo ended.
type writerTo struct {
	chunks []string
	failAt int // fail before this chunk; 0: never
	err    error
}

var errDisk = errors.New("attachment unreadable")

func (w *writerTo) WriteTo(dst io.Writer) (int64, error) {
	var n int64
	for i, c := range w.chunks {
		if w.failAt > 0 && i == w.failAt {
			w.err = errDisk
			return n, w.err
		}
		m, err := io.WriteString(dst, c)
		n += int64(m)
		if err != nil {
			w.err = err
			return n, err
		}
	}
	return n, nil
}

func TestSenderStreamsTheMessage(t *testing.T) {
	s := testkit.NewRelay(t, nil)
	spool := t.TempDir()
	c := testkit.NewClient(t, s, &mxrelay.Options{TempDir: spool})
	sender := mxrelay.NewSender(c)

	big := strings.Repeat(strings.Repeat("0123456789abcdef", 4)+"\r\n", 4096) // 264 KiB, more than any pipe or buffer holds
	msg := &writerTo{chunks: []string{"Subject: streamed\r\n\r\n", big, ".\r\n", "end\r\n"}}
	require.NoError(t, sender.Send("a@example.com", []string{"b@example.com"}, msg))
	require.NoError(t, msg.err)
	box := s.Mailbox()
	require.Len(t, box, 1)
	assert.Equal(t, strings.Join(msg.chunks, ""), string(box[0].Data))
	left, err := os.ReadDir(spool)
	require.NoError(t, err)
	assert.Empty(t, left, "the spooled copy is removed with the result")
}

func TestSenderWriteToFails(t *testing.T) {
	s := testkit.NewRelay(t, nil)
	c := testkit.NewClient(t, s, nil)
	msg := &writerTo{chunks: []string{"Subject: half\r\n\r\n", "first half\r\n", "second half\r\n"}, failAt: 2}
	err := mxrelay.NewSender(c).Send("a@example.com", []string{"b@example.com"}, msg)
	require.ErrorIs(t, err, errDisk)
	assert.Empty(t, s.Mailbox(), "a message that could not be written is not sent")
	assert.Zero(t, s.Stats().Connections)
}

func TestSenderRefusedBeforeReading(t *testing.T) {
	s := testkit.NewRelay(t, nil)
	c := testkit.NewClient(t, s, nil)
	msg := &writerTo{chunks: []string{"Subject: x\r\n\r\n", "body\r\n"}}
	err := mxrelay.NewSender(c).Send("a@example.com", []string{"not an address"}, msg)
	require.ErrorIs(t, err, mxrelay.ErrInvalidEmail)
	require.Error(t, msg.err, "WriteTo was stopped; its goroutine is gone (goleak checks)")
}

func TestSenderReader(t *testing.T) {
	s := testkit.NewRelay(t, nil)
	c := testkit.NewClient(t, s, nil)
	buf := bytes.NewBufferString(testkit.Msg("buffer"))
	require.NoError(t, mxrelay.NewSender(c, mxrelay.WithPriority(mxrelay.PriorityHigh)).Send("a@example.com", []string{"b@example.com"}, buf))
	require.Len(t, s.Mailbox(), 1)
	assert.Equal(t, testkit.Msg("buffer"), string(s.Mailbox()[0].Data))
	assert.Equal(t, testkit.Msg("buffer"), buf.String(), "read as Email.Body, not drained by WriteTo")
}

func TestSenderAngleBrackets(t *testing.T) {
	s := testkit.NewRelay(t, nil)
	c := testkit.NewClient(t, s, nil)
	to := []string{"<b@example.com>", "c@example.com"}
	require.NoError(t, mxrelay.NewSender(c).Send("<a@example.com>", to, strings.NewReader(testkit.Msg("brackets"))))
	require.Len(t, s.Mailbox(), 1)
	assert.Equal(t, "a@example.com", s.Mailbox()[0].From)
	assert.Equal(t, []string{"b@example.com", "c@example.com"}, s.Mailbox()[0].To)
	assert.Equal(t, "<b@example.com>", to[0], "the caller's slice is left alone")
}

func TestSenderClose(t *testing.T) {
	s := testkit.NewRelay(t, nil)
	c := testkit.NewClient(t, s, nil)
	sender := mxrelay.NewSender(c)
	require.NoError(t, sender.Send("a@example.com", []string{"b@example.com"}, strings.NewReader(testkit.Msg("before close"))))
	require.NoError(t, sender.Close())
	err := sender.Send("a@example.com", []string{"b@example.com"}, strings.NewReader(testkit.Msg("after close")))
	require.ErrorIs(t, err, mxrelay.ErrClosed)
	assert.Equal(t, []string{"before close"}, testkit.Subjects(s))
}

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

			m := wneessen.NewMsg()
			require.NoError(t, m.FromFormat("Zoë App", "app@example.com"))
			require.NoError(t, m.To("b@example.com"))
			require.NoError(t, m.Cc("c@example.com"))
			m.Subject(subject)
			m.SetBodyString(wneessen.TypeTextHTML, html)
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
