// Package broadcast wakes every goroutine waiting for something to change:
// a channel closed at the next Signal and replaced by a new one.
package broadcast

import "sync"

// Signal is the zero-value-ready broadcast. Take C before looking at the
// state it guards, so that a change in between is not missed. It is safe
// for concurrent use.
type Signal struct {
	mu sync.Mutex
	c  chan struct{}
}

// C is closed at the next Signal.
func (s *Signal) C() <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.c == nil {
		s.c = make(chan struct{})
	}
	return s.c
}

// Signal wakes everyone waiting on a channel C returned.
func (s *Signal) Signal() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.c != nil {
		close(s.c)
		s.c = nil
	}
}
