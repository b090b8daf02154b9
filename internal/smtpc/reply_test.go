package smtpc

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/emersion/go-smtp"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mxrelay/mxrelay/internal/alloctest"
)

func readReplies(s string) ([]Reply, error) {
	rr := replyReader{br: bufio.NewReaderSize(strings.NewReader(s), 64)}
	var out []Reply
	for {
		r, err := rr.read()
		if err != nil {
			if errors.Is(err, io.EOF) && rr.code == 0 && len(rr.line) == 0 {
				return out, nil
			}
			return out, err
		}
		out = append(out, r)
	}
}

func TestReplyParsing(t *testing.T) {
	rs, err := readReplies("220 mx ESMTP\r\n250-mx\r\n250-PIPELINING\r\n250 CHUNKING\r\n550 5.1.1 <x@y>: no\r\n354\r\n451 4.3.0\r\n")
	require.NoError(t, err)
	require.Len(t, rs, 5)
	assert.Equal(t, Reply{Code: 220, Message: "mx ESMTP"}, rs[0])
	assert.Equal(t, "mx\nPIPELINING\nCHUNKING", rs[1].Message)
	assert.Equal(t, 550, rs[2].Code)
	assert.Equal(t, [3]int{5, 1, 1}, [3]int(rs[2].Enhanced))
	assert.Equal(t, "<x@y>: no", rs[2].Message)
	assert.Equal(t, 354, rs[3].Code)
	assert.Equal(t, [3]int{4, 3, 0}, [3]int(rs[4].Enhanced), "an enhanced code alone")

	for name, bad := range map[string]string{
		"code below 200":      "099 odd\r\n",
		"letters":             "abc def\r\n",
		"no separator":        "250xok\r\n",
		"code change":         "250-a\r\n251 b\r\n",
		"too short":           "25\r\n",
		"line too long":       "250 " + strings.Repeat("x", MaxReplyLine) + "\r\n",
		"endless multi-line":  strings.Repeat("250-more\r\n", MaxReplyLines+1),
		"no CRLF, ever":       "250 " + strings.Repeat("y", 3*MaxReplyLine),
		"code 600 and beyond": "600 no\r\n",
	} {
		_, err := readReplies(bad)
		assert.ErrorIs(t, err, ErrProtocol, name)
	}
	// An enhanced code of another class is text, not a status code.
	rs, err = readReplies("250 5.0.0 looks like one\r\n")
	require.NoError(t, err)
	assert.Equal(t, [3]int{}, [3]int(rs[0].Enhanced))
	assert.Equal(t, "5.0.0 looks like one", rs[0].Message)
}

// readAll reads replies from s through a buffer of size bytes until an
// error.
func readAll(s string, size int) ([]Reply, *replyReader, error) {
	rr := &replyReader{br: bufio.NewReaderSize(strings.NewReader(s), size)}
	var out []Reply
	for {
		r, err := rr.read()
		if err != nil {
			return out, rr, err
		}
		out = append(out, r)
	}
}

// format writes r back as a server would send it.
func format(r Reply) string {
	lines := strings.Split(r.Message, "\n")
	if r.Enhanced != [3]int{} {
		lines[0] = fmt.Sprintf("%d.%d.%d %s", r.Enhanced[0], r.Enhanced[1], r.Enhanced[2], lines[0])
	}
	var b strings.Builder
	for i, l := range lines {
		sep := "-"
		if i == len(lines)-1 {
			sep = " "
		}
		fmt.Fprintf(&b, "%d%s%s\r\n", r.Code, sep, l)
	}
	return b.String()
}

