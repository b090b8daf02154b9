// Package latencyproxy is a TCP proxy on loopback that delays each
// direction of every connection by a fixed one-way delay, as a long link
// would, without limiting its bandwidth: bytes are timestamped as they are
// read and each piece is written when its time comes, in order, while the
// following ones are already being read. A round trip through it takes
// twice the delay. The benchmarks use it to give a plain SMTP connection
// the same round-trip time as the relay's injected latency.
package latencyproxy

import (
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"

	"github.com/mxrelay/mxrelay/internal/connset"
)

// Bounds of what one direction of a connection holds: pieces read and not
// yet written. At most maxPieces of at most readSize bytes: 64 MiB, which
// at a one-way delay d allows 64 MiB/d (2.5 GiB/s at 25 ms) before reading
// waits for writing.
const (
	readSize  = 64 << 10
	maxPieces = 1024
)

// dialTimeout bounds the dial of the target.
const dialTimeout = 5 * time.Second

// Proxy forwards the connections it accepts on Addr to its target. Its
// methods are safe for concurrent use.
type Proxy struct {
	// Addr is the address it listens on, host:port.
	Addr string

	target string
	delay  time.Duration
	ln     net.Listener
	wg     sync.WaitGroup
	done   chan struct{} // closed by Close: delayed pieces are dropped
	conns  connset.Set
}

// New listens on a loopback port and forwards every connection to target,
// each direction delayed by oneWay (half the round-trip time it adds). The
// caller must Close it.
func New(target string, oneWay time.Duration) (*Proxy, error) {
	if oneWay < 0 {
		return nil, errors.New("latencyproxy: negative delay")
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("latencyproxy: %w", err)
	}
	p := &Proxy{
		Addr:   ln.Addr().String(),
		target: target,
		delay:  oneWay,
		ln:     ln,
		done:   make(chan struct{}),
	}
	p.wg.Go(p.accept)
	return p, nil
}

func (p *Proxy) accept() {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.wg.Go(func() { p.serve(c) })
	}
}

// serve forwards one connection both ways until both directions have ended.
func (p *Proxy) serve(client net.Conn) {
	if p.conns.Add(client, 0) != nil {
		client.Close()
		return
	}
	defer p.conns.Remove(client)
	up, err := net.DialTimeout("tcp", p.target, dialTimeout)
	if err != nil {
		return
	}
	if p.conns.Add(up, 0) != nil {
		up.Close()
		return
	}
	defer p.conns.Remove(up)
	var wg sync.WaitGroup
	wg.Go(func() { p.forward(client, up) })
	wg.Go(func() { p.forward(up, client) })
	wg.Wait()
}

// piece is bytes read from one side, due on the other at a time.
type piece struct {
	due  time.Time
	data []byte
}

// forward copies src to dst with the delay. When src ends cleanly, dst is
// half-closed after the last piece; any error closes both connections,
// which ends the other direction too.
func (p *Proxy) forward(src, dst net.Conn) {
	pieces := make(chan piece, maxPieces)
	var wg sync.WaitGroup
	var readErr error
	wg.Go(func() {
		// The writer. It reads readErr only after pieces is closed.
		if !p.deliver(pieces, dst) {
			src.Close()
			dst.Close()
			for range pieces { // let the reader finish
			}
			return
		}
		if readErr == io.EOF {
			if cw, ok := dst.(interface{ CloseWrite() error }); ok && cw.CloseWrite() == nil {
				return
			}
		}
		src.Close()
		dst.Close()
	})
	buf := make([]byte, readSize)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			pieces <- piece{due: time.Now().Add(p.delay), data: append([]byte(nil), buf[:n]...)}
		}
		if err != nil {
			readErr = err
			break
		}
	}
	close(pieces)
	wg.Wait()
}

// deliver writes each piece to dst when it is due. It returns false when a
// write failed or the proxy is closing.
func (p *Proxy) deliver(pieces <-chan piece, dst net.Conn) bool {
	t := time.NewTimer(time.Hour)
	defer t.Stop()
	for pc := range pieces {
		if d := time.Until(pc.due); d > 0 {
			t.Reset(d)
			select {
			case <-t.C:
			case <-p.done:
				return false
			}
		}
		if _, err := dst.Write(pc.data); err != nil {
			return false
		}
	}
	return true
}

// Close stops listening, closes every connection, drops the bytes still
// delayed, and waits for every goroutine of the proxy. Calling it again
// does nothing.
func (p *Proxy) Close() error {
	if !p.conns.Close() {
		return nil
	}
	close(p.done)
	err := p.ln.Close()
	p.wg.Wait()
	return err
}
