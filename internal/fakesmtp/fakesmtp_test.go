package fakesmtp

import (
	"bufio"
	"crypto/tls"
	"io"
	"net"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mxrelay/mxrelay/internal/memnet"
	"github.com/mxrelay/mxrelay/internal/testcert"
)

// client is the other end of a connection to a Server.
type client struct {
	t  *testing.T
	nc net.Conn
	br *bufio.Reader
}

func newClient(t *testing.T, nc net.Conn) *client {
	return &client{t: t, nc: nc, br: bufio.NewReader(nc)}
}

func dial(t *testing.T, s *Server) *client {
	nc, err := net.Dial("tcp", s.Addr)
	require.NoError(t, err)
	t.Cleanup(func() { nc.Close() })
	return newClient(t, nc)
}

func (c *client) write(s string) {
	c.t.Helper()
	_, err := io.WriteString(c.nc, s)
	require.NoError(c.t, err)
}

func (c *client) line() string {
	c.t.Helper()
	l, err := c.br.ReadString('\n')
	require.NoError(c.t, err)
	return l
}

func TestHelloAndCommands(t *testing.T) {
	s := Listen(t, func(c *Conn) {
		if !c.Hello("PIPELINING", "CHUNKING") {
			return
		}
		c.Commands(func(verb, line string) bool {
			return c.Say("250 " + verb + " seen")
		})
	})
	c := dial(t, s)
	assert.Equal(t, "220 mx.test ESMTP\r\n", c.line())
	c.write("EHLO client.test\r\n")
	assert.Equal(t, "250-mx.test\r\n", c.line())
	assert.Equal(t, "250-PIPELINING\r\n", c.line())
	assert.Equal(t, "250 CHUNKING\r\n", c.line())
	c.write("noop please\r\nQUIT\r\n")
	assert.Equal(t, "250 NOOP seen\r\n", c.line())
	assert.Equal(t, "221 2.0.0 bye\r\n", c.line())
	_, err := c.br.ReadByte()
	assert.ErrorIs(t, err, io.EOF, "the script returned: the connection is closed")

	assert.Equal(t, int64(len("220 mx.test ESMTP\r\n250-mx.test\r\n250-PIPELINING\r\n250 CHUNKING\r\n250 NOOP seen\r\n221 2.0.0 bye\r\n")), <-s.Ended())
	assert.Equal(t, []string{"EHLO client.test", "noop please", "QUIT"}, s.Transcript())
	assert.True(t, s.Saw("NOOP"), "case-insensitive")
	assert.False(t, s.Saw("RSET"))
	assert.Equal(t, 1, s.Conns())
}

// Say makes one write of all its lines; Raw writes bytes as they are, a
// reply cut in the middle included.
func TestWritesAreByteExact(t *testing.T) {
	nc, _ := Pipe(t, func(c *Conn) {
		c.Say("250-one", "250 two")
		c.Raw("25")
	})
	buf := make([]byte, 100)
	n, err := nc.Read(buf)
	require.NoError(t, err)
	assert.Equal(t, "250-one\r\n250 two\r\n", string(buf[:n]), "a pipe read returns one write")
	rest, err := io.ReadAll(nc)
	require.NoError(t, err)
	assert.Equal(t, "25", string(rest), "half a reply, then the connection ends")
}

// With Exact, the client's write returns only once the script has read
// every byte of it: here it reads one line of two, then the other.
func TestExactReadsNoMoreThanAsked(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		first, next := make(chan string), make(chan struct{})
		nc, _ := Pipe(t, func(c *Conn) {
			c.Exact()
			l, _ := c.Line()
			first <- l
			<-next
			c.Drain()
		})
		var written atomic.Bool
		go func() {
			io.WriteString(nc, "MAIL FROM:<a@x>\r\nRCPT TO:<b@x>\r\n")
			written.Store(true)
		}()
		assert.Equal(t, "MAIL FROM:<a@x>", <-first)
		synctest.Wait()
		assert.False(t, written.Load(), "the second line is not read yet: the write is not done")
		close(next)
		synctest.Wait()
		assert.True(t, written.Load())
		nc.Close()
	})
}

