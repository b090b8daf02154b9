package pgstore

import (
	"context"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mxrelay/mxrelay/internal/store"
	"github.com/mxrelay/mxrelay/internal/store/storetest"
)

func TestOpenMigratesOnceAndRefusesANewerSchema(t *testing.T) {
	f := newFixture(t)
	// Processes starting together: one migrates, the others find it done.
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() { f.open(nil) })
	}
	wg.Wait()
	assert.Equal(t, SchemaVersion, f.count(`SELECT max(version) FROM {s}.schema_version`))
	assert.Equal(t, SchemaVersion, f.count(`SELECT count(*) FROM {s}.schema_version`), "each migration applied once")

	f.exec(`INSERT INTO {s}.schema_version (version) VALUES ($1)`, SchemaVersion+1)
	_, err := Open(context.Background(), f.admin, &Options{Schema: f.schema})
	require.Error(t, err, "a schema newer than the package")
}

func TestOpenRefusesBadOptions(t *testing.T) {
	f := newFixture(t)
	for _, o := range []Options{{Schema: "Upper"}, {Schema: "a;drop"}, {Schema: "1x"}, {ResultRetention: -1}} {
		_, err := Open(context.Background(), f.admin, &o)
		assert.Error(t, err, "%+v", o)
	}
}

// What Accept writes, in rows: nothing left after an Abort, and one row
// and one body for an idempotency key accepted twice. (The behaviour is
// the conformance suite's.)
func TestAcceptRows(t *testing.T) {
	f := newFixture(t)
	st := f.open(nil)
	ctx := context.Background()
	d, err := st.Accept(ctx, &store.Envelope{ID: "aborted"})
	require.NoError(t, err)
	_, err = d.Write([]byte("body"))
	require.NoError(t, err)
	d.Abort()
	assert.Zero(t, f.count(`SELECT count(*) FROM {s}.email`), "aborted: no row")
	assert.Zero(t, f.count(`SELECT count(*) FROM {s}.body`))

	storetest.AcceptEnv(t, st, &store.Envelope{ID: "e1", IdempotencyKey: "k"}, "first")
	d, err = st.Accept(ctx, &store.Envelope{ID: "e2", IdempotencyKey: "k"})
	require.NoError(t, err)
	_, err = d.Write([]byte("second"))
	require.NoError(t, err)
	_, err = d.Commit(ctx, nil)
	require.NoError(t, err)
	assert.Equal(t, 1, f.count(`SELECT count(*) FROM {s}.email`), "no second copy")
	assert.Equal(t, 1, f.count(`SELECT count(*) FROM {s}.body`))
}
