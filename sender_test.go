package mxrelay_test

import (
	"bytes"
	"errors"
	"io"
	"os"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mxrelay/mxrelay"
	"github.com/mxrelay/mxrelay/internal/testkit"
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
