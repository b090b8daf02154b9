package smtpsink_test

import (
	"bufio"
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mxrelay/mxrelay/internal/smtpsink"
)

func newSink(t *testing.T, o *smtpsink.Options) *smtpsink.Server {
	t.Helper()
	s, err := smtpsink.New(o)
	require.NoError(t, err)
	t.Cleanup(func() { s.Close() })
	return s
}

// recordingConn keeps every Write the server makes, so a test can see how
// replies were grouped.
type recordingConn struct {
	net.Conn
	mu     sync.Mutex
	writes []string
}

func (c *recordingConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	c.writes = append(c.writes, string(p))
	c.mu.Unlock()
	return c.Conn.Write(p)
}

func (c *recordingConn) last() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.writes[len(c.writes)-1]
}

// client drives a session served over net.Pipe: each send is one Write,
// which the server receives as one or more reads of its own, never merged
// with the next send. That is how the tests choose where reads split.
type client struct {
	t    *testing.T
	conn net.Conn
	rec  *recordingConn
	r    *bufio.Reader
	done chan struct{}
}

func dialPipe(t *testing.T, s *smtpsink.Server) *client {
	t.Helper()
	cli, srv := net.Pipe()
	c := &client{t: t, conn: cli, rec: &recordingConn{Conn: srv}, r: bufio.NewReader(cli), done: make(chan struct{})}
	go func() {
		defer close(c.done)
		s.ServeConn(c.rec)
	}()
	t.Cleanup(func() {
		cli.Close()
		<-c.done
	})
	c.expect(220)
	return c
}

func (c *client) send(s string) {
	c.t.Helper()
	require.NoError(c.t, c.conn.SetWriteDeadline(time.Now().Add(5*time.Second)))
	_, err := c.conn.Write([]byte(s))
	require.NoError(c.t, err)
}

// reply reads one reply, all its lines, and returns its code and text.
func (c *client) reply() (int, string) {
	c.t.Helper()
	_ = c.conn.SetReadDeadline(time.Now().Add(5 * time.Second)) // fails once the server closed, with replies still buffered
	var text strings.Builder
	for {
		line, err := c.r.ReadString('\n')
		require.NoError(c.t, err)
		require.GreaterOrEqual(c.t, len(line), 5, "reply line %q", line)
		text.WriteString(line)
		if line[3] == ' ' {
			code, err := strconv.Atoi(line[:3])
			require.NoError(c.t, err)
			return code, text.String()
		}
	}
}

func (c *client) expect(code int) string {
	c.t.Helper()
	got, text := c.reply()
	require.Equal(c.t, code, got, "reply %q", text)
	return text
}

// cmd sends one command line and expects code.
func (c *client) cmd(line string, code int) string {
	c.t.Helper()
	c.send(line + "\r\n")
	return c.expect(code)
}

func TestPipelinedRepliesLeaveInOneWrite(t *testing.T) {
	s := newSink(t, nil)
	c := dialPipe(t, s)
	c.cmd("EHLO client.example", 250)

	c.send("MAIL FROM:<a@example.com> SIZE=10 BODY=8BITMIME\r\n" +
		"RCPT TO:<b@example.com> NOTIFY=SUCCESS,FAILURE\r\n" +
		"RCPT TO:<c@example.com>\r\n" +
		"DATA\r\n")
	c.expect(250)
	c.expect(250)
	c.expect(250)
	c.expect(354)
	assert.Equal(t, "250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n250 2.1.5 Ok\r\n354 End data with <CR><LF>.<CR><LF>\r\n", c.rec.last())

	// A whole transaction after the end of data, in the same write: the
	// end of data's reply and the next ones leave together too.
	c.send("hi\r\n.\r\nMAIL FROM:<> \r\nRCPT TO:<d@example.com>\r\nBDAT 3 LAST\r\nyo\n")
	assert.Contains(t, c.expect(250), "4 octets")
	c.expect(250)
	c.expect(250)
	assert.Contains(t, c.expect(250), "3 octets")
	assert.Equal(t, 4, strings.Count(c.rec.last(), "\r\n"), "four replies in one write")
	c.cmd("QUIT", 221)
	assert.Equal(t, smtpsink.Stats{Sessions: 1, Messages: 2, Bytes: 7}, s.Stats())
}