func TestReadsChunksBodiesAndBytes(t *testing.T) {
	type got struct {
		chunk, body string
		b, peeked   byte
	}
	out := make(chan got, 1)
	nc, s := Pipe(t, func(c *Conn) {
		var g got
		l, _ := c.Line()
		chunk, _ := c.Chunk(l)
		g.chunk = string(chunk)
		g.body, _ = c.Body()
		g.peeked, _ = c.Peek()
		g.b, _ = c.Byte()
		out <- g
	})
	go io.WriteString(nc, "BDAT 5 LAST\r\nab\r\ncSubject: x\r\n..dot\r\n.\r\nZ")
	g := <-out
	assert.Equal(t, "ab\r\nc", g.chunk)
	assert.Equal(t, "Subject: x\r\n..dot\r\n", g.body, "as sent, dot-stuffed")
	assert.Equal(t, "Subject: x\r\n.dot\r\n", Unstuff(g.body))
	assert.Equal(t, byte('Z'), g.peeked)
	assert.Equal(t, byte('Z'), g.b)
	assert.Equal(t, []string{"BDAT 5 LAST", "Subject: x", "..dot", "."}, s.Transcript(), "body lines are in the transcript")
}

// Play's directives: lines in a row in one write, AWAIT for the client's
// next line, a pause on the bubble's clock, CUT.
func TestPlay(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var ok atomic.Bool
		nc, _ := Pipe(t, func(c *Conn) {
			ok.Store(c.Play("250 a", "250 b", "AWAIT", "~2s", "250 c", "CUT", "250 never"))
		})
		c := newClient(t, nc)
		buf := make([]byte, 100)
		n, err := nc.Read(buf)
		require.NoError(t, err)
		assert.Equal(t, "250 a\r\n250 b\r\n", string(buf[:n]))
		synctest.Wait()
		start := time.Now()
		c.write("NOOP\r\n")
		assert.Equal(t, "250 c\r\n", c.line(), "written after the client's line came")
		assert.Equal(t, 2*time.Second, time.Since(start))
		_, err = c.br.ReadByte()
		assert.ErrorIs(t, err, io.EOF)
		synctest.Wait()
		assert.False(t, ok.Load(), "CUT ends the connection")
	})
}

// A stall lasts until Release, or until the Server closes; STALL then
// closes the connection.
func TestStallUntilReleased(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var n memnet.Network
		ln, err := n.Listen("tcp", "")
		require.NoError(t, err)
		stalled := make(chan struct{})
		s := Serve(t, ln, func(c *Conn) {
			c.Say("220 hi")
			if c.N == 1 {
				c.Stall()
				c.Say("250 released")
				return
			}
			close(stalled)
			c.Play("STALL", "250 never")
		})
		nc, err := n.DialContext(t.Context(), "tcp", s.Addr)
		require.NoError(t, err)
		c := newClient(t, nc)
		assert.Equal(t, "220 hi\r\n", c.line())
		time.Sleep(time.Hour)
		s.Release()
		assert.Equal(t, "250 released\r\n", c.line())

		nc2, err := n.DialContext(t.Context(), "tcp", s.Addr)
		require.NoError(t, err)
		c2 := newClient(t, nc2)
		assert.Equal(t, "220 hi\r\n", c2.line())
		<-stalled
		_, err = c2.br.ReadByte()
		assert.ErrorIs(t, err, io.EOF, "released already: STALL returns at once, and closes")
		assert.Equal(t, 2, s.Conns())
	})
}

// Close ends the scripts: it closes their connections and releases their
// stalls.
func TestCloseEndsTheScripts(t *testing.T) {
	var ended atomic.Int32
	started := make(chan struct{}, 2)
	s := Listen(t, func(c *Conn) {
		defer ended.Add(1)
		started <- struct{}{}
		if c.N == 1 {
			c.Stall()
			return
		}
		c.Drain()
	})
	dial(t, s)
	dial(t, s)
	<-started
	<-started
	s.Close()
	assert.Equal(t, int32(2), ended.Load())
}

func TestFloodUntilTheClientHangsUp(t *testing.T) {
	nc, s := Pipe(t, func(c *Conn) {
		c.Raw("220 ")
		c.Flood([]byte("xxxx"))
	})
	_, err := io.ReadFull(nc, make([]byte, 1<<16))
	require.NoError(t, err)
	nc.Close()
	n := <-s.Ended()
	assert.GreaterOrEqual(t, n, int64(1<<16))
}

