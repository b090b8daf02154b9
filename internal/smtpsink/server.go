// Package smtpsink is an SMTP server that accepts every well-formed message
// and throws its data away, counting messages and octets. It is the upstream
// of the benchmarks (cmd/mxbench), fast enough not to be what is measured,
// and serves tests that need a strict, pipelining-aware SMTP server.
//
// It speaks RFC 5321 (EHLO, HELO, MAIL, RCPT, DATA, RSET, NOOP, QUIT) with
// these extensions, each of which Options can switch off:
//
//   - PIPELINING, RFC 2920: commands are read from a buffer and replies
//     are written when no more input is buffered, so that the replies to a
//     pipelined group leave in one write, as Postfix does;
//   - CHUNKING, RFC 3030: BDAT n [LAST] consumes exactly n octets, even
//     when it refuses the chunk;
//   - 8BITMIME (RFC 6152), SIZE (RFC 1870), SMTPUTF8 (RFC 6531) and DSN
//     (RFC 3461).
//
// ENHANCEDSTATUSCODES (RFC 2034) is always offered. MAIL also accepts
// REQUIRETLS (RFC 8689) and AUTH= (RFC 4954) without offering them; a
// parameter of an extension that is switched off, or an unknown one, is
// refused with 555.
//
// What it does not do: STARTTLS, AUTH, VRFY and EXPN, storage or delivery.
// Everything it holds is bounded: command lines (Options.MaxLineLength),
// recipients per transaction, connections, errors per session, idle time.
package smtpsink

import (
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mxrelay/mxrelay/internal/connset"
)

// Defaults of Options.
const (
	DefaultAddr          = "127.0.0.1:0"
	DefaultHostname      = "smtpsink.local"
	DefaultMaxLineLength = 4096
	DefaultMaxRecipients = 1000
	DefaultMaxConns      = 256
	DefaultIdleTimeout   = time.Minute
)

// maxErrors is how many commands a session may get wrong (unknown, too
// long, out of sequence, bad syntax) before it is closed with 421.
const maxErrors = 100

// Options configures a Server. A nil *Options and the zero value of every
// field are useful: every extension is offered.
type Options struct {
	// Addr is the TCP address to listen on. "": 127.0.0.1:0.
	Addr string
	// Hostname is the name in the greeting and the EHLO reply. "":
	// "smtpsink.local".
	Hostname string

	// DisablePipelining stops offering PIPELINING. The server still reads
	// pipelined commands correctly, as most servers do.
	DisablePipelining bool
	// DisableChunking stops offering CHUNKING: BDAT is then an unknown
	// command (502), and its octets are read as commands, as by a server
	// that never heard of it.
	DisableChunking bool
	// Disable8BitMIME stops offering 8BITMIME: MAIL ... BODY= is refused.
	Disable8BitMIME bool
	// DisableSize stops offering SIZE: MAIL ... SIZE= is refused.
	DisableSize bool
	// DisableSMTPUTF8 stops offering SMTPUTF8: MAIL ... SMTPUTF8 is refused.
	DisableSMTPUTF8 bool
	// DisableDSN stops offering DSN: RET, ENVID, NOTIFY and ORCPT are
	// refused.
	DisableDSN bool

	// MaxMessageBytes is the largest message accepted, advertised with
	// SIZE. Zero: no limit ("SIZE 0").
	MaxMessageBytes int64
	// MaxLineLength bounds a command line, CRLF included; a longer one is
	// answered 500 and skipped. Zero: 4096.
	MaxLineLength int
	// MaxRecipients bounds the recipients of one transaction; past it RCPT
	// gets 452. Zero: 1000.
	MaxRecipients int
	// MaxConns bounds the connections served at once; past it a connection
	// gets 421 and is closed. Zero: 256.
	MaxConns int
	// IdleTimeout ends a connection whose read or write blocks this long.
	// Zero: 1m.
	IdleTimeout time.Duration
}

// Stats counts what a Server accepted since it started.
type Stats struct {
	// Sessions is the connections served (greeted).
	Sessions int64
	// Messages is the messages accepted: DATA or BDAT ... LAST answered 250.
	Messages int64
	// Bytes is the octets of the accepted messages, as the client meant
	// them: DATA's dot-stuffing and terminator not counted.
	Bytes int64
}

// Server is a running sink. Its methods are safe for concurrent use.
type Server struct {
	// Addr is the address it listens on, host:port.
	Addr string

	opts Options
	ln   net.Listener
	wg   sync.WaitGroup // the accept loop and every session

	conns    connset.Set
	sessions atomic.Int64
	messages atomic.Int64
	bytes    atomic.Int64
}

// New starts a Server on opts.Addr. opts may be nil. The caller must Close
// it.
func New(opts *Options) (*Server, error) {
	var o Options
	if opts != nil {
		o = *opts
	}
	if o.Addr == "" {
		o.Addr = DefaultAddr
	}
	if o.Hostname == "" {
		o.Hostname = DefaultHostname
	}
	if o.MaxLineLength <= 0 {
		o.MaxLineLength = DefaultMaxLineLength
	}
	if o.MaxRecipients <= 0 {
		o.MaxRecipients = DefaultMaxRecipients
	}
	if o.MaxConns <= 0 {
		o.MaxConns = DefaultMaxConns
	}
	if o.IdleTimeout <= 0 {
		o.IdleTimeout = DefaultIdleTimeout
	}
	ln, err := net.Listen("tcp", o.Addr)
	if err != nil {
		return nil, fmt.Errorf("smtpsink: %w", err)
	}
	s := &Server{Addr: ln.Addr().String(), opts: o, ln: ln}
	s.wg.Go(s.accept)
	return s, nil
}

func (s *Server) accept() {
	for {
		c, err := s.ln.Accept()
		if err != nil {
			return // closed; a sink on loopback has no temporary errors worth a retry
		}
		if !s.track(c) {
			continue
		}
		s.wg.Go(func() {
			defer s.conns.Remove(c)
			newSession(s, c).serve()
		})
	}
}

// ServeConn serves one SMTP session on c, as if it had been accepted, and
// closes c. It returns when the session has ended. Tests use it with
// net.Pipe to control how the input is split.
func (s *Server) ServeConn(c net.Conn) {
	if !s.track(c) {
		return
	}
	defer s.conns.Remove(c)
	newSession(s, c).serve()
}

// track registers c, or refuses it (and closes it) when the server is
// closed or full.
func (s *Server) track(c net.Conn) bool {
	err := s.conns.Add(c, s.opts.MaxConns)
	if err == nil {
		return true
	}
	if errors.Is(err, connset.ErrFull) {
		_ = c.SetWriteDeadline(time.Now().Add(time.Second))
		_, _ = c.Write([]byte("421 4.7.0 Too many connections\r\n"))
	}
	c.Close()
	return false
}

// Stats returns the counters.
func (s *Server) Stats() Stats {
	return Stats{Sessions: s.sessions.Load(), Messages: s.messages.Load(), Bytes: s.bytes.Load()}
}

// Close stops listening, closes every connection and waits for every
// goroutine of the Server. Calling it again does nothing.
func (s *Server) Close() error {
	if !s.conns.Close() {
		return nil
	}
	err := s.ln.Close()
	s.wg.Wait()
	return err
}
