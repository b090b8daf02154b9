// Package connset keeps the open connections of a server so that closing
// the server closes them. The loopback servers of the benchmarks
// (internal/smtpsink, internal/latencyproxy) share it.
package connset

import (
	"errors"
	"net"
	"sync"
)

// Errors of Add.
var (
	ErrClosed = errors.New("connset: closed")
	ErrFull   = errors.New("connset: full")
)

// Set is a set of connections. The zero value is an empty, open Set. Its
// methods are safe for concurrent use.
type Set struct {
	mu     sync.Mutex
	conns  map[net.Conn]struct{}
	closed bool
}

// Add adds c, unless the Set is closed (ErrClosed) or already holds max
// connections (ErrFull; max <= 0 means no limit). It does not close c.
func (s *Set) Add(c net.Conn, max int) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case s.closed:
		return ErrClosed
	case max > 0 && len(s.conns) >= max:
		return ErrFull
	}
	if s.conns == nil {
		s.conns = make(map[net.Conn]struct{})
	}
	s.conns[c] = struct{}{}
	return nil
}

// Remove closes c and forgets it.
func (s *Set) Remove(c net.Conn) {
	c.Close()
	s.mu.Lock()
	delete(s.conns, c)
	s.mu.Unlock()
}

// Close closes every connection in the Set and refuses new ones. It
// reports whether this was the first call.
func (s *Set) Close() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	s.closed = true
	for c := range s.conns {
		c.Close()
	}
	return true
}
