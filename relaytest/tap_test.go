package relaytest

import (
	"bytes"
	"context"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"unicode/utf8"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// tapChannel returns a channel whose taps can be driven directly, with no
// connection behind it. Frames queued for the client land in its out
// queue, which must be large enough for them.
func tapChannel(t testing.TB, binary bool, outCap int) *channel {
	s := &Server{log: slog.New(slog.DiscardHandler)}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	c := &conn{s: s, log: s.log, ctx: ctx, cancel: cancel, out: make(chan outFrame, outCap), outRoom: newBudget()}
	return &channel{c: c, binary: binary, log: s.log, upLimit: -1, downLimit: -1, fifo: []*pending{{}}}
}

// splitAt cuts b at the given offsets (taken modulo len(b)+1, sorted by
// use), giving the frames of a stream.
func splitAt(b []byte, cuts []byte) [][]byte {
	var parts [][]byte
	for _, c := range cuts {
		if len(b) == 0 {
			break
		}
		n := int(c) % (len(b) + 1)
		parts = append(parts, b[:n])
		b = b[n:]
	}
	return append(parts, b)
}

// FuzzClientTap checks that the client tap, with no fault armed, forwards
// every byte exactly once and in order, however the stream is split, in
// command, body or opaque mode.
func FuzzClientTap(f *testing.F) {
	f.Add([]byte("EHLO x\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\n"), []byte{3, 9}, uint8(modeCommand))
	f.Add([]byte("MAIL FROM:<a@b>\r\nBDAT 5\r\n\r\n.\r\nBDAT 3 LAST\r\nxyzQUIT\r\n"), []byte{20, 1, 7}, uint8(modeCommand))
	f.Add([]byte("BDAT 0 LAST\r\nBDAT x\r\nBDAT 4294967296\r\n"), []byte{}, uint8(modeCommand))
	f.Add([]byte("body\r\n..stuffed\r\n.\r\nQUIT\r\n"), []byte{5, 2, 2}, uint8(modeBody))
	f.Add([]byte(".\r\nNOOP\r\n"), []byte{1}, uint8(modeBody))
	f.Add([]byte("\x16\x03\x01 tls"), []byte{2}, uint8(modeOpaque))
	f.Add([]byte(strings.Repeat("x", maxCommandLine+10)+"\r\nNOOP\r\n"), []byte{200, 200}, uint8(modeCommand))
	f.Fuzz(func(t *testing.T, stream, cuts []byte, mode uint8) {
		ch := tapChannel(t, true, 4)
		ch.mode = int(mode) % (modeOpaque + 1)
		if ch.mode == modeChunk {
			ch.mode = modeCommand
		}
		var out []byte
		for _, part := range splitAt(stream, cuts) {
			o, act := ch.tapClient(part)
			require.Equal(t, actContinue, act)
			out = append(out, o...)
		}
		if ch.ended {
			return // too many commands in flight: the channel failed, legitimately
		}
		out = append(out, ch.line...) // a partial line still held
		require.Equal(t, string(stream), string(out))
	})
}

// FuzzReplyTap checks that the reply tap forwards every byte of the
// upstream exactly once and in order, whatever the split, and that in
// JSON mode it never produces a frame that is not valid UTF-8.
func FuzzReplyTap(f *testing.F) {
	f.Add([]byte("220 hi\r\n250-a\r\n250 b\r\n354 go\r\n"), []byte{4, 10}, false)
	f.Add([]byte("220 é\r\n250-"+strings.Repeat("é", maxReply)+"\r\n250 end\r\n"), []byte{7, 255}, false)
	f.Add([]byte("garbage\nno code\r\n"), []byte{3}, true)
	f.Fuzz(func(t *testing.T, stream, cuts []byte, binary bool) {
		if !binary && !utf8.Valid(stream) {
			binary = true
		}
		ch := tapChannel(t, binary, len(stream)+1) // a frame holds at least a byte
		for _, part := range splitAt(stream, cuts) {
			ch.fromUpstream(part)
		}
		var out []byte
		for len(ch.c.out) > 0 {
			fr := <-ch.c.out
			require.False(t, fr.close || fr.abort)
			if binary {
				out = append(out, fr.data...)
				continue
			}
			require.True(t, utf8.Valid(fr.data))
			c := &rawClient{t: t}
			out = append(out, c.dataOf(frame{typ: fr.typ, data: fr.data})...)
		}
		out = append(out, ch.rbuf...)
		require.Equal(t, string(stream), string(out))
	})
}

func FuzzFormatReply(f *testing.F) {
	f.Add("550 5.1.1 <bob@example.com>: no such user")
	f.Add("250-a\r\n250 b\r\n")
	f.Add("421")
	f.Fuzz(func(t *testing.T, reply string) {
		b, code, err := formatReply(reply)
		if err != nil {
			return
		}
		assert.GreaterOrEqual(t, code, 200)
		assert.Equal(t, len(b), replyEnd(b), "one complete reply")
		assert.Equal(t, code, replyCode(b))
		assert.False(t, bytes.Contains(bytes.ReplaceAll(b, []byte("\r\n"), nil), []byte("\r")), "no bare CR")
	})
}

func TestLogsHoldNoSecrets(t *testing.T) {
	buf := &syncWriter{w: new(bytes.Buffer)}
	log := slog.New(slog.NewTextHandler(buf, &slog.HandlerOptions{Level: slog.LevelDebug}))
	const apiKey = "very-secret-api-key-0001"
	s := NewServer(&Options{APIKeys: []string{apiKey}, Users: map[string]string{"user": "pa55word"}, Logger: log})
	c := dial(t, s)
	c.auth(apiKey)
	c.open(false)
	c.cmd("EHLO x")
	c.cmd("AUTH PLAIN AHVzZXIAcGE1NXdvcmQ=") // \0user\0pa55word
	c.cmd("MAIL FROM:<a@example.com>")
	c.cmd("RCPT TO:<b@example.com>")
	c.cmd("DATA")
	c.write(dotStuff("top secret body\r\n"))
	c.reply()
	c2 := dial(t, s)
	c2.auth("wrong-key-but-also-secret")
	c2.expectClose(4003)
	s.Close()

	logs := buf.String()
	assert.Contains(t, logs, "****0001", "the key is logged masked")
	for _, secret := range []string{apiKey, "wrong-key-but-also-secret", "AHVzZXIAcGE1NXdvcmQ=", "pa55word", "top secret body"} {
		assert.NotContains(t, logs, secret)
	}
	assert.Contains(t, logs, "MAIL FROM:<a@example.com>", "the dialogue is logged at debug")
}

// syncWriter lets a test read what goroutines of the relay logged.
type syncWriter struct {
	mu sync.Mutex
	w  *bytes.Buffer
}

func (w *syncWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.w.Write(p)
}

func (w *syncWriter) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.w.String()
}
