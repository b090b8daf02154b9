// Package memnet is a network in memory for tests: listeners and dialers
// whose connections are pairs of buffered pipes. A relay, its upstream and
// a client on one Network can run inside a testing/synctest bubble, where
// a real socket would keep the fake clock from advancing (a goroutine
// blocked on a socket is not durably blocked; one blocked on a memnet
// connection is).
//
// Each direction of a connection buffers BufferSize bytes, as a socket's
// buffers do: a Write returns once its bytes are in the buffer, and blocks
// while the buffer is full, so a peer that stops reading stops the writer
// after that much.
package memnet

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"sync"
	"syscall"
)

// Network is a set of listeners, each at an address of its own on
// 127.0.0.1 (so that a client refusing ws:// to anything but loopback
// accepts it). The zero value is ready to use; its methods are safe for
// concurrent use. A Network created in a synctest bubble must be used
// only in it.
type Network struct {
	mu    sync.Mutex
	ports int // the last port given out, to a listener or a dialer
	lns   map[string]*listener
}

// Listen returns a listener at address, a "host:port" whose port 0 (or no
// address at all) asks for a free one; the host is always 127.0.0.1.
// network is not looked at.
func (n *Network) Listen(network, address string) (net.Listener, error) {
	port := 0
	if address != "" {
		_, p, err := net.SplitHostPort(address)
		if err != nil {
			return nil, &net.OpError{Op: "listen", Net: "memnet", Err: err}
		}
		if port, err = strconv.Atoi(p); err != nil {
			return nil, &net.OpError{Op: "listen", Net: "memnet", Err: err}
		}
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.lns == nil {
		n.lns = map[string]*listener{}
	}
	if port == 0 {
		port = n.port()
	}
	a := addr(port)
	if n.lns[a.String()] != nil {
		return nil, &net.OpError{Op: "listen", Net: "memnet", Addr: a, Err: syscall.EADDRINUSE}
	}
	l := &listener{n: n, addr: a, conns: make(chan net.Conn), done: make(chan struct{})}
	n.lns[a.String()] = l
	return l, nil
}

// port is a port not given out before. n.mu is held.
func (n *Network) port() int {
	n.ports++
	return 1024 + n.ports
}

// DialContext connects to the listener at address, once it accepts; an
// address nobody listens on is refused (syscall.ECONNREFUSED). network is
// not looked at.
func (n *Network) DialContext(ctx context.Context, network, address string) (net.Conn, error) {
	n.mu.Lock()
	l := n.lns[address]
	local := addr(n.port())
	n.mu.Unlock()
	refused := &net.OpError{Op: "dial", Net: "memnet", Addr: stringAddr(address), Err: syscall.ECONNREFUSED}
	if l == nil {
		return nil, refused
	}
	c, s := newPair(local, l.addr)
	select {
	case l.conns <- s:
		return c, nil
	case <-l.done:
		return nil, refused
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// HTTPClient returns an http.Client that dials through n and keeps no
// idle connection (an idle one would outlive a synctest bubble).
func (n *Network) HTTPClient() *http.Client {
	return &http.Client{Transport: &http.Transport{DialContext: n.DialContext, DisableKeepAlives: true}}
}

// listener is a Listener of a Network.
type listener struct {
	n     *Network
	addr  addr
	conns chan net.Conn
	once  sync.Once
	done  chan struct{}
}

func (l *listener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

// Close stops the listener: Accept returns net.ErrClosed, dials are
// refused. Connections already accepted stay open.
func (l *listener) Close() error {
	l.once.Do(func() {
		l.n.mu.Lock()
		delete(l.n.lns, l.addr.String())
		l.n.mu.Unlock()
		close(l.done)
	})
	return nil
}

func (l *listener) Addr() net.Addr { return l.addr }

// addr is 127.0.0.1 and a port.
type addr int

func (a addr) Network() string { return "tcp" }
func (a addr) String() string  { return fmt.Sprintf("127.0.0.1:%d", int(a)) }

// stringAddr is an address as it was given.
type stringAddr string

func (a stringAddr) Network() string { return "tcp" }
func (a stringAddr) String() string  { return string(a) }