// TestDataEndAcrossReads splits a DATA stream into two reads at every
// position: the end is found once, at the same place, and the size is the
// same.
func TestDataEndAcrossReads(t *testing.T) {
	const data = "Subject: x\r\n\r\n..stuffed\r\nbare\n.\r\nstill data\r\r\n.\r\n"
	// "..stuffed" counts one dot; ".\r\n" after a bare LF and "\r\r\n" are data.
	const want = len(data) - len(".\r\n") - 1
	s := newSink(t, nil)
	c := dialPipe(t, s)
	c.cmd("EHLO client.example", 250)
	for cut := 1; cut < len(data); cut++ {
		c.cmd("MAIL FROM:<a@example.com>", 250)
		c.cmd("RCPT TO:<b@example.com>", 250)
		c.cmd("DATA", 354)
		c.send(data[:cut])
		c.send(data[cut:])
		text := c.expect(250)
		assert.Contains(t, text, fmt.Sprintf(" %d octets", want), "cut at %d", cut)
		c.cmd("NOOP", 250) // the stream is in step
	}
	assert.Equal(t, int64(len(data)-1), s.Stats().Messages)
}

// TestDataLinesLongerThanTheBuffer puts a CR and its LF on both sides of a
// full read buffer, right before the terminator.
func TestDataLinesLongerThanTheBuffer(t *testing.T) {
	s := newSink(t, nil)
	c := dialPipe(t, s)
	c.cmd("EHLO client.example", 250)
	for _, n := range []int{64<<10 - 1, 64<<10 - 2, 64 << 10, 200 << 10} {
		c.cmd("MAIL FROM:<a@example.com>", 250)
		c.cmd("RCPT TO:<b@example.com>", 250)
		c.cmd("DATA", 354)
		c.send(strings.Repeat("x", n) + "\r\n.\r\n")
		assert.Contains(t, c.expect(250), fmt.Sprintf(" %d octets", n+2), "line of %d", n)
	}
	c.cmd("QUIT", 221)
}

func TestBDAT(t *testing.T) {
	s := newSink(t, &smtpsink.Options{MaxMessageBytes: 10})
	c := dialPipe(t, s)
	c.cmd("EHLO client.example", 250)

	// Refused chunks are consumed: a chunk holding "QUIT" does not end the
	// session.
	c.send("BDAT 6\r\nQUIT\r\n")
	c.expect(503)
	c.cmd("MAIL FROM:<a@example.com>", 250)
	c.send("BDAT 6 LAST\r\nQUIT\r\n")
	c.expect(554) // no recipient; the transaction ends with LAST
	c.cmd("MAIL FROM:<a@example.com>", 250)
	c.cmd("RCPT TO:<b@example.com>", 250)
	c.send("BDAT 4\r\nab")
	c.send("cd")
	assert.Contains(t, c.expect(250), "4 octets received")
	c.send("BDAT 7\r\nQUIT\r\nx") // 11 octets: over MaxMessageBytes
	c.expect(552)
	c.send("BDAT 0 LAST\r\n") // the rest of a failed message is refused
	c.expect(503)

	// After LAST the next transaction starts cleanly.
	c.send("MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\nBDAT 5 last\r\nhello")
	c.expect(250)
	c.expect(250)
	assert.Contains(t, c.expect(250), "5 octets queued")

	c.cmd("BDAT", 501)
	c.cmd("BDAT -1", 501)
	c.cmd("BDAT 1 NOTLAST", 501)
	c.cmd("MAIL FROM:<a@example.com>", 250)
	c.cmd("RCPT TO:<b@example.com>", 250)
	c.send("BDAT 1\r\nx")
	c.expect(250)
	c.cmd("DATA", 503) // no DATA in a BDAT transaction
	c.cmd("RSET", 250)
	c.cmd("QUIT", 221)
	assert.Equal(t, smtpsink.Stats{Sessions: 1, Messages: 1, Bytes: 5}, s.Stats())
}

