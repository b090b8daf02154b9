package mxrelay

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mxrelay/mxrelay/internal/pgtest"
	"github.com/mxrelay/mxrelay/internal/store"
	"github.com/mxrelay/mxrelay/pgstore"
	"github.com/mxrelay/mxrelay/relaytest"
)

// countingStore counts the Ending calls and the tokens in each.
type countingStore struct {
	store.Store
	mu    sync.Mutex
	calls []int
}

func (s *countingStore) Ending(ctx context.Context, toks []store.Token) ([]error, error) {
	s.mu.Lock()
	s.calls = append(s.calls, len(toks))
	s.mu.Unlock()
	return s.Store.Ending(ctx, toks)
}

// TestEndingIsOneCallPerWindow: the ends of data of a pipelined window
// are recorded in one call to the store, not one per email, so that a
// remote store costs a round trip per window; each email still has its
// record.
func TestEndingIsOneCallPerWindow(t *testing.T) {
	cs := &countingStore{}
	testHookStore = func(st store.Store) store.Store { cs.Store = st; return cs }
	defer func() { testHookStore = nil }()
	relay := relaytest.NewServer(nil)
	defer relay.Close()
	// All 40 wait when the session starts: BatchWait holds it back until
	// MaxEmailsPerSession are queued.
	c, err := New(relay.URL, relay.APIKey, &Options{MaxEmailsPerSession: 40, BatchWait: time.Hour})
	require.NoError(t, err)
	defer c.Close(context.Background())
	var hs []*Handle
	for i := range 40 {
		h, err := c.Enqueue(spoolTestEmail(fmt.Sprint("w", i)))
		require.NoError(t, err)
		hs = append(hs, h)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	for _, h := range hs {
		_, err := h.Wait(ctx)
		require.NoError(t, err)
	}
	cs.mu.Lock()
	defer cs.mu.Unlock()
	total := 0
	for _, n := range cs.calls {
		total += n
	}
	assert.Equal(t, 40, total, "a record per email")
	assert.GreaterOrEqual(t, cs.calls[0], 32, "the first window (at least 32) in the first call: %v", cs.calls)
	assert.Less(t, len(cs.calls), 40/4, "calls: %v", cs.calls)
}

// TestTwoEmailsOfOneID: Email.ID need not be unique, as before the seam;
// the store's IDs are, so the second one is kept under an ID of its own,
// and both go, each with its own Result under the ID given.
func TestTwoEmailsOfOneID(t *testing.T) {
	relay := relaytest.NewServer(nil)
	defer relay.Close()
	c, err := New(relay.URL, relay.APIKey, &Options{MaxEmailsPerSession: 2, BatchWait: time.Hour})
	require.NoError(t, err)
	defer c.Close(context.Background())
	var hs []*Handle
	for _, sub := range []string{"first", "second"} {
		e := spoolTestEmail(sub)
		e.ID = "same"
		h, err := c.Enqueue(e)
		require.NoError(t, err)
		hs = append(hs, h)
	}
	assert.NotEqual(t, hs[0].em.sid, hs[1].em.sid, "two emails under one ID in the store")
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	for _, h := range hs {
		res, err := h.Wait(ctx)
		require.NoError(t, err)
		assert.Equal(t, "same", res.EmailID)
	}
	assert.Len(t, relay.Mailbox(), 2)
}

// fencingStore refuses every Ending as fenced: another claim took the
// emails over.
type fencingStore struct{ store.Store }

func (fencingStore) Ending(_ context.Context, toks []store.Token) ([]error, error) {
	errs := make([]error, len(toks))
	for i, tok := range toks {
		errs[i] = &store.FencedError{Token: tok, Attempt: tok.Attempt + 1, Owner: "another"}
	}
	return errs, nil
}

// An email whose Ending the store refuses as fenced is another claim's:
// the session writes no end of data for it (pipelined or lock-step), and
// the Client gives it no result; its Handle follows the store, and Close
// hands it back.
func TestFencedEndingWritesNoEndOfData(t *testing.T) {
	for _, lockstep := range []bool{false, true} {
		t.Run(fmt.Sprint("lock-step ", lockstep), func(t *testing.T) {
			testHookStore = func(st store.Store) store.Store { return fencingStore{st} }
			fenced := make(chan string, 3)
			testHookFenced = func(id string) { fenced <- id }
			defer func() { testHookStore, testHookFenced = nil, nil }()
			relay := relaytest.NewServer(nil)
			defer relay.Close()
			var mu sync.Mutex
			var results []*Result
			c, err := New(relay.URL, relay.APIKey, &Options{MaxEmailsPerSession: 3, BatchWait: time.Hour, DisablePipelining: lockstep,
				OnEvent: func(e Event) {
					if e.Result != nil {
						mu.Lock()
						results = append(results, e.Result)
						mu.Unlock()
					}
				}})
			require.NoError(t, err)
			var hs []*Handle
			for i := range 3 {
				h, err := c.Enqueue(spoolTestEmail(fmt.Sprint("fenced", i)))
				require.NoError(t, err)
				hs = append(hs, h)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			for range hs {
				select {
				case <-fenced:
				case <-ctx.Done():
					t.Fatal("the emails were not fenced")
				}
			}
			require.NoError(t, c.Close(ctx))
			assert.Equal(t, int64(3), c.Stats().EmailsReleased)
			assert.Empty(t, relay.Mailbox(), "an end of data for an email fenced")
			mu.Lock()
			assert.Empty(t, results, "a result for an email fenced")
			mu.Unlock()
			st := c.Stats()
			assert.Zero(t, st.EmailsDelivered+st.EmailsFailed)
			for _, h := range hs {
				res, err := h.Wait(ctx)
				require.ErrorIs(t, err, ErrClosed)
				assert.Equal(t, OutcomeHandedBack, res.Outcome)
			}
		})
	}
}

// claimCounter counts the Claim calls.
type claimCounter struct {
	store.Store
	n atomic.Int32
}

func (s *claimCounter) Claim(ctx context.Context, owner string, n int, lease time.Duration) ([]*store.Claimed, time.Time, error) {
	s.n.Add(1)
	return s.Store.Claim(ctx, owner, n, lease)
}

// A Client on a shared store whose only email another process holds
// claims it once that lease runs out, when the store's Claim said: it
// does not poll the store meanwhile. A few claims in all: its first
// look, the one at the lease's end, and those of its own sending.
func TestSharedStoreClaimsWithoutPolling(t *testing.T) {
	sch := pgtest.Shared(t).Schema(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	open := func() *pgstore.Store {
		st, err := pgstore.Open(ctx, pgtest.Pool(t, sch.Conn), &pgstore.Options{Schema: sch.Name, PollInterval: time.Hour})
		require.NoError(t, err)
		t.Cleanup(func() { st.Close() })
		return st
	}
	other := open()
	d, err := other.Accept(ctx, &store.Envelope{ID: "held", From: "a@example.com", To: []string{"b@example.com"}})
	require.NoError(t, err)
	_, err = d.Write([]byte("Subject: held\r\n\r\n.\r\n"))
	require.NoError(t, err)
	_, err = d.Commit(ctx, nil)
	require.NoError(t, err)
	_, _, err = other.Claim(ctx, "another", 1, time.Second)
	require.NoError(t, err)

	cc := &claimCounter{}
	testHookStore = func(st store.Store) store.Store { cc.Store = st; return cc }
	defer func() { testHookStore = nil }()
	relay := relaytest.NewServer(nil)
	defer relay.Close()
	delivered := make(chan struct{})
	c, err := New(relay.URL, relay.APIKey, &Options{Store: open(), OnEvent: func(e Event) {
		if e.Type == EventEmailProcessed {
			close(delivered)
		}
	}})
	require.NoError(t, err)
	select {
	case <-delivered:
	case <-ctx.Done():
		t.Fatal("the email was not taken over")
	}
	require.NoError(t, c.Close(ctx))
	assert.LessOrEqual(t, cc.n.Load(), int32(5), "claims")
	t.Logf("%d claims", cc.n.Load())
}
