package mxrelay_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mxrelay/mxrelay"
	"github.com/mxrelay/mxrelay/internal/fakesmtp"
	"github.com/mxrelay/mxrelay/internal/testkit"
)

// Close(ctx) with a short context while a pipelined window is in flight,
// the server having kept each message and not answered any end of data.
// With SpoolDir and RetryUnknown, each email comes back handed back or
// failed, once; a next Client that resends it must say MaybeDelivered
// (the server holds two copies). Without RetryUnknown, the emails fail as
// unknown. Held at the time of writing: kept as coverage.
func TestRedTeamCloseMidWindowWithSpool(t *testing.T) {
	for _, mode := range fakesmtp.EngineModes[:2] { // the pipelined ones: several ends in flight
		for _, retryUnknown := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/RetryUnknown=%v", mode.Name, retryUnknown), func(t *testing.T) {
				srv := &rtServer{ext: mode.Ext, enhanced: true}
				ended := make(chan string, 16)
				var mu sync.Mutex
				stalled := false
				srv.hook = func(conn, tx int, verb, subject string) ([]string, bool) {
					mu.Lock()
					defer mu.Unlock()
					if conn != 1 {
						return nil, false
					}
					if verb == "END" {
						ended <- subject
						stalled = true // nothing is answered from here on
						return []string{"KEEP"}, true
					}
					if stalled {
						return []string{}, true
					}
					return nil, false
				}
				s := rtRelay(t, srv.serve)
				dir := t.TempDir()
				c1, err := mxrelay.New(s.URL, s.APIKey, testkit.Fast(&mxrelay.Options{SpoolDir: dir, RetryUnknown: retryUnknown,
					MaxEmailsPerSession: 4, BatchWait: 200 * time.Millisecond, CommandTimeout: time.Minute}))
				require.NoError(t, err)
				subjects := []string{"a", "b", "c", "d"}
				hs := rtEnqueue(t, c1, subjects, rtMailTo(), mxrelay.WithRetries(2))
				// Pipelined DATA has one end of data in flight at a time: wait
				// for the first only.
				want := 1
				if mode.Name == "pipelined BDAT" {
					want = 4
				}
				for range want {
					select {
					case <-ended:
					case <-time.After(10 * time.Second):
						t.Fatal("ends of data never reached the server")
					}
				}
				ctx, cancel := context.WithTimeout(context.Background(), 150*time.Millisecond)
				defer cancel()
				start := time.Now()
				c1.Close(ctx)
				require.Less(t, time.Since(start), 5*time.Second, "Close waited past its context")

				handedBack := map[string]bool{}
				for i, h := range hs {
					res, err := h.Wait(testkit.Ctx(t))
					require.NotNil(t, res)
					subj := subjects[i]
					t.Logf("%s: err=%v maybe=%v attempts=%d kept=%d", subj, err, res.MaybeDelivered, res.Attempts, srv.keptN(subj))
					switch {
					case err == nil:
						assert.GreaterOrEqual(t, srv.keptN(subj), 1)
					case errors.Is(err, mxrelay.ErrSpooled):
						require.ErrorIs(t, err, mxrelay.ErrClosed)
						handedBack[subj] = true
					default:
						if srv.keptN(subj) > 0 {
							assert.True(t, res.MaybeDelivered, "%s failed without MaybeDelivered, but the server has it", subj)
						}
					}
				}
				// The next Client: every email handed back is sent again;
				// if the server already has it, the Result says so.
				c2 := testkit.NewClient(t, s, &mxrelay.Options{SpoolDir: dir, RetryUnknown: retryUnknown})
				got := map[string]bool{}
				for _, h := range c2.Recovered() {
					res, err := h.Wait(testkit.Ctx(t))
					require.NotNil(t, res)
					got[res.EmailID] = true
					t.Logf("recovered %s: err=%v maybe=%v attempts=%d", res.EmailID, err, res.MaybeDelivered, res.Attempts)
				}
				assert.Equal(t, len(handedBack), len(c2.Recovered()), "every email handed back is recovered, no other")
				// A silent duplicate: the server holds two copies and no
				// Result (either Client's) said MaybeDelivered.
				for _, sj := range subjects {
					if srv.keptN(sj) > 1 {
						maybe := false
						for _, h := range append(hs, c2.Recovered()...) {
							if r, _ := h.Wait(testkit.Ctx(t)); r != nil && r.MaybeDelivered {
								maybe = true
							}
						}
						assert.True(t, maybe, "%s: two copies upstream, no Result says MaybeDelivered", sj)
					}
				}
			})
		}
	}
}