func TestEHLOExtensions(t *testing.T) {
	all := []string{"PIPELINING", "CHUNKING", "8BITMIME", "SIZE 0", "SMTPUTF8", "DSN", "ENHANCEDSTATUSCODES"}
	tests := []struct {
		name string
		opts smtpsink.Options
		off  string
	}{
		{"all", smtpsink.Options{}, ""},
		{"no PIPELINING", smtpsink.Options{DisablePipelining: true}, "PIPELINING"},
		{"no CHUNKING", smtpsink.Options{DisableChunking: true}, "CHUNKING"},
		{"no 8BITMIME", smtpsink.Options{Disable8BitMIME: true}, "8BITMIME"},
		{"no SIZE", smtpsink.Options{DisableSize: true}, "SIZE 0"},
		{"no SMTPUTF8", smtpsink.Options{DisableSMTPUTF8: true}, "SMTPUTF8"},
		{"no DSN", smtpsink.Options{DisableDSN: true}, "DSN"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := dialPipe(t, newSink(t, &tt.opts))
			text := c.cmd("EHLO client.example", 250)
			lines := strings.Split(strings.TrimSuffix(text, "\r\n"), "\r\n")
			var got []string
			for _, l := range lines[1:] {
				got = append(got, l[4:])
			}
			var want []string
			for _, e := range all {
				if e != tt.off {
					want = append(want, e)
				}
			}
			assert.Equal(t, want, got)
			assert.Equal(t, "250-smtpsink.local", lines[0])
		})
	}
	c := dialPipe(t, newSink(t, &smtpsink.Options{DisableChunking: true, MaxMessageBytes: 1000}))
	assert.Contains(t, c.cmd("EHLO client.example", 250), "250-SIZE 1000\r\n")
	c.cmd("BDAT 1 LAST", 502)
}

func TestMailAndRcptParameters(t *testing.T) {
	tests := []struct {
		name string
		opts smtpsink.Options
		helo bool
		mail string
		rcpt string // sent after a MAIL that worked
		code int
	}{
		{name: "all MAIL params", mail: "MAIL FROM:<a@example.com> SIZE=100 BODY=8BITMIME SMTPUTF8 RET=HDRS ENVID=QQ+2B1 REQUIRETLS AUTH=<>", code: 250},
		{name: "null sender, space after colon", mail: "mail from: <>", code: 250},
		{name: "7BIT", mail: "MAIL FROM:<a@example.com> BODY=7bit", code: 250},
		{name: "BINARYMIME not offered", mail: "MAIL FROM:<a@example.com> BODY=BINARYMIME", code: 501},
		{name: "unknown param", mail: "MAIL FROM:<a@example.com> FOO=1", code: 555},
		{name: "duplicate", mail: "MAIL FROM:<a@example.com> SIZE=1 SIZE=2", code: 501},
		{name: "bad SIZE", mail: "MAIL FROM:<a@example.com> SIZE=+1", code: 501},
		{name: "SIZE too big", opts: smtpsink.Options{MaxMessageBytes: 10}, mail: "MAIL FROM:<a@example.com> SIZE=11", code: 552},
		{name: "SIZE off", opts: smtpsink.Options{DisableSize: true}, mail: "MAIL FROM:<a@example.com> SIZE=1", code: 555},
		{name: "8BITMIME off", opts: smtpsink.Options{Disable8BitMIME: true}, mail: "MAIL FROM:<a@example.com> BODY=8BITMIME", code: 555},
		{name: "SMTPUTF8 off", opts: smtpsink.Options{DisableSMTPUTF8: true}, mail: "MAIL FROM:<a@example.com> SMTPUTF8", code: 555},
		{name: "DSN off", opts: smtpsink.Options{DisableDSN: true}, mail: "MAIL FROM:<a@example.com> RET=FULL", code: 555},
		{name: "bad ENVID", mail: "MAIL FROM:<a@example.com> ENVID=a=b", code: 501},
		{name: "params after HELO", helo: true, mail: "MAIL FROM:<a@example.com> SIZE=1", code: 555},
		{name: "no brackets", mail: "MAIL FROM:a@example.com", code: 501},
		{name: "RCPT params", mail: "MAIL FROM:<a@example.com>", rcpt: "RCPT TO:<b@example.com> NOTIFY=SUCCESS,DELAY ORCPT=rfc822;b+40example.com", code: 250},
		{name: "NOTIFY=NEVER", mail: "MAIL FROM:<a@example.com>", rcpt: "RCPT TO:<b@example.com> NOTIFY=NEVER", code: 250},
		{name: "NEVER and more", mail: "MAIL FROM:<a@example.com>", rcpt: "RCPT TO:<b@example.com> NOTIFY=NEVER,DELAY", code: 501},
		{name: "ORCPT without type", mail: "MAIL FROM:<a@example.com>", rcpt: "RCPT TO:<b@example.com> ORCPT=b@example.com", code: 501},
		{name: "NOTIFY with DSN off", opts: smtpsink.Options{DisableDSN: true}, mail: "MAIL FROM:<a@example.com>", rcpt: "RCPT TO:<b@example.com> NOTIFY=NEVER", code: 555},
		{name: "null recipient", mail: "MAIL FROM:<a@example.com>", rcpt: "RCPT TO:<>", code: 501},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := dialPipe(t, newSink(t, &tt.opts))
			if tt.helo {
				c.cmd("HELO client.example", 250)
			} else {
				c.cmd("EHLO client.example", 250)
			}
			if tt.rcpt == "" {
				c.cmd(tt.mail, tt.code)
				return
			}
			c.cmd(tt.mail, 250)
			c.cmd(tt.rcpt, tt.code)
		})
	}
}

