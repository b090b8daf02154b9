// Package smtpc is mxrelay's SMTP client engine: the greeting, EHLO,
// STARTTLS and AUTH in lock-step, as a Policy says (Handshake), then
// transactions pipelined per RFC 2920
// and, when the server offers CHUNKING, sent with BDAT per RFC 3030 with a
// window of whole transactions in flight. Every reply is matched to its
// command in order, and every transaction gets exactly one result, decided
// by its own replies, or "unknown" when its end of data was handed on and
// the connection ended before the reply.
package smtpc

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/base64"
	"fmt"
	"net"
	"strings"
	"sync/atomic"
	"time"

	"github.com/emersion/go-sasl"
)

// Config sets the engine's limits.
type Config struct {
	// Timeout bounds the wait for each reply, counted from when its command
	// was flushed or the previous reply arrived, and each write.
	Timeout time.Duration
	// Window bounds the transactions in flight when the server offers
	// PIPELINING and CHUNKING. Zero: 1. Within it, the number in flight
	// follows what the link needs (see window), unless FixedWindow.
	Window      int
	FixedWindow bool
	// StartWindow is what the last session's adaptive window on the
	// same link learned of it (Client.WindowState), so that each session
	// does not ramp up again. Zero: nothing, the window starts at 32.
	StartWindow WindowState
	// NoPipelining waits for each reply before the next command.
	NoPipelining bool
	// Fix turns bare CR and bare LF in bodies into CRLF instead of
	// failing the transaction.
	Fix bool
	// MaxLine refuses a body line longer than this many octets (see
	// Encoder). Zero: no limit.
	MaxLine int
	// UTF8Only says the stream carries UTF-8 text only (a JSON channel of
	// the relay): BDAT chunks end on character boundaries, and STARTTLS,
	// whose records are not text, cannot run. The caller checks that the
	// bodies are UTF-8. Zero: any byte may travel.
	UTF8Only bool
	// Written, if set, reports bytes the transport under the connection has
	// handed on: a write that fails after it grew counts as handed on, so
	// an end of data that may have reached the server is never reported as
	// unsent.
	Written func() int64
}

// Client is one SMTP connection. The handshake methods (Greet, Hello,
// StartTLS, Auth) are lock-step and not safe for concurrent use; after
// them, Start begins pipelined transactions (see Pipeline).
type Client struct {
	cfg  Config
	raw  net.Conn // under TLS, if any
	cc   *countConn
	br   *bufio.Reader
	bw   *bufio.Writer
	rr   replyReader
	ext  map[string]string
	name string // the server's name from its greeting
	p    pipe
}

// countConn counts the bytes handed on, the offset that decides whether an
// end of data may have reached the server, and sets a write deadline on
// each write.
type countConn struct {
	net.Conn
	timeout time.Duration
	written func() int64
	handed  int64
	// started counts the bytes passed to Write, before it returns: the
	// server may answer a command as soon as its bytes are in a Write. The
	// reader compares it with each command's end.
	started *atomic.Int64
	// wrote, if set, is called after each Write, on the writer's
	// goroutine, with the time the Write began: the buffer's own flushes
	// (when full) hand bytes on too.
	wrote func(began time.Time)
}

func (c *countConn) Write(p []byte) (int, error) {
	var began time.Time
	if c.wrote != nil {
		began = time.Now()
	}
	c.started.Add(int64(len(p)))
	if c.timeout > 0 {
		c.Conn.SetWriteDeadline(time.Now().Add(c.timeout))
	}
	var before int64
	if c.written != nil {
		before = c.written()
	}
	n, err := c.Conn.Write(p)
	if err != nil && c.written != nil && c.written() > before {
		c.handed += int64(len(p))
	} else {
		c.handed += int64(n)
	}
	if c.wrote != nil {
		c.wrote(began)
	}
	return n, err
}

const bufSize = 64 << 10

// New returns a Client over nc.
func New(nc net.Conn, cfg Config) *Client {
	if cfg.Window < 1 {
		cfg.Window = 1
	}
	c := &Client{cfg: cfg, raw: nc}
	c.setConn(nc, 0)
	return c
}

func (c *Client) setConn(nc net.Conn, handed int64) {
	started := new(atomic.Int64)
	if c.cc != nil {
		started = c.cc.started
	}
	c.cc = &countConn{Conn: nc, timeout: c.cfg.Timeout, written: c.cfg.Written, handed: handed, started: started, wrote: c.stampHanded}
	c.br = bufio.NewReaderSize(c.cc, bufSize)
	c.bw = bufio.NewWriterSize(c.cc, bufSize)
	c.rr = replyReader{br: c.br}
}

// Has reports whether the server offered the EHLO keyword ext.
func (c *Client) Has(ext string) bool { _, ok := c.ext[ext]; return ok }

// Ext returns the parameters of the EHLO keyword ext.
func (c *Client) Ext(ext string) (string, bool) { p, ok := c.ext[ext]; return p, ok }

// ServerName is the name the server gave in its greeting.
func (c *Client) ServerName() string { return c.name }

// readReply reads one reply with the timeout.
func (c *Client) readReply() (Reply, error) {
	if c.cfg.Timeout > 0 {
		c.cc.SetReadDeadline(time.Now().Add(c.cfg.Timeout))
		defer c.cc.SetReadDeadline(time.Time{})
	}
	return c.rr.read()
}

