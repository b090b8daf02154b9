package pgstore

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mxrelay/mxrelay/internal/store"
	"github.com/mxrelay/mxrelay/internal/store/storetest"
)

// A body is stored in rows of chunkSize bytes, the last one shorter, none
// for an empty body, and they go with the result, as the meta does.
// (Round trips, reads of a body removed meanwhile and a 100 MiB body in
// bounded memory are the conformance suite's.)
func TestBodyIsStoredInChunks(t *testing.T) {
	f := newFixture(t)
	st := f.open(nil)
	ctx := context.Background()
	sizes := []int{0, 1, chunkSize - 1, chunkSize, chunkSize + 1, 3*chunkSize + 5}
	for _, size := range sizes {
		id := fmt.Sprintf("e%d", size)
		storetest.Accept(t, st, id, 0, strings.Repeat("x", size))
		assert.Equal(t, (size+chunkSize-1)/chunkSize, f.count(`SELECT count(*) FROM {s}.body WHERE id = $1`, id), "%d bytes", size)
	}
	for _, c := range storetest.Claim(t, st, "w1", len(sizes)) {
		require.NoError(t, st.Finish(ctx, c.Token, &store.Result{ID: c.ID, Delivered: true}))
	}
	assert.Zero(t, f.count(`SELECT count(*) FROM {s}.body`), "removed with the results")
	assert.Zero(t, f.count(`SELECT count(*) FROM {s}.email WHERE meta IS NOT NULL`), "nothing but the results is kept")
}