func TestSequenceAndLimits(t *testing.T) {
	s := newSink(t, &smtpsink.Options{MaxRecipients: 2, MaxLineLength: 100})
	c := dialPipe(t, s)
	c.cmd("MAIL FROM:<a@example.com>", 503) // before EHLO
	c.cmd("EHLO", 501)
	c.cmd("EHLO client.example", 250)
	c.cmd("RCPT TO:<b@example.com>", 503)
	c.cmd("DATA", 503)
	c.cmd("MAIL FROM:<a@example.com>", 250)
	c.cmd("MAIL FROM:<a@example.com>", 503)
	c.cmd("DATA", 554)
	c.cmd("RCPT TO:<b@example.com>", 250)
	c.cmd("RCPT TO:<c@example.com>", 250)
	c.cmd("RCPT TO:<d@example.com>", 452)
	c.cmd("NOOP "+strings.Repeat("x", 200), 500) // too long, skipped whole
	c.cmd("VRFY b", 502)
	c.cmd("XYZZY", 500)
	c.cmd("RSET", 250)
	c.cmd("QUIT", 221)
	assert.Equal(t, int64(0), s.Stats().Messages)
}

func TestTooManyErrorsCloses(t *testing.T) {
	c := dialPipe(t, newSink(t, nil))
	for range 99 {
		c.cmd("XYZZY", 500)
	}
	c.send("XYZZY\r\n")
	c.expect(500)
	c.expect(421)
	_, err := c.r.ReadByte()
	require.Error(t, err, "the connection is closed")
}

// TestGoSMTPClient sends through the listener with go-smtp's Client, which
// uses BODY=8BITMIME, SIZE and DSN parameters when offered.
func TestGoSMTPClient(t *testing.T) {
	s := newSink(t, nil)
	c, err := smtp.Dial(s.Addr)
	require.NoError(t, err)
	defer c.Close()
	body := "Subject: hi\r\n\r\n.leading dot\r\nend\r\n"
	for range 3 {
		require.NoError(t, c.Mail("a@example.com", &smtp.MailOptions{Size: int64(len(body)), Return: smtp.DSNReturnHeaders, EnvelopeID: "id=1"}))
		require.NoError(t, c.Rcpt("b@example.com", &smtp.RcptOptions{Notify: []smtp.DSNNotify{smtp.DSNNotifyFailure}, OriginalRecipientType: smtp.DSNAddressTypeRFC822, OriginalRecipient: "b@example.com"}))
		w, err := c.Data()
		require.NoError(t, err)
		_, err = w.Write([]byte(body))
		require.NoError(t, err)
		require.NoError(t, w.Close())
	}
	require.NoError(t, c.Quit())
	assert.Equal(t, smtpsink.Stats{Sessions: 1, Messages: 3, Bytes: int64(3 * len(body))}, s.Stats())
}

func TestMaxConnsAndClose(t *testing.T) {
	s, err := smtpsink.New(&smtpsink.Options{MaxConns: 1})
	require.NoError(t, err)
	first, err := net.Dial("tcp", s.Addr)
	require.NoError(t, err)
	defer first.Close()
	r := bufio.NewReader(first)
	line, err := r.ReadString('\n')
	require.NoError(t, err)
	assert.True(t, strings.HasPrefix(line, "220 "), line)

	second, err := net.Dial("tcp", s.Addr)
	require.NoError(t, err)
	defer second.Close()
	line, err = bufio.NewReader(second).ReadString('\n')
	require.NoError(t, err)
	assert.True(t, strings.HasPrefix(line, "421 "), line)

	// Close ends the idle session it serves and waits for it.
	require.NoError(t, s.Close())
	_, err = r.ReadString('\n')
	require.Error(t, err)
	require.NoError(t, s.Close(), "twice is safe")
}