// cmd sends line and reads its reply, which must have code want (or, with
// want < 10, be of class want); other replies come back as *smtp.SMTPError
// with the Reply. An empty line is sent too: it is how SASL answers an
// empty response.
func (c *Client) cmd(want int, line string) (Reply, error) {
	return c.cmdAs(want, line, verb(line))
}

// cmdAs is cmd with what naming the command in errors instead of its verb:
// a SASL response line is a secret, and its "verb" is all of it.
func (c *Client) cmdAs(want int, line, what string) (Reply, error) {
	if err := checkLine(line); err != nil {
		return Reply{}, err
	}
	if c.br.Buffered() > 0 {
		// A reply can only answer a command the server has read: these
		// bytes came before this one was written (a stray, or a reply
		// sent twice), and would be taken for its answer.
		return Reply{}, fmt.Errorf("%w: the server sent a reply before %s was written", ErrProtocol, what)
	}
	c.bw.WriteString(line)
	c.bw.WriteString("\r\n")
	if err := c.bw.Flush(); err != nil {
		return Reply{}, err
	}
	return c.expect(want, what)
}

// expect reads a reply that must have code want (see cmd); what names the
// command for errors.
func (c *Client) expect(want int, what string) (Reply, error) {
	r, err := c.readReply()
	if err != nil {
		return r, err
	}
	if r.Code == want || want < 10 && r.Code/100 == want {
		return r, nil
	}
	if r.Code/100 == 3 || r.Code/100 == 2 {
		return r, fmt.Errorf("%w: %q answered %d, not %d", ErrProtocol, what, r.Code, want)
	}
	return r, r.Err()
}

func verb(line string) string {
	if line == "" {
		return "empty line"
	}
	v, _, _ := strings.Cut(line, " ")
	return v
}

// Greet reads the server's 220 greeting.
func (c *Client) Greet() error {
	r, err := c.expect(220, "greeting")
	if err != nil {
		return fmt.Errorf("greeting: %w", err)
	}
	c.name, _, _ = strings.Cut(strings.SplitN(r.Message, "\n", 2)[0], " ")
	return nil
}

// Hello sends EHLO, or HELO when the server refuses EHLO with 5xx (no
// extensions then), and records the extensions offered.
func (c *Client) Hello(name string) error {
	r, err := c.cmd(250, "EHLO "+name)
	if err != nil {
		if r.Code/100 != 5 {
			return fmt.Errorf("EHLO: %w", err)
		}
		if _, err := c.cmd(250, "HELO "+name); err != nil {
			return fmt.Errorf("HELO: %w", err)
		}
		c.ext = map[string]string{}
		return nil
	}
	c.ext = map[string]string{}
	for _, l := range strings.Split(r.Message, "\n")[1:] {
		k, v, _ := strings.Cut(l, " ")
		if k != "" {
			c.ext[strings.ToUpper(k)] = v
		}
	}
	return nil
}

// StartTLS runs STARTTLS and the TLS handshake, then EHLO again.
func (c *Client) StartTLS(ctx context.Context, cfg *tls.Config, name string) error {
	if _, err := c.cmd(220, "STARTTLS"); err != nil {
		return fmt.Errorf("STARTTLS: %w", err)
	}
	if c.br.Buffered() > 0 {
		// Bytes after the 220 and before the handshake would be read as
		// if they had come under TLS: the STARTTLS response injection of
		// CVE-2011-0411.
		return fmt.Errorf("%w: data after the STARTTLS reply", ErrProtocol)
	}
	tc := tls.Client(c.cc.Conn, cfg)
	if c.cfg.Timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, c.cfg.Timeout)
		defer cancel()
	}
	if err := tc.HandshakeContext(ctx); err != nil {
		return fmt.Errorf("STARTTLS handshake: %w", err)
	}
	c.setConn(tc, c.cc.handed)
	return c.Hello(name)
}

// Auth runs AUTH with a.
func (c *Client) Auth(a sasl.Client) error {
	mech, ir, err := a.Start()
	if err != nil {
		return fmt.Errorf("AUTH: %w", err)
	}
	line := "AUTH " + mech
	if ir != nil {
		enc := base64.StdEncoding.EncodeToString(ir)
		if enc == "" {
			enc = "="
		}
		line += " " + enc
	}
	for range 16 {
		r, err := c.cmdAs(235, line, "AUTH "+mech)
		if err == nil {
			return nil
		}
		if r.Code != 334 {
			return fmt.Errorf("AUTH: %w", err)
		}
		challenge, err := base64.StdEncoding.DecodeString(r.Message)
		if err != nil {
			c.cmd(0, "*")
			return fmt.Errorf("%w: AUTH challenge is not base64", ErrProtocol)
		}
		resp, err := a.Next(challenge)
		if err != nil {
			c.cmd(0, "*") // cancel the exchange; its reply does not matter
			return fmt.Errorf("AUTH: %w", err)
		}
		line = base64.StdEncoding.EncodeToString(resp)
	}
	return fmt.Errorf("%w: AUTH exchange too long", ErrProtocol)
}
