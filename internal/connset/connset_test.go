package connset_test

import (
	"io"
	"net"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/mxrelay/mxrelay/internal/connset"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestSet(t *testing.T) {
	var s connset.Set
	a, a2 := net.Pipe()
	b, b2 := net.Pipe()
	c, c2 := net.Pipe()
	defer a2.Close()
	defer b2.Close()
	defer c2.Close()
	require.NoError(t, s.Add(a, 2))
	require.NoError(t, s.Add(b, 2))
	require.ErrorIs(t, s.Add(c, 2), connset.ErrFull)
	s.Remove(b)
	_, err := b.Write([]byte("x"))
	require.ErrorIs(t, err, io.ErrClosedPipe, "Remove closes")
	require.NoError(t, s.Add(c, 2))

	assert.True(t, s.Close())
	assert.False(t, s.Close(), "the second Close")
	for _, x := range []net.Conn{a, c} {
		_, err := x.Write([]byte("x"))
		require.ErrorIs(t, err, io.ErrClosedPipe, "Close closes them all")
	}
	d, d2 := net.Pipe()
	defer d.Close()
	defer d2.Close()
	require.ErrorIs(t, s.Add(d, 0), connset.ErrClosed)
}