// FuzzReplyReader: each reply is within the limits; the reader never
// holds more than a line and a reply's lines, and allocates in proportion
// to its input; what it reads does not depend on how the input arrives
// (the buffer's size); and each reply, written back as a server would,
// reads back the same.
func FuzzReplyReader(f *testing.F) {
	f.Add("250-a\r\n250 b\r\n", byte(1))
	f.Add("220 x\n354 go\r\n", byte(5))
	f.Add("250-"+strings.Repeat("z", 5000)+"\r\n", byte(9))
	f.Fuzz(func(t *testing.T, s string, size byte) {
		var replies []Reply
		var rr *replyReader
		var err error
		allocated := alloctest.Bytes(func() { replies, rr, err = readAll(s, 16+int(size)) })
		require.Error(t, err, "the input ends")
		require.LessOrEqual(t, allocated, uint64(16*len(s)+1<<20), "allocation in proportion to the input")
		for _, r := range replies {
			require.GreaterOrEqual(t, r.Code, 200)
			require.Less(t, r.Code, 600)
			require.LessOrEqual(t, len(r.Message), MaxReplyLines*(MaxReplyLine+1))
			require.LessOrEqual(t, strings.Count(r.Message, "\n"), MaxReplyLines-1)
		}
		require.LessOrEqual(t, len(rr.line), MaxReplyLine+2)
		require.LessOrEqual(t, len(rr.lines), MaxReplyLines)

		again, _, err2 := readAll(s, 4096)
		require.Equal(t, replies, again, "the same replies whatever the buffer")
		require.Equal(t, errors.Is(err, ErrProtocol), errors.Is(err2, ErrProtocol))

		for _, r := range replies {
			back, _, err := readAll(format(r), 4096)
			require.ErrorIs(t, err, io.EOF)
			require.Equal(t, []Reply{r}, back, "%q", format(r))
		}
	})
}

// enhancedCode is RFC 3463's grammar as parseEnhanced reads it: three
// numbers of one to three digits joined by dots, up to a space.
var enhancedCode = regexp.MustCompile(`^([0-9]{1,3})\.([0-9]{1,3})\.([0-9]{1,3})(?: |$)`)

// FuzzParseEnhanced checks parseEnhanced against enhancedCode.
func FuzzParseEnhanced(f *testing.F) {
	for _, s := range []string{"2.0.0 Ok", "5.1.1", "2.0.0", "250", "2.0", "2.0.0.0 x", "2..0 x", "+2.0.0 x", "2.-1.0 x",
		"2.0.0000 x", "4.7.0  Throttled", "9.9.9 x", "5.1.1 x", "", " ", "2.0.0x y", "001.002.003 z"} {
		f.Add(250, s)
		f.Add(550, s)
	}
	f.Fuzz(func(t *testing.T, code int, text string) {
		ec, rest, bad := parseEnhanced(code, text)
		m := enhancedCode.FindStringSubmatch(text)
		var want smtp.EnhancedCode
		if m != nil {
			for i := range want {
				want[i], _ = strconv.Atoi(m[i+1])
			}
		}
		switch {
		case m == nil || want[0] != 2 && want[0] != 4 && want[0] != 5:
			assert.Equal(t, smtp.EnhancedCode{}, ec)
			assert.Equal(t, text, rest)
			assert.False(t, bad)
		case want[0] != code/100:
			assert.Equal(t, smtp.EnhancedCode{}, ec)
			assert.Equal(t, text, rest)
			assert.True(t, bad)
		default:
			assert.Equal(t, want, ec)
			assert.Equal(t, text[len(m[0]):], rest, "the text after the code and its space")
			assert.False(t, bad)
		}
	})
}

// BenchmarkReplyReader reads an email's replies as Postfix words them
// (RSET, MAIL, RCPT, then the end of data with its own queue id), per op.
func BenchmarkReplyReader(b *testing.B) {
	var stream bytes.Buffer
	const emails = 1000
	for i := range emails {
		fmt.Fprintf(&stream, "250 2.0.0 Ok\r\n250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n250 2.0.0 Ok: queued as %08X\r\n", i)
	}
	r := bytes.NewReader(stream.Bytes())
	rr := &replyReader{br: bufio.NewReader(r)}
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		if i%emails == 0 {
			r.Reset(stream.Bytes())
			rr.br.Reset(r)
		}
		i++
		for range 4 {
			if _, err := rr.read(); err != nil {
				b.Fatal(err)
			}
		}
	}
}
