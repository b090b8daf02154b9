package test

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"regexp"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/mxrelay/mxrelay/internal/pgtest"
	"github.com/mxrelay/mxrelay/internal/testkit"
	"github.com/mxrelay/mxrelay/pgstore"
)

// pgProxy stands between a store and PostgreSQL, on loopback, so that a
// test can break the database's connections the ways a network does:
// cut a connection right after the server answered a COMMIT (the commit
// took effect, its reply is lost), refuse every connection (the database
// is down), or forward nothing at all (a database that hangs).
type pgProxy struct {
	t      *testing.T
	ln     net.Listener
	target string

	mu        sync.Mutex
	conns     map[net.Conn]bool
	down      bool          // connections refused, the open ones cut
	gate      chan struct{} // non-nil: nothing forwarded until closed
	cutCommit int           // COMMITs whose reply to drop, cutting the connection
	cutDone   chan struct{} // closed when a COMMIT's reply was dropped
	closed    bool
	wg        sync.WaitGroup
}

func newPGProxy(t *testing.T, target string) *pgProxy {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	p := &pgProxy{t: t, ln: ln, target: target, conns: map[net.Conn]bool{}, cutDone: make(chan struct{})}
	p.wg.Add(1)
	go p.accept()
	t.Cleanup(p.close)
	return p
}

// port is the proxy's loopback port.
func (p *pgProxy) port() int { return p.ln.Addr().(*net.TCPAddr).Port }

var portRE = regexp.MustCompile(`port=\d+`)

// conn is connString through the proxy.
func (p *pgProxy) conn(connString string) string {
	return portRE.ReplaceAllString(connString, fmt.Sprintf("port=%d", p.port()))
}

func (p *pgProxy) accept() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.mu.Lock()
		if p.down || p.closed {
			p.mu.Unlock()
			c.Close()
			continue
		}
		s, err := net.Dial("tcp", p.target)
		if err != nil {
			p.mu.Unlock()
			c.Close()
			continue
		}
		p.conns[c], p.conns[s] = true, true
		p.wg.Add(2)
		p.mu.Unlock()
		pair := &pgPair{c: c, s: s}
		go p.forward(pair, c, s, false)
		go p.forward(pair, s, c, true)
	}
}

// pgPair is one connection through the proxy: c the store's, s the
// server's.
type pgPair struct {
	c, s net.Conn
	mu   sync.Mutex
	cut  bool // the server's next reply is dropped and the pair cut
}

var commitMsg = []byte("commit\x00")

func (p *pgProxy) forward(pair *pgPair, src, dst net.Conn, fromServer bool) {
	defer p.wg.Done()
	defer pair.c.Close()
	defer pair.s.Close()
	buf := make([]byte, 64<<10)
	for {
		n, err := src.Read(buf)
		if err != nil {
			return
		}
		p.mu.Lock()
		gate := p.gate
		p.mu.Unlock()
		if gate != nil {
			<-gate
		}
		data := buf[:n]
		if !fromServer && bytes.Contains(bytes.ToLower(data), commitMsg) {
			p.mu.Lock()
			if p.cutCommit > 0 {
				p.cutCommit--
				pair.mu.Lock()
				pair.cut = true
				pair.mu.Unlock()
			}
			p.mu.Unlock()
		}
		if fromServer {
			pair.mu.Lock()
			cut := pair.cut
			pair.mu.Unlock()
			if cut {
				// The server answered the COMMIT: it took effect. The
				// store never hears it.
				close(p.cutDone)
				return
			}
		}
		if _, err := dst.Write(data); err != nil {
			return
		}
	}
}

// cutNextCommit drops the server's reply to the next COMMIT and cuts
// that connection; the returned channel is closed when it happened.
func (p *pgProxy) cutNextCommit() <-chan struct{} {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cutCommit++
	return p.cutDone
}

// setDown refuses every connection and cuts the open ones (down), or
// accepts them again.
func (p *pgProxy) setDown(down bool) {
	p.mu.Lock()
	p.down = down
	var open []net.Conn
	if down {
		for c := range p.conns {
			open = append(open, c)
		}
		clear(p.conns)
	}
	p.mu.Unlock()
	for _, c := range open {
		c.Close()
	}
}

// hang stops forwarding anything, both ways, until unhang: the
// connections stay open, their reads and writes wait.
func (p *pgProxy) hang() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.gate == nil {
		p.gate = make(chan struct{})
	}
}

func (p *pgProxy) unhang() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.gate != nil {
		close(p.gate)
		p.gate = nil
	}
}

func (p *pgProxy) close() {
	p.unhang()
	p.mu.Lock()
	p.closed = true
	p.mu.Unlock()
	p.ln.Close()
	p.setDown(true)
	p.wg.Wait()
}

// proxiedStore is a store on q through a new proxy, as a process whose
// network the test breaks, closed when the test ends. The proxy's own
// cleanup, registered first, runs after the store's and its pool's.
func proxiedStore(t *testing.T, q *testkit.Queue) (*pgstore.Store, *pgProxy) {
	t.Helper()
	p := newPGProxy(t, fmt.Sprintf("127.0.0.1:%d", pgtest.Shared(t).Port()))
	pool := pgtest.Pool(t, p.conn(q.Conn))
	st, err := pgstore.Open(context.Background(), pool, &pgstore.Options{Schema: q.Name, PollInterval: time.Hour})
	require.NoError(t, err)
	t.Cleanup(func() { st.Close() })
	t.Cleanup(p.unhang) // before the store's Close: nothing waits on the gate then
	return st, p
}
