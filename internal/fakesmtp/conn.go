package fakesmtp

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Conn is the server's end of one connection, for its script. Reading
// (Line, Read, Body, Await, ...) is for one goroutine at a time, and so is
// writing (Say, Raw, Play, ...); one may read while another writes.
type Conn struct {
	// N numbers the Server's connections from 1, in the order they came.
	N int

	srv   *Server
	raw   net.Conn // as accepted: Close closes it, TLS or not
	nc    net.Conn // raw, or the TLS connection over it
	src   *source
	br    *bufio.Reader
	wrote atomic.Int64
	once  sync.Once
}

func newConn(s *Server, n int, nc net.Conn) *Conn {
	c := &Conn{N: n, srv: s, raw: nc, nc: nc, src: &source{r: nc}}
	c.br = bufio.NewReader(c.src)
	return c
}

// source is what the Conn reads from: in exact mode, a byte at a time, so
// that the bufio.Reader over it never reads ahead of what is asked.
type source struct {
	r     io.Reader
	exact atomic.Bool
}

func (s *source) Read(p []byte) (int, error) {
	if s.exact.Load() && len(p) > 1 {
		p = p[:1]
	}
	return s.r.Read(p)
}

// Exact makes the Conn read, from now on, only the bytes asked for (a
// line, a chunk, a byte): over a Pipe, the client's write then stops
// exactly where the script stopped reading. It is slower (a read per
// byte); call it before reading anything.
func (c *Conn) Exact() { c.src.exact.Store(true) }

// NetConn is the connection under the Conn (under TLS after StartTLS).
func (c *Conn) NetConn() net.Conn { return c.nc }

// Close closes the connection; a read or write in progress fails.
// Calling it again does nothing.
func (c *Conn) Close() {
	c.once.Do(func() { c.raw.Close() })
}

// Line reads one line and records it in the Server's transcript. It
// returns the line without its line end, and false when the client hung
// up or sent no line end before the connection ended.
func (c *Conn) Line() (string, bool) {
	l, err := c.br.ReadString('\n')
	if err != nil {
		return "", false
	}
	l = strings.TrimRight(l, "\r\n")
	c.srv.record(l)
	return l, true
}

// Byte reads one byte.
func (c *Conn) Byte() (byte, bool) {
	b, err := c.br.ReadByte()
	return b, err == nil
}

// Peek returns the next byte without reading it, once the client has sent
// it.
func (c *Conn) Peek() (byte, bool) {
	b, err := c.br.Peek(1)
	if err != nil {
		return 0, false
	}
	return b[0], true
}

// Read reads exactly n bytes.
func (c *Conn) Read(n int) ([]byte, bool) {
	b := make([]byte, n)
	_, err := io.ReadFull(c.br, b)
	return b, err == nil
}

// Chunk reads the octets that follow a "BDAT <size> [LAST]" command line.
func (c *Conn) Chunk(line string) ([]byte, bool) {
	f := strings.Fields(line)
	if len(f) < 2 {
		return nil, false
	}
	n, err := strconv.Atoi(f[1])
	if err != nil || n < 0 {
		return nil, false
	}
	return c.Read(n)
}

// Body reads a DATA body up to its end, the "." line. It returns the lines
// as sent (dot-stuffed, each with its CRLF), without the end line; each
// line is recorded in the transcript.
func (c *Conn) Body() (string, bool) {
	var b strings.Builder
	for {
		l, err := c.br.ReadString('\n')
		if err != nil {
			return b.String(), false
		}
		c.srv.record(strings.TrimRight(l, "\r\n"))
		if strings.TrimRight(l, "\r\n") == "." {
			return b.String(), true
		}
		b.WriteString(l)
	}
}

// Unstuff removes the dot that dot-stuffing put before each line of a
// DATA body that began with one.
func Unstuff(body string) string {
	lines := strings.SplitAfter(body, "\n")
	for i, l := range lines {
		lines[i] = strings.TrimPrefix(l, ".")
	}
	return strings.Join(lines, "")
}

// Await waits until the client has sent another whole line, and leaves it
// unread. It returns false if the connection ends first (or the line is
// longer than the read buffer).
func (c *Conn) Await() bool {
	for n := c.br.Buffered(); ; n++ {
		b, err := c.br.Peek(n)
		if err != nil {
			return false
		}
		if bytes.IndexByte(b, '\n') >= 0 {
			return true
		}
	}
}

// Drain reads lines, recording them, until the client hangs up.
func (c *Conn) Drain() {
	for _, ok := c.Line(); ok; _, ok = c.Line() {
	}
}

// Stall blocks until the Server is released or closed.
func (c *Conn) Stall() { <-c.srv.release }

