package memnet

import (
	"io"
	"net"
	"os"
	"sync"
	"time"
)

// BufferSize is how many bytes each direction of a connection holds that
// its reader has not read.
const BufferSize = 256 << 10

// pipe is one direction of a connection: the bytes written and not yet
// read. Waiters wait on changed, which is closed (and replaced) on every
// change, so that a goroutine waiting on a pipe made in a synctest bubble
// is durably blocked.
type pipe struct {
	mu      sync.Mutex
	buf     []byte
	eof     bool // the writer closed: the reader gets EOF once buf is empty
	gone    bool // the reader closed: writes fail
	changed chan struct{}
}

func newPipe() *pipe { return &pipe{changed: make(chan struct{})} }

// signal wakes the waiters. p.mu is held.
func (p *pipe) signal() {
	close(p.changed)
	p.changed = make(chan struct{})
}

// conn is one end of a connection, with the addresses of a TCP one.
type conn struct {
	in, out       *pipe
	local, remote net.Addr
	rd, wd        deadline
	once          sync.Once
	closed        chan struct{}
}

// newPair returns the two ends of a connection between addresses a and b.
func newPair(a, b net.Addr) (*conn, *conn) {
	ab, ba := newPipe(), newPipe()
	return &conn{in: ba, out: ab, local: a, remote: b, closed: make(chan struct{})},
		&conn{in: ab, out: ba, local: b, remote: a, closed: make(chan struct{})}
}

func (c *conn) Read(b []byte) (int, error) {
	p := c.in
	for {
		p.mu.Lock()
		if c.isClosed() {
			p.mu.Unlock()
			return 0, c.opErr("read", net.ErrClosed)
		}
		if len(p.buf) > 0 {
			n := copy(b, p.buf)
			p.buf = p.buf[n:]
			if len(p.buf) == 0 {
				p.buf = nil
			}
			p.signal()
			p.mu.Unlock()
			return n, nil
		}
		if p.eof {
			p.mu.Unlock()
			return 0, io.EOF
		}
		changed := p.changed
		p.mu.Unlock()
		if !c.wait(changed, &c.rd) {
			return 0, c.opErr("read", os.ErrDeadlineExceeded)
		}
	}
}

func (c *conn) Write(b []byte) (int, error) {
	p := c.out
	written := 0
	for {
		p.mu.Lock()
		if c.isClosed() {
			p.mu.Unlock()
			return written, c.opErr("write", net.ErrClosed)
		}
		if p.gone {
			p.mu.Unlock()
			return written, c.opErr("write", io.ErrClosedPipe)
		}
		if n := min(BufferSize-len(p.buf), len(b)-written); n > 0 {
			p.buf = append(p.buf, b[written:written+n]...)
			written += n
			p.signal()
		}
		if written == len(b) {
			p.mu.Unlock()
			return written, nil
		}
		changed := p.changed
		p.mu.Unlock()
		if !c.wait(changed, &c.wd) {
			return written, c.opErr("write", os.ErrDeadlineExceeded)
		}
	}
}

func (c *conn) isClosed() bool {
	select {
	case <-c.closed:
		return true
	default:
		return false
	}
}

// wait waits until changed is closed, c is closed or d passes; false: d
// passed.
func (c *conn) wait(changed <-chan struct{}, d *deadline) bool {
	select {
	case <-changed:
	case <-c.closed:
	case <-d.passed():
		return false
	}
	return true
}

// Close ends the connection: the peer reads what was written, then EOF;
// its writes fail. Reads and writes of this end in progress fail.
func (c *conn) Close() error {
	c.once.Do(func() {
		close(c.closed)
		for _, p := range []*pipe{c.in, c.out} {
			p.mu.Lock()
			if p == c.in {
				p.gone = true
			} else {
				p.eof = true
			}
			p.signal()
			p.mu.Unlock()
		}
		c.rd.stop()
		c.wd.stop()
	})
	return nil
}

func (c *conn) opErr(op string, err error) error {
	return &net.OpError{Op: op, Net: "memnet", Source: c.local, Addr: c.remote, Err: err}
}

func (c *conn) LocalAddr() net.Addr  { return c.local }
func (c *conn) RemoteAddr() net.Addr { return c.remote }

func (c *conn) SetDeadline(t time.Time) error {
	c.rd.set(t)
	c.wd.set(t)
	return nil
}

func (c *conn) SetReadDeadline(t time.Time) error  { c.rd.set(t); return nil }
func (c *conn) SetWriteDeadline(t time.Time) error { c.wd.set(t); return nil }

// deadline is a read or write deadline: passed is closed once it has
// passed. The zero value has none.
type deadline struct {
	mu    sync.Mutex
	timer *time.Timer
	ch    chan struct{} // nil until first needed
	done  bool          // ch is closed
}

// passed is closed once the deadline has passed.
func (d *deadline) passed() <-chan struct{} {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.ch == nil {
		d.ch = make(chan struct{})
	}
	return d.ch
}

// set sets the deadline to t; the zero Time means none.
func (d *deadline) set(t time.Time) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.timer != nil {
		d.timer.Stop()
		d.timer = nil
	}
	if d.ch == nil || d.done {
		d.ch, d.done = make(chan struct{}), false
	}
	if t.IsZero() {
		return
	}
	if wait := time.Until(t); wait > 0 {
		ch := d.ch
		d.timer = time.AfterFunc(wait, func() {
			d.mu.Lock()
			defer d.mu.Unlock()
			if d.ch == ch && !d.done {
				close(ch)
				d.done = true
			}
		})
		return
	}
	close(d.ch)
	d.done = true
}

// stop stops the deadline's timer.
func (d *deadline) stop() {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.timer != nil {
		d.timer.Stop()
		d.timer = nil
	}
}
