package pgstore

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mxrelay/mxrelay/internal/store"
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
	assert.Equal(t, 1, f.count(`SELECT count(*) FROM {s}.schema_version`), "migration 1 applied once")

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

func TestAcceptIsInvisibleUntilCommitted(t *testing.T) {
	f := newFixture(t)
	st := f.open(nil)
	ctx := context.Background()
	d, err := st.Accept(ctx, &store.Envelope{ID: "e1", To: []string{"b@example.com"}})
	require.NoError(t, err)
	_, err = d.Write([]byte("body"))
	require.NoError(t, err)
	assert.Empty(t, claim(t, st, "w1", 1), "not claimable before Commit")
	_, err = st.Result(ctx, "e1")
	assert.ErrorIs(t, err, store.ErrNotFound)
	d.Abort()
	d.Abort() // twice is safe
	assert.Empty(t, claim(t, st, "w1", 1), "aborted: never accepted")
	assert.Zero(t, f.count(`SELECT count(*) FROM {s}.body`))
}

func TestAcceptRefusesAnIDAlreadyKept(t *testing.T) {
	f := newFixture(t)
	st := f.open(nil)
	accept(t, st, "e1", 0, "x")
	_, err := st.Accept(context.Background(), &store.Envelope{ID: "e1"})
	require.ErrorIs(t, err, store.ErrDuplicateID)
}

func TestIdempotencyKeyReturnsTheFirstEmail(t *testing.T) {
	f := newFixture(t)
	st := f.open(nil)
	ctx := context.Background()
	first := acceptEnv(t, st, &store.Envelope{ID: "e1", IdempotencyKey: "k"}, "first")
	assert.False(t, first.Existing)

	d, err := st.Accept(ctx, &store.Envelope{ID: "e2", IdempotencyKey: "k"})
	require.NoError(t, err)
	got, ok := d.Existing()
	require.True(t, ok, "known before the body is written")
	assert.Equal(t, "e1", got.ID)
	_, err = d.Write([]byte("second"))
	require.NoError(t, err)
	a, err := d.Commit(ctx, nil)
	require.NoError(t, err)
	assert.Equal(t, store.Accepted{ID: "e1", Queued: first.Queued, Existing: true}, a)
	assert.Equal(t, 1, f.count(`SELECT count(*) FROM {s}.email`), "no second copy")
	assert.Equal(t, 1, f.count(`SELECT count(*) FROM {s}.body`))
}

// An Accept with the key of one in progress waits for it: the second
// gets the first email once it commits, or its own when the first aborts.
func TestIdempotencyKeyWaitsForTheAcceptInProgress(t *testing.T) {
	for _, commit := range []bool{true, false} {
		t.Run(fmt.Sprintf("first commits %v", commit), func(t *testing.T) {
			f := newFixture(t)
			st1, st2 := f.open(nil), f.open(nil)
			ctx := context.Background()
			d1, err := st1.Accept(ctx, &store.Envelope{ID: "e1", IdempotencyKey: "k"})
			require.NoError(t, err)
			_, err = d1.Write([]byte("first"))
			require.NoError(t, err)

			second := make(chan store.Accepted, 1)
			go func() {
				d2, err := st2.Accept(ctx, &store.Envelope{ID: "e2", IdempotencyKey: "k"})
				if !assert.NoError(t, err) {
					close(second)
					return
				}
				d2.Write([]byte("second"))
				a, err := d2.Commit(ctx, nil)
				assert.NoError(t, err)
				second <- a
			}()
			if commit {
				_, err = d1.Commit(ctx, nil)
				require.NoError(t, err)
			} else {
				d1.Abort()
			}
			var a store.Accepted
			select {
			case a = <-second:
			case <-time.After(bound):
				t.Fatal("the second Accept did not return")
			}
			if commit {
				assert.Equal(t, "e1", a.ID)
				assert.True(t, a.Existing)
			} else {
				assert.Equal(t, "e2", a.ID)
				assert.False(t, a.Existing)
			}
			assert.Equal(t, 1, f.count(`SELECT count(*) FROM {s}.email`))
		})
	}
}

// Processes racing with one key: exactly one email, and every one of
// them is told its ID.
func TestIdempotencyKeyRaceFromManyConnections(t *testing.T) {
	f := newFixture(t)
	const racers = 8
	stores := []*Store{f.open(nil), f.open(nil)}
	var wg sync.WaitGroup
	got := make([]store.Accepted, racers)
	start := make(chan struct{})
	for i := range racers {
		wg.Go(func() {
			<-start
			st := stores[i%2]
			d, err := st.Accept(context.Background(), &store.Envelope{ID: fmt.Sprintf("e%d", i), IdempotencyKey: "k"})
			if !assert.NoError(t, err) {
				return
			}
			d.Write([]byte("body"))
			a, err := d.Commit(context.Background(), nil)
			assert.NoError(t, err)
			got[i] = a
		})
	}
	close(start)
	wg.Wait()
	fresh := 0
	for _, a := range got {
		assert.Equal(t, got[0].ID, a.ID, "every racer has the one email")
		if !a.Existing {
			fresh++
		}
	}
	assert.Equal(t, 1, fresh, "one of them accepted it")
	assert.Equal(t, 1, f.count(`SELECT count(*) FROM {s}.email`))
}