// Say writes each line followed by CRLF, all in one write: a burst of
// replies, as a pipelining server sends them. A line may hold CRLFs of its
// own. It returns false if the write failed.
func (c *Conn) Say(lines ...string) bool {
	var b strings.Builder
	for _, l := range lines {
		b.WriteString(l)
		b.WriteString("\r\n")
	}
	return c.Raw(b.String())
}

// Raw writes s as it is, in one write: a line without its end, half a
// reply. It returns false if the write failed.
func (c *Conn) Raw(s string) bool {
	n, err := io.WriteString(c.nc, s)
	c.wrote.Add(int64(n))
	return err == nil
}

// Flood writes p again and again until a write fails.
func (c *Conn) Flood(p []byte) {
	for c.Raw(string(p)) {
	}
}

// Wrote is how many bytes the script has written.
func (c *Conn) Wrote() int64 { return c.wrote.Load() }

// Verb is the first word of a command line, in upper case.
func Verb(line string) string {
	f := strings.Fields(line)
	if len(f) == 0 {
		return ""
	}
	return strings.ToUpper(f[0])
}

// Commands reads command lines and gives each, with its verb, to each,
// until the client hangs up, sends QUIT (answered "221 2.0.0 bye") or each
// returns false.
func (c *Conn) Commands(each func(verb, line string) bool) {
	for {
		l, ok := c.Line()
		if !ok {
			return
		}
		verb := Verb(l)
		if verb == "QUIT" {
			c.Say("221 2.0.0 bye")
			return
		}
		if !each(verb, l) {
			return
		}
	}
}

// EHLOReply is the reply to EHLO of a server named host offering ext, in
// order, without its final CRLF (for Say).
func EHLOReply(host string, ext ...string) string {
	lines := append([]string{host}, ext...)
	for i := range lines {
		sep := "-"
		if i == len(lines)-1 {
			sep = " "
		}
		lines[i] = "250" + sep + lines[i]
	}
	return strings.Join(lines, "\r\n")
}

// Hello writes the greeting "220 mx.test ESMTP", reads EHLO and answers
// it offering ext. It returns false if the connection ended.
func (c *Conn) Hello(ext ...string) bool {
	if !c.Say("220 mx.test ESMTP") {
		return false
	}
	if _, ok := c.Line(); !ok {
		return false
	}
	return c.Say(EHLOReply("mx.test", ext...))
}

// StartTLS answers STARTTLS with 220 and runs the server's side of the TLS
// handshake with cfg; from then on the Conn reads and writes under TLS. It
// returns false if the handshake failed.
func (c *Conn) StartTLS(cfg *tls.Config) bool {
	if !c.Say("220 2.0.0 go ahead") {
		return false
	}
	tc := tls.Server(c.raw, cfg)
	if tc.Handshake() != nil {
		return false
	}
	exact := c.src.exact.Load()
	c.nc, c.src = tc, &source{r: tc}
	c.src.exact.Store(exact)
	c.br = bufio.NewReader(c.src)
	return true
}

// Play makes writes, in order: each is a reply line (CRLF added; lines in
// a row go out in one write) or one of these directives:
//
//   - "CUT" closes the connection;
//   - "STALL" waits until the Server is released or closed, then closes
//     the connection;
//   - "AWAIT" waits until the client has sent another line (Await);
//   - "~" and a duration ("~20ms") pauses: a slow server (under
//     testing/synctest, on the bubble's clock).
//
// It returns false when the connection is to end: closed, or a write
// failed, or the client hung up during AWAIT.
func (c *Conn) Play(writes ...string) bool {
	ok, _ := c.play(writes, nil)
	return ok
}

// play is Play with directives of the caller's: custom, if not nil, is
// given each write first; handled says it was one (the lines before it
// are still to go out with those after), more=false stops after the lines
// before it, the connection kept. It also returns the last line written.
func (c *Conn) play(writes []string, custom func(w string) (handled, more bool)) (ok bool, last string) {
	var pending []string
	flush := func() bool {
		if len(pending) == 0 {
			return true
		}
		lines := strings.Split(pending[len(pending)-1], "\r\n")
		last = lines[len(lines)-1]
		ok := c.Say(pending...)
		pending = pending[:0]
		return ok
	}
	for _, w := range writes {
		if custom != nil {
			if handled, more := custom(w); handled {
				if !more {
					return flush(), last
				}
				continue
			}
		}
		switch {
		case w == "CUT":
			flush()
			c.Close()
			return false, last
		case w == "STALL":
			flush()
			c.Stall()
			c.Close()
			return false, last
		case w == "AWAIT":
			if !flush() || !c.Await() {
				return false, last
			}
		case strings.HasPrefix(w, "~"):
			d, err := time.ParseDuration(w[1:])
			if err != nil {
				panic("fakesmtp: Play: " + err.Error())
			}
			if !flush() {
				return false, last
			}
			time.Sleep(d)
		default:
			pending = append(pending, w)
		}
	}
	return flush(), last
}
