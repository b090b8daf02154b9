package memstore

import (
	"bytes"
	"context"
	"io"
	"os"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mxrelay/mxrelay/internal/store"
	"github.com/mxrelay/mxrelay/internal/store/storetest"
)

// backing is the memory of the test: each Open is a new, empty Store.
func backing(opts *Options) storetest.Backing {
	return storetest.Local(func(t *testing.T) (store.Store, storetest.Clock) {
		st := New(opts)
		t.Cleanup(func() { st.Close() })
		return st, st.l
	})
}

// TestConformance: the memory store passes the store seam's suite, as a
// store of one process that keeps nothing across a reopen.
func TestConformance(t *testing.T) {
	storetest.Run(t, storetest.Capabilities{}, func(*testing.T) storetest.Backing { return backing(nil) })
}

// With a small MemoryBody every body but the smallest goes through a
// temporary file: the suite holds for that path too.
func TestConformanceWithBodiesInFiles(t *testing.T) {
	dir := t.TempDir()
	storetest.Run(t, storetest.Capabilities{}, func(*testing.T) storetest.Backing {
		return backing(&Options{MemoryBody: 1, TempDir: dir})
	})
}

// A body over MemoryBody is in a file that has no name, and not in
// memory: nothing is left in TempDir, whatever becomes of the email.
func TestLargeBodyIsInAFileWithoutAName(t *testing.T) {
	dir := t.TempDir()
	st := New(&Options{MemoryBody: 8, TempDir: dir})
	defer st.Close()
	ctx := context.Background()
	d, err := st.Accept(ctx, &store.Envelope{ID: "e1"})
	require.NoError(t, err)
	want := bytes.Repeat([]byte("0123456789"), 100)
	_, err = d.Write(want)
	require.NoError(t, err)
	_, err = d.Commit(ctx, nil)
	require.NoError(t, err)

	b, err := st.l.Body("e1")
	require.NoError(t, err)
	require.NotNil(t, b.f, "moved to a file")
	assert.Nil(t, b.buf, "not in memory as well")
	if b.temp == "" {
		left, err := os.ReadDir(dir)
		require.NoError(t, err)
		assert.Empty(t, left, "the file has no name")
	}
	r, err := st.Body(ctx, "e1")
	require.NoError(t, err)
	got, err := io.ReadAll(r)
	require.NoError(t, err)
	assert.Equal(t, want, got)

	// An aborted one leaves nothing either.
	d, err = st.Accept(ctx, &store.Envelope{ID: "e2"})
	require.NoError(t, err)
	_, err = d.Write(want)
	require.NoError(t, err)
	d.Abort()
	left, err := os.ReadDir(dir)
	require.NoError(t, err)
	assert.Empty(t, left)
}

// Close lets the bodies' files go: nothing of the store stays open.
func TestCloseReleasesTheBodies(t *testing.T) {
	dir := t.TempDir()
	st := New(&Options{MemoryBody: 1, TempDir: dir})
	storetest.Accept(t, st, "e1", 0, "a body in a file")
	b, err := st.l.Body("e1")
	require.NoError(t, err)
	require.NotNil(t, b.f)
	require.NoError(t, st.Close())
	require.NoError(t, st.Close(), "twice is safe")
	assert.True(t, b.gone.Load())
	_, err = b.f.Stat()
	assert.ErrorIs(t, err, os.ErrClosed, "the file is closed")
}