func TestStartTLS(t *testing.T) {
	cert, pool, err := testcert.New("mx.test")
	require.NoError(t, err)
	s := Listen(t, func(c *Conn) {
		c.Say("220 mx.test ESMTP")
		c.Commands(func(verb, _ string) bool {
			if verb == "STARTTLS" {
				return c.StartTLS(&tls.Config{Certificates: []tls.Certificate{cert}})
			}
			return c.Say("250 ok")
		})
	})
	c := dial(t, s)
	c.line()
	c.write("STARTTLS\r\n")
	assert.Equal(t, "220 2.0.0 go ahead\r\n", c.line())
	tc := tls.Client(c.nc, &tls.Config{ServerName: "mx.test", RootCAs: pool})
	require.NoError(t, tc.Handshake())
	sc := newClient(t, tc)
	sc.write("AUTH PLAIN secret\r\n")
	assert.Equal(t, "250 ok\r\n", sc.line())
	assert.True(t, s.Saw("AUTH PLAIN"), "lines under TLS are recorded: %q", s.Transcript())
}

func TestHonest(t *testing.T) {
	assert.Equal(t, "250 2.1.5 recipient ok", Honest("RCPT", true))
	assert.Equal(t, "250 recipient ok", Honest("RCPT", false))
	assert.Equal(t, "354 go ahead", Honest("DATA", false))
	assert.Equal(t, "", Honest("BDAT", true))
	assert.Equal(t, "500 unknown command", Honest("VRFY", false))
	assert.Equal(t, "250-mx.test\r\n250 SIZE", EHLOReply("mx.test", "SIZE"))
	assert.Equal(t, "250 mx.test", EHLOReply("mx.test"))
}

// A Session answers a DATA and a BDAT transaction honestly, but for what
// Answer changes; Cmd says where each command stands.
func TestSession(t *testing.T) {
	var cmds []Cmd
	sess := &Session{Ext: []string{"PIPELINING", "CHUNKING"}, Enhanced: true,
		Answer: func(cmd Cmd) ([]string, bool) {
			cmds = append(cmds, cmd)
			if cmd.Verb == "RCPT" && cmd.Rcpt == 1 {
				return []string{"550 5.1.1 no", "NOTE"}, true
			}
			if cmd.Verb == "DATA" && cmd.Tx == 3 {
				return []string{"554 5.5.1 no data"}, true
			}
			return nil, false
		},
		Directive: func(w string) (bool, bool) { return w == "NOTE", true },
	}
	nc, _ := Pipe(t, sess.Serve)
	c := newClient(t, nc)
	assert.Equal(t, "220 mx.test ESMTP\r\n", c.line())
	c.write("EHLO c\r\n")
	for _, want := range []string{"250-mx.test", "250-PIPELINING", "250-CHUNKING", "250-8BITMIME", "250 ENHANCEDSTATUSCODES"} {
		assert.Equal(t, want+"\r\n", c.line())
	}
	c.write("MAIL FROM:<a@x>\r\nRCPT TO:<b@x>\r\nRCPT TO:<c@x>\r\nDATA\r\n")
	for _, want := range []string{"250 2.1.0 sender ok", "250 2.1.5 recipient ok", "550 5.1.1 no", "354 go ahead"} {
		assert.Equal(t, want+"\r\n", c.line())
	}
	c.write("Subject: one\r\n..\r\n.\r\n")
	assert.Equal(t, "250 2.0.0 queued\r\n", c.line())
	c.write("MAIL FROM:<a@x>\r\nRCPT TO:<b@x>\r\nBDAT 3\r\nabcBDAT 2 LAST\r\nde")
	for _, want := range []string{"250 2.1.0 sender ok", "250 2.1.5 recipient ok", "250 2.0.0 chunk ok", "250 2.0.0 queued"} {
		assert.Equal(t, want+"\r\n", c.line())
	}
	c.write("MAIL FROM:<a@x>\r\nDATA\r\nRSET\r\nQUIT\r\n")
	for _, want := range []string{"250 2.1.0 sender ok", "554 5.5.1 no data", "250 2.0.0 ok", "221 2.0.0 bye"} {
		assert.Equal(t, want+"\r\n", c.line(), "no body after a refused DATA")
	}
	_, err := c.br.ReadByte()
	require.ErrorIs(t, err, io.EOF)

	var got []string
	for _, cmd := range cmds {
		got = append(got, strings.Join([]string{cmd.Verb, strconv.Itoa(cmd.Tx), strconv.Itoa(cmd.Rcpt), cmd.Message}, "/"))
	}
	assert.Equal(t, []string{"EHLO/0/0/", "MAIL/1/0/", "RCPT/1/0/", "RCPT/1/1/", "DATA/1/0/", "END/1/0/Subject: one\r\n.\r\n",
		"MAIL/2/0/", "RCPT/2/0/", "BDAT/2/0/", "CHUNK/2/0/", "BDAT/2/0/", "END/2/0/abcde",
		"MAIL/3/0/", "DATA/3/0/", "RSET/3/0/", "QUIT/3/0/"}, got)
}
