package smtpc

import (
	"bufio"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// fake is a scripted SMTP server at the other end of a net.Pipe.
type fake struct {
	t    *testing.T
	conn net.Conn
	br   *bufio.Reader
	mu   sync.Mutex
	log  []string // lines (and chunk sizes) the server read
}

// newFake starts script as the server and returns the client's end.
// The script's goroutine is waited for at cleanup.
func newFake(t *testing.T, script func(f *fake)) net.Conn {
	t.Helper()
	cc, sc := net.Pipe()
	f := &fake{t: t, conn: sc, br: bufio.NewReader(sc)}
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer sc.Close()
		script(f)
	}()
	t.Cleanup(func() {
		cc.Close()
		sc.Close()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			t.Error("fake server did not end")
		}
	})
	return cc
}

// line reads one command line ("" on error).
func (f *fake) line() string {
	l, err := f.br.ReadString('\n')
	if err != nil {
		return ""
	}
	l = strings.TrimSuffix(l, "\r\n")
	f.mu.Lock()
	f.log = append(f.log, l)
	f.mu.Unlock()
	return l
}

// chunk reads the bytes of a "BDAT n" line.
func (f *fake) chunk(cmd string) string {
	fs := strings.Fields(cmd)
	n, _ := strconv.Atoi(fs[1])
	b := make([]byte, n)
	io.ReadFull(f.br, b)
	return string(b)
}

// dataBody reads a DATA body up to its end, the "." line.
func (f *fake) dataBody() string {
	var b strings.Builder
	for {
		l, err := f.br.ReadString('\n')
		if err != nil || l == ".\r\n" {
			return b.String()
		}
		b.WriteString(l)
	}
}

func (f *fake) say(s string) {
	f.conn.Write([]byte(s + "\r\n"))
}

// hello runs the greeting and EHLO, offering ext.
func (f *fake) hello(ext ...string) {
	f.say("220 mx.example ESMTP")
	f.line() // EHLO
	if len(ext) == 0 {
		f.say("250 mx.example")
		return
	}
	f.say("250-mx.example")
	for i, e := range ext {
		if i == len(ext)-1 {
			f.say("250 " + e)
		} else {
			f.say("250-" + e)
		}
	}
}

// drain reads until the client closes.
func (f *fake) drain() { io.Copy(io.Discard, f.br) }

func startClient(t *testing.T, nc net.Conn, cfg Config) *Client {
	t.Helper()
	c := New(nc, cfg)
	if err := c.Greet(); err != nil {
		t.Fatal(err)
	}
	if err := c.Hello("client.example"); err != nil {
		t.Fatal(err)
	}
	return c
}

// within fails the test when fn does not return in d.
func within(t *testing.T, d time.Duration, what string, fn func()) bool {
	t.Helper()
	done := make(chan struct{})
	go func() { defer close(done); fn() }()
	select {
	case <-done:
		return true
	case <-time.After(d):
		t.Errorf("%s: no return in %v", what, d)
		return false
	}
}
