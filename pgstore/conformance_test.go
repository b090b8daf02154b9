package pgstore

import (
	"context"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/mxrelay/mxrelay/internal/store"
	"github.com/mxrelay/mxrelay/internal/store/storetest"
)

// backing is a schema of its own on the shared cluster; each Store it
// opens has a pool of its own, as a process of its own would. Time is
// moved in the rows: the store's clock is the server's.
type backing struct {
	f *fixture
}

func (b *backing) Open(t *testing.T) store.Store { return b.f.open(nil) }

func (b *backing) Expire(t *testing.T, id string) {
	b.f.exec(`UPDATE {s}.email SET lease_expires = now() - interval '1 second' WHERE id = $1 AND owner IS NOT NULL AND finished_at IS NULL`, id)
}

func (b *backing) Due(t *testing.T, id string) {
	require.EqualValues(t, 1, b.f.exec(`UPDATE {s}.email SET not_before = now() - interval '1 second' WHERE id = $1 AND finished_at IS NULL`, id))
}

func (b *backing) Outlive(t *testing.T, id string) {
	st := b.f.open(nil)
	require.EqualValues(t, 1, b.f.exec(`UPDATE {s}.email SET finished_at = finished_at - $2 * interval '1 microsecond' - interval '1 minute' WHERE id = $1 AND finished_at IS NOT NULL`,
		id, st.opts.ResultRetention.Microseconds()))
	n, err := st.Reap(context.Background())
	require.NoError(t, err)
	require.EqualValues(t, 1, n)
}

// TestConformance: pgstore passes the store seam's suite, as a store that
// processes share and that keeps everything across a restart.
func TestConformance(t *testing.T) {
	storetest.Run(t, storetest.Capabilities{Shared: true, Durable: true}, func(t *testing.T) storetest.Backing {
		return &backing{f: newFixture(t)}
	})
}

// Inspector is another Store on the schema: an operator's tool, as a
// process of its own.
func (b *backing) Inspector(t *testing.T) store.Inspector { return b.f.open(nil) }

// TestAdmin: pgstore passes the suite of the operator's side, every
// change made and read by stores of their own, as processes would.
func TestAdmin(t *testing.T) {
	storetest.RunAdmin(t, storetest.AdminCapabilities{Capabilities: storetest.Capabilities{Shared: true, Durable: true}, Claims: true},
		func(t *testing.T) storetest.AdminBacking { return &backing{f: newFixture(t)} })
}
