package mxrelay_test

import (
	"bufio"
	"crypto/tls"
	"net"
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"
)

// upstream is a scripted SMTP server on loopback, to put behind
// relaytest.Options.UpstreamAddr: serve runs for each connection, and
// every line the server read, in clear or under TLS, is recorded.
type upstream struct {
	addr  string
	mu    sync.Mutex
	lines []string
	ended chan int64 // bytes written by each connection, sent when it ends
}

// upConn is one connection of an upstream.
type upConn struct {
	net.Conn
	r     *bufio.Reader
	u     *upstream
	wrote int64
}

func newUpstream(t *testing.T, serve func(c *upConn)) *upstream {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	u := &upstream{addr: ln.Addr().String(), ended: make(chan int64, 64)}
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			nc, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				c := &upConn{Conn: nc, r: bufio.NewReader(nc), u: u}
				serve(c)
				nc.Close()
				select {
				case u.ended <- c.wrote:
				default:
				}
			}()
		}
	}()
	return u
}

// say writes s and CRLF; false when the write failed.
// commands reads command lines until the client hangs up, sends QUIT
// (answered 221) or each returns false; verb is the line's first word in
// upper case.
func (c *upConn) commands(each func(verb, line string) bool) {
	for {
		l, ok := c.line()
		if !ok {
			return
		}
		verb := strings.ToUpper(strings.Fields(l + " x")[0])
		if verb == "QUIT" {
			c.say("221 2.0.0 bye")
			return
		}
		if !each(verb, l) {
			return
		}
	}
}

func (c *upConn) say(s string) bool { return c.write([]byte(s + "\r\n")) }

func (c *upConn) write(p []byte) bool {
	n, err := c.Write(p)
	c.wrote += int64(n)
	return err == nil
}

// flood writes p again and again until the connection breaks.
func (c *upConn) flood(p []byte) {
	for c.write(p) {
	}
}

// line reads and records one line, without its CRLF; false at the end.
func (c *upConn) line() (string, bool) {
	l, err := c.r.ReadString('\n')
	if err != nil {
		return "", false
	}
	l = strings.TrimRight(l, "\r\n")
	c.u.mu.Lock()
	c.u.lines = append(c.u.lines, l)
	c.u.mu.Unlock()
	return l, true
}

// startTLS answers STARTTLS with 220 and runs the server's handshake.
func (c *upConn) startTLS(cfg *tls.Config) bool {
	if !c.say("220 2.0.0 go ahead") {
		return false
	}
	tc := tls.Server(c.Conn, cfg)
	if tc.Handshake() != nil {
		return false
	}
	c.Conn, c.r = tc, bufio.NewReader(tc)
	return true
}

// saw reports whether the server read a line starting with prefix
// (case-insensitive).
func (u *upstream) saw(prefix string) bool {
	u.mu.Lock()
	defer u.mu.Unlock()
	for _, l := range u.lines {
		if len(l) >= len(prefix) && strings.EqualFold(l[:len(prefix)], prefix) {
			return true
		}
	}
	return false
}

// transcript is every line the server read.
func (u *upstream) transcript() []string {
	u.mu.Lock()
	defer u.mu.Unlock()
	return append([]string(nil), u.lines...)
}
