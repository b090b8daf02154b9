package spool

import (
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/mxrelay/mxrelay/internal/store"
	"github.com/mxrelay/mxrelay/internal/store/storetest"
)

// backing is a directory of the test's own, opened with opts.
func backing(t *testing.T, opts *Options) storetest.Backing { return backingIn(t, t.TempDir(), opts) }

// backingIn is dir, opened with opts.
func backingIn(t *testing.T, dir string, opts *Options) storetest.Backing {
	return storetest.Local(func(t *testing.T) (store.Store, storetest.Clock) {
		st, err := Open(dir, opts)
		require.NoError(t, err)
		t.Cleanup(func() { st.Close() })
		return st, st.l
	})
}

// TestConformance: the spool passes the store seam's suite, as a store
// of one process that keeps everything across a reopen (a Close without
// handing anything back, then Open: what a restart after a crash finds).
func TestConformance(t *testing.T) {
	storetest.Run(t, storetest.Capabilities{Durable: true}, func(t *testing.T) storetest.Backing {
		return backing(t, nil)
	})
}

// With SyncAll, and with a journal compacted at every result.
func TestConformanceSyncAllCompacting(t *testing.T) {
	defer func(n int64) { maxJournal = n }(maxJournal)
	maxJournal = 0
	storetest.Run(t, storetest.Capabilities{Durable: true}, func(t *testing.T) storetest.Backing {
		return backing(t, &Options{SyncAll: true})
	})
}

// adminBacking is backing's, read by a Reader of its directory.
type adminBacking struct {
	storetest.Backing
	dir string
}

func (b *adminBacking) Inspector(t *testing.T) store.Inspector {
	r, err := NewReader(b.dir)
	require.NoError(t, err)
	return r
}

// TestAdmin: the spool passes the suite of the operator's side, read by
// a Reader while the Store holds the directory, as mxrelay-queue reads it
// while a Client runs.
func TestAdmin(t *testing.T) {
	storetest.RunAdmin(t, storetest.AdminCapabilities{Capabilities: storetest.Capabilities{Durable: true}},
		func(t *testing.T) storetest.AdminBacking {
			dir := t.TempDir()
			return &adminBacking{Backing: backingIn(t, dir, nil), dir: dir}
		})
}
