package mxrelay_test

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/emersion/go-smtp"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mxrelay/mxrelay"
	"github.com/mxrelay/mxrelay/internal/testkit"
	"github.com/mxrelay/mxrelay/relaytest"
)

func TestLargeBodyBothEncodings(t *testing.T) {
	// 3 MiB with multi-byte runes everywhere, so JSON chunks and go-smtp's
	// 4 KiB writes split runes, and binary frames pass the 1 MiB frame size.
	var b strings.Builder
	b.WriteString("Subject: big\r\n\r\n")
	for b.Len() < 3<<20 {
		b.WriteString("größer ünd ëmoji 🚀 line of text that goes on ")
		b.WriteString(fmt.Sprint(b.Len()))
		b.WriteString("\r\n")
	}
	body := b.String()
	for _, binary := range []bool{true, false} {
		t.Run(fmt.Sprint("binary=", binary), func(t *testing.T) {
			s := testkit.NewRelay(t, &relaytest.Options{DisableBinary: !binary})
			c := testkit.NewClient(t, s, nil)
			_, err := c.Send(testkit.Ctx(t), mxrelay.Email{From: "a@example.com", To: []string{"b@example.com"}, Body: strings.NewReader(body)})
			require.NoError(t, err)
			box := s.Mailbox()
			require.Len(t, box, 1)
			assert.True(t, body == string(box[0].Data), "body arrives byte for byte")
		})
	}
}

func TestJSONModeRefusesNonUTF8(t *testing.T) {
	s := testkit.NewRelay(t, &relaytest.Options{DisableBinary: true})
	c := testkit.NewClient(t, s, nil)
	latin1 := "Subject: caf\xe9\r\n\r\nna\xefve\r\n"
	res, err := c.Send(testkit.Ctx(t), mxrelay.Email{From: "a@example.com", To: []string{"b@example.com"}, Body: strings.NewReader(latin1)})
	require.ErrorIs(t, err, mxrelay.ErrNotUTF8)
	require.ErrorIs(t, err, mxrelay.ErrInvalidEmail)
	var ee *mxrelay.EmailError
	require.ErrorAs(t, err, &ee)
	assert.False(t, ee.Temporary())
	assert.False(t, res.Delivered())
	assert.Empty(t, s.Mailbox())

	// The session goes on: the next email is delivered.
	_, err = c.Send(testkit.Ctx(t), testkit.Mail("after"))
	require.NoError(t, err)
	assert.Equal(t, []string{"after"}, testkit.Subjects(s))
}

func TestBinaryModeCarries8Bit(t *testing.T) {
	s := testkit.NewRelay(t, nil)
	c := testkit.NewClient(t, s, nil)
	latin1 := "Subject: caf\xe9\r\n\r\nna\xefve \x00\xff\r\n"
	_, err := c.Send(testkit.Ctx(t), mxrelay.Email{From: "a@example.com", To: []string{"b@example.com"}, Body: strings.NewReader(latin1)})
	require.NoError(t, err)
	require.Len(t, s.Mailbox(), 1)
	assert.Equal(t, latin1, string(s.Mailbox()[0].Data))
}

// Regression (issue "Every reply accounted for"): with DisableBinary an
// 8-bit body was accepted by Enqueue and failed only after connecting,
// with a message blaming the relay.
func TestDisableBinaryRefusesAn8BitBodyAtEnqueue(t *testing.T) {
	s := testkit.NewRelay(t, nil)
	c := testkit.NewClient(t, s, &mxrelay.Options{DisableBinary: true})
	_, err := c.Enqueue(mxrelay.Email{From: "a@example.com", To: []string{"b@example.com"}, Body: strings.NewReader("Subject: x\r\n\r\nLatin-1 \xe9\r\n")})
	require.ErrorIs(t, err, mxrelay.ErrNotUTF8)
	require.ErrorIs(t, err, mxrelay.ErrInvalidEmail)
	assert.Zero(t, s.Stats().Connections, "refused before connecting")
}

// Regression (issue "Every reply accounted for"): BODY=BINARYMIME was
// accepted, but the body was still checked and encoded as text: refused
// for a bare LF, or with FixLineEndings rewritten.
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

// Bare line endings are refused at Enqueue unless FixLineEndings.
func TestBareLineEndings(t *testing.T) {
	s := testkit.NewRelay(t, nil)
	c := testkit.NewClient(t, s, nil)
	for _, body := range []string{"Subject: x\n\nlf\n", "Subject: x\r\n\r\ncr\ralone\r\n", "a\r\n.\n.\r\n", "ends with CR\r"} {
		_, err := c.Enqueue(mxrelay.Email{From: "a@example.com", To: []string{"b@example.com"}, Body: strings.NewReader(body)})
		require.ErrorIs(t, err, mxrelay.ErrBareLineEnding, "%q", body)
		require.ErrorIs(t, err, mxrelay.ErrInvalidEmail)
	}
	assert.Zero(t, c.Stats().EmailsQueued)

	fix := testkit.NewClient(t, s, &mxrelay.Options{FixLineEndings: true})
	_, err := fix.Send(testkit.Ctx(t), mxrelay.Email{From: "a@example.com", To: []string{"b@example.com"}, Body: strings.NewReader("Subject: fixed\n\nlf\rcr\n.\nend")})
	require.NoError(t, err)
	box := s.Mailbox()
	require.Len(t, box, 1)
	assert.Equal(t, "Subject: fixed\r\n\r\nlf\r\ncr\r\n.\r\nend\r\n", string(box[0].Data))
}

