package relayconn

import (
	"bytes"
	"context"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestChannelReadsWhatWasDelivered: the bytes of the frames delivered are
// read back in order and whole, whatever the sizes of the frames and of
// the reads, while delivery waits for room (MaxBuffered) and the buffer is
// reused and compacted.
func TestChannelReadsWhatWasDelivered(t *testing.T) {
	for _, limit := range []int{1, 7, 100, 1 << 20} {
		c := &Conn{cfg: Config{MaxBuffered: limit}, wctx: context.Background(), dead: make(chan struct{})}
		ch := newChannel(c, true)
		var want bytes.Buffer
		frames := make([][]byte, 300)
		for i := range frames {
			f := make([]byte, (i*37)%61+1)
			for j := range f {
				f[j] = byte(i + j)
			}
			frames[i] = f
			want.Write(f)
		}
		go func() {
			scratch := make([]byte, 64) // reused for every frame, as readLoop does
			for _, f := range frames {
				n := copy(scratch, f)
				if !ch.deliver(scratch[:n]) {
					return
				}
				clear(scratch) // deliver kept a copy, not scratch
			}
		}()
		got := make([]byte, 0, want.Len())
		for k := 1; len(got) < want.Len(); k = k%13 + 1 {
			p := make([]byte, k)
			n, err := ch.Read(p)
			require.NoError(t, err)
			got = append(got, p[:n]...)
		}
		require.Equal(t, want.Bytes(), got, "limit %d", limit)
		ch.mu.Lock()
		require.Zero(t, ch.size)
		ch.mu.Unlock()
		ch.wcancel()
	}
}
