package broadcast

import (
	"testing"

	"github.com/stretchr/testify/assert"
)

func closed(c <-chan struct{}) bool {
	select {
	case <-c:
		return true
	default:
		return false
	}
}

func TestSignalWakesEveryoneOnce(t *testing.T) {
	var s Signal
	s.Signal() // nobody waits: nothing to close, and no panic
	a, b := s.C(), s.C()
	assert.False(t, closed(a))
	s.Signal()
	assert.True(t, closed(a))
	assert.True(t, closed(b))
	c := s.C()
	assert.False(t, closed(c), "a channel taken after the signal waits for the next")
	s.Signal()
	assert.True(t, closed(c))
}