// TestSampleMessages sends every message of testdata/messages through both
// encodings: each arrives byte for byte, except that a body which is not
// UTF-8 is refused, unsent, by a JSON-only relay.
func TestSampleMessages(t *testing.T) {
	files, err := filepath.Glob("testdata/messages/*.eml")
	require.NoError(t, err)
	require.NotEmpty(t, files)
	for _, binary := range []bool{true, false} {
		s := testkit.NewRelay(t, &relaytest.Options{DisableBinary: !binary})
		c := testkit.NewClient(t, s, nil)
		for _, name := range files {
			t.Run(filepath.Base(name)+map[bool]string{true: "/binary", false: "/json"}[binary], func(t *testing.T) {
				data, err := os.ReadFile(name)
				require.NoError(t, err)
				f, err := os.Open(name)
				require.NoError(t, err)
				defer f.Close()
				before := len(s.Mailbox())
				_, err = c.Send(testkit.Ctx(t), mxrelay.Email{From: "app@example.com", To: []string{"user@example.org"}, Body: f})
				if !binary && !utf8.Valid(data) {
					require.ErrorIs(t, err, mxrelay.ErrNotUTF8)
					assert.Len(t, s.Mailbox(), before)
					return
				}
				require.NoError(t, err)
				box := s.Mailbox()
				require.Len(t, box, before+1)
				assert.Equal(t, string(data), string(box[before].Data))
			})
		}
	}
}

func TestReadOnceBodyIsSpooledAndRetried(t *testing.T) {
	s := testkit.NewRelay(t, nil)
	// Cut the connection early in the body. Pipelined, the client may have
	// written the whole body and its end of data into the socket before it
	// notices (an unknown outcome, then), so RetryUnknown: the relay cut
	// after 200 bytes, the server cannot have the email either way.
	s.Inject(relaytest.Fault{Kind: relaytest.DropAfterBytes, Bytes: 200})
	c := testkit.NewClient(t, s, &mxrelay.Options{TempDir: t.TempDir(), RetryUnknown: true})
	body := testkit.Msg("once") + strings.Repeat(strings.Repeat("x", 70)+"\r\n", 30000)
	pr, pw := io.Pipe()
	go func() {
		io.WriteString(pw, body)
		pw.Close()
	}()
	res, err := c.Send(testkit.Ctx(t), mxrelay.Email{From: "a@example.com", To: []string{"b@example.com"}, Body: io.MultiReader(pr)})
	require.NoError(t, err)
	assert.Equal(t, 2, res.Attempts, "the first attempt was cut")
	require.Len(t, s.Mailbox(), 1)
	assert.Equal(t, body, string(s.Mailbox()[0].Data))
}

// TestReadOnceBodyCopyHasNoName: the copy of a body that cannot be read
// twice has no name in TempDir while its email waits, so that a process
// killed then (SIGKILL, the OOM killer) leaves no message on disk.
func TestReadOnceBodyCopyHasNoName(t *testing.T) {
	if runtime.GOOS == "windows" {
		t.Skip("Windows cannot unlink an open file: the copy is removed with the result")
	}
	s := testkit.NewRelay(t, nil)
	// Down, so that the email waits in the queue until Cancel. (A stalled
	// MAIL left a race: in pipelined BDAT the end of data goes out with
	// MAIL, so a session that got to it before Cancel made the outcome
	// unknown.)
	s.SetDown(true)
	dir := t.TempDir()
	c := testkit.NewClient(t, s, &mxrelay.Options{TempDir: dir, ReconnectInterval: time.Hour})
	h, err := c.Enqueue(mxrelay.Email{From: "a@example.com", To: []string{"b@example.com"}, Body: io.MultiReader(strings.NewReader(testkit.Msg("payroll")))})
	require.NoError(t, err)
	left, err := os.ReadDir(dir)
	require.NoError(t, err)
	assert.Empty(t, left, "the copy is unlinked as soon as it is made")
	h.Cancel()
	_, err = h.Wait(testkit.Ctx(t))
	require.ErrorIs(t, err, mxrelay.ErrCanceled)
}

func TestBytesBufferIsNotDrained(t *testing.T) {
	s := testkit.NewRelay(t, nil)
	c := testkit.NewClient(t, s, nil)
	buf := bytes.NewBufferString(testkit.Msg("buffer"))
	_, err := c.Send(testkit.Ctx(t), mxrelay.Email{From: "a@example.com", To: []string{"b@example.com"}, Body: buf})
	require.NoError(t, err)
	assert.Equal(t, testkit.Msg("buffer"), buf.String())
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
