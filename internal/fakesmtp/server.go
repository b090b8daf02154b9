// Package fakesmtp is the scripted SMTP server of every package's tests.
// A script, run for each connection, reads the client's commands and
// writes the replies byte for byte as the test wants them: a line cut in
// the middle, several replies in one write, a flood, a stall until the
// test releases it, a connection closed at any point. The Server records
// every line it read, in clear or under TLS.
//
// A Server listens on loopback TCP (Listen), on a listener of the test's
// (Serve: an internal/memnet listener for a test under testing/synctest),
// or serves the one connection at the other end of a net.Pipe (Pipe).
// Session is an honest server into which a test scripts one misbehaviour.
package fakesmtp

import (
	"net"
	"strings"
	"sync"
	"testing"
	"time"
)

// closeWait bounds how long Close waits for the scripts to return once
// their connections are closed.
const closeWait = 10 * time.Second

// Server runs a script for each connection. Its methods are safe for
// concurrent use. It is closed when the test that made it ends.
type Server struct {
	// Addr is the address the Server listens on; "" for Pipe.
	Addr string

	tb      testing.TB
	script  func(c *Conn)
	ln      net.Listener
	wg      sync.WaitGroup
	release chan struct{} // closed by Release: every Stall returns
	relOnce sync.Once
	ended   chan int64
	once    sync.Once

	mu     sync.Mutex
	n      int
	lines  []string
	open   map[*Conn]struct{}
	closed bool
}

func newServer(tb testing.TB, script func(c *Conn)) *Server {
	return &Server{tb: tb, script: script, release: make(chan struct{}), ended: make(chan int64, 64), open: map[*Conn]struct{}{}}
}

// Listen starts a Server on a loopback TCP port, to put behind
// relaytest.Options.UpstreamAddr. It fails tb if it cannot listen.
func Listen(tb testing.TB, script func(c *Conn)) *Server {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatalf("fakesmtp: %v", err)
	}
	return Serve(tb, ln, script)
}

// Serve starts a Server that accepts connections from ln, and closes ln
// when it closes.
func Serve(tb testing.TB, ln net.Listener, script func(c *Conn)) *Server {
	s := newServer(tb, script)
	s.Addr, s.ln = ln.Addr().String(), ln
	s.wg.Go(func() {
		for {
			nc, err := ln.Accept()
			if err != nil {
				return
			}
			s.start(nc)
		}
	})
	tb.Cleanup(s.Close)
	return s
}

// Pipe starts a Server for one connection over a net.Pipe and returns the
// client's end, which is closed when the test ends. A pipe has no buffer:
// each write of the client returns once the script has read it, so that,
// with Conn.Exact, the script knows to the byte what the client has sent.
func Pipe(tb testing.TB, script func(c *Conn)) (net.Conn, *Server) {
	cc, sc := net.Pipe()
	s := newServer(tb, script)
	s.start(sc)
	tb.Cleanup(func() {
		cc.Close()
		s.Close()
	})
	return cc, s
}

// start runs the script for nc, unless the Server is closed.
func (s *Server) start(nc net.Conn) {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		nc.Close()
		return
	}
	s.n++
	c := newConn(s, s.n, nc)
	s.open[c] = struct{}{}
	s.wg.Add(1)
	s.mu.Unlock()
	go func() {
		defer s.wg.Done()
		s.script(c)
		c.Close()
		s.mu.Lock()
		delete(s.open, c)
		s.mu.Unlock()
		select {
		case s.ended <- c.Wrote():
		default:
		}
	}()
}

// Close releases every stall, stops listening, closes every connection and
// waits for the scripts to return (failing the test if one does not within
// ten seconds). Calling it again does nothing.
func (s *Server) Close() {
	s.once.Do(func() {
		s.Release()
		if s.ln != nil {
			s.ln.Close()
		}
		s.mu.Lock()
		s.closed = true
		for c := range s.open {
			c.Close()
		}
		s.mu.Unlock()
		done := make(chan struct{})
		go func() {
			s.wg.Wait()
			close(done)
		}()
		select {
		case <-done:
		case <-time.After(closeWait):
			s.tb.Errorf("fakesmtp: a script did not return %v after its connection closed", closeWait)
		}
	})
}

// Release makes every Stall return, those under way and those to come.
func (s *Server) Release() {
	s.relOnce.Do(func() { close(s.release) })
}

// Ended receives, for each connection as its script returns, the bytes the
// script wrote to it (the 64 latest are kept while nobody receives).
func (s *Server) Ended() <-chan int64 { return s.ended }

// Conns is how many connections the Server has had.
func (s *Server) Conns() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.n
}

// Saw reports whether the Server read a line starting with prefix,
// case-insensitively.
func (s *Server) Saw(prefix string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, l := range s.lines {
		if len(l) >= len(prefix) && strings.EqualFold(l[:len(prefix)], prefix) {
			return true
		}
	}
	return false
}

// Transcript is every line the Server read, in order, without line ends.
func (s *Server) Transcript() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.lines...)
}

func (s *Server) record(line string) {
	s.mu.Lock()
	s.lines = append(s.lines, line)
	s.mu.Unlock()
}
