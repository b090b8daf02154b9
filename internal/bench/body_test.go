package bench

import (
	"bytes"
	"io"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// checkLines checks that msg is made of CRLF lines no longer than 998
// octets, none starting with a dot, with a blank line after the headers.
func checkLines(t *testing.T, msg []byte) {
	t.Helper()
	require.True(t, bytes.HasSuffix(msg, []byte("\r\n")))
	lines := bytes.Split(msg[:len(msg)-2], []byte("\r\n"))
	blank := -1
	for i, l := range lines {
		require.NotContains(t, string(l), "\r", "line %d", i)
		require.NotContains(t, string(l), "\n", "line %d", i)
		require.LessOrEqual(t, len(l), 998, "line %d", i)
		require.False(t, bytes.HasPrefix(l, []byte(".")), "line %d", i)
		if len(l) == 0 && blank < 0 {
			blank = i
		}
	}
	require.Equal(t, 4, blank, "four header lines, then the blank line")
}

func TestBodySizesAreExact(t *testing.T) {
	for size := MinBodySize; size < MinBodySize+3*lineLen; size++ {
		msg, err := Message(size)
		require.NoError(t, err)
		require.Len(t, msg, size)
		checkLines(t, msg)
	}
	for _, size := range []int{1 << 10, 1<<20 + 3} {
		msg, err := Message(size)
		require.NoError(t, err)
		require.Len(t, msg, size)
		checkLines(t, msg)
	}
	_, err := NewBody(int64(MinBodySize - 1))
	assert.Error(t, err)
}

func TestBodyReadsAndSeeks(t *testing.T) {
	const size = 100_003
	want, err := Message(size)
	require.NoError(t, err)

	b, err := NewBody(size)
	require.NoError(t, err)
	assert.Equal(t, int64(size), b.Size())
	// Odd read sizes give the same bytes.
	var got []byte
	buf := make([]byte, 7777)
	for i := 1; ; i++ {
		n, err := b.Read(buf[:i%len(buf)+1])
		got = append(got, buf[:n]...)
		if err == io.EOF {
			break
		}
		require.NoError(t, err)
	}
	assert.True(t, bytes.Equal(want, got))

	end, err := b.Seek(0, io.SeekEnd)
	require.NoError(t, err)
	assert.Equal(t, int64(size), end)
	pos, err := b.Seek(-10, io.SeekCurrent)
	require.NoError(t, err)
	assert.Equal(t, int64(size-10), pos)
	tail, err := io.ReadAll(b)
	require.NoError(t, err)
	assert.Equal(t, want[size-10:], tail)
	_, err = b.Seek(123, io.SeekStart)
	require.NoError(t, err)
	rest, err := io.ReadAll(b)
	require.NoError(t, err)
	assert.True(t, bytes.Equal(want[123:], rest))
	_, err = b.Seek(-1, io.SeekStart)
	assert.Error(t, err)
}
