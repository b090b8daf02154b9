package storetest

import (
	"bytes"
	"crypto/sha256"
	"fmt"
	"io"
	"math/rand/v2"
	"runtime"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mxrelay/mxrelay/internal/store"
)

const mib = 1 << 20

var bodyTests = []test{
	{"BodyRoundTrips", func(s *suite) {
		st := s.open()
		reader := s.other(st)
		for _, size := range []int{0, 1, mib - 1, mib, mib + 1, 3*mib + 5} {
			s.t.Run(fmt.Sprint(size), func(t *testing.T) {
				want := make([]byte, size)
				rand.NewChaCha8([32]byte{byte(size)}).Read(want)
				id := fmt.Sprintf("e%d", size)
				d, err := st.Accept(ctx, &store.Envelope{ID: id})
				require.NoError(t, err)
				// Written in odd pieces, across any chunk boundaries.
				for rest := want; len(rest) > 0; {
					k := min(len(rest), 77777)
					n, err := d.Write(rest[:k])
					require.NoError(t, err)
					require.Equal(t, k, n)
					rest = rest[k:]
				}
				_, err = d.Commit(ctx, nil)
				require.NoError(t, err)

				for range 2 { // once per attempt
					r, err := reader.Body(ctx, id)
					require.NoError(t, err)
					got, err := io.ReadAll(r)
					require.NoError(t, err)
					require.NoError(t, r.Close())
					assert.True(t, bytes.Equal(want, got), "the body as written")
				}
			})
		}
	}},

	{"BodyGoesWithTheResult", func(s *suite) {
		t, st := s.t, s.open()
		Accept(t, st, "e1", 0, string(bytes.Repeat([]byte("x"), 2*mib+1)))
		c := claimOne(t, st, "w1", "e1")
		r, err := st.Body(ctx, "e1")
		require.NoError(t, err)
		_, err = io.ReadFull(r, make([]byte, 10))
		require.NoError(t, err)

		require.NoError(t, st.Finish(ctx, c.Token, delivered("e1")))
		_, err = io.ReadAll(r)
		assert.ErrorIs(t, err, store.ErrNotFound, "a read of a body removed meanwhile")
		r.Close()
		_, err = st.Body(ctx, "e1")
		assert.ErrorIs(t, err, store.ErrNotFound)
		_, err = st.Body(ctx, "nosuch")
		assert.ErrorIs(t, err, store.ErrNotFound)
	}},

	// A 100 MiB body goes in and out without being held whole: the heap
	// grows by a few MiB, nowhere near the body's size.
	{"HundredMiBBodyStreamsBothWaysInBoundedMemory", func(s *suite) {
		t := s.t
		if testing.Short() {
			t.Skip("100 MiB through the store")
		}
		const size = 100 * mib
		const growth = 32 * mib
		st := s.open()
		base := heapNow()

		in := &heapWatch{}
		want := sha256.New()
		src := &pattern{src: rand.NewChaCha8([32]byte{7}), left: size, heap: in}
		d, err := st.Accept(ctx, &store.Envelope{ID: "big"})
		require.NoError(t, err)
		n, err := io.Copy(io.MultiWriter(d, want), src)
		require.NoError(t, err)
		require.EqualValues(t, size, n)
		_, err = d.Commit(ctx, nil)
		require.NoError(t, err)

		out := &heapWatch{}
		got := sha256.New()
		r, err := st.Body(ctx, "big")
		require.NoError(t, err)
		buf := make([]byte, 64<<10)
		for {
			k, err := r.Read(buf)
			got.Write(buf[:k])
			out.sample(k)
			if err == io.EOF {
				break
			}
			require.NoError(t, err)
		}
		r.Close()
		assert.Equal(t, want.Sum(nil), got.Sum(nil), "the body read back is the one written")
		t.Logf("heap: %d MiB at start, peak %d MiB writing, %d MiB reading", base>>20, in.peak>>20, out.peak>>20)
		require.NotZero(t, in.peak, "sampled")
		require.NotZero(t, out.peak, "sampled")
		assert.Less(t, int64(in.peak)-int64(base), int64(growth), "heap growth while writing")
		assert.Less(t, int64(out.peak)-int64(base), int64(growth), "heap growth while reading")
	}},
}

// pattern is a reader of n pseudo-random bytes that samples the heap as
// it goes.
type pattern struct {
	src  *rand.ChaCha8
	left int64
	heap *heapWatch
}

func (p *pattern) Read(b []byte) (int, error) {
	if p.left == 0 {
		return 0, io.EOF
	}
	b = b[:min(int64(len(b)), p.left)]
	p.src.Read(b)
	p.left -= int64(len(b))
	p.heap.sample(len(b))
	return len(b), nil
}

// heapWatch records the largest live heap seen, sampled every few MiB.
type heapWatch struct {
	since, peak uint64
}

func (h *heapWatch) sample(n int) {
	h.since += uint64(n)
	if h.since < 4*mib {
		return
	}
	h.since = 0
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	h.peak = max(h.peak, ms.HeapAlloc)
}

func heapNow() uint64 {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc
}
