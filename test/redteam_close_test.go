package test

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

// Three concurrent sessions, a spool, a slow honest server (each reply
// 15 ms late), twelve emails, and Close(ctx) given a context that ends
// after d, for d across the whole run. Then a second Client on the same
// spool sends what was handed back. For every email over both clients:
// exactly one result per Client that had it; the server holds it zero
// times if every result says failed without MaybeDelivered, once if one
// says delivered without MaybeDelivered; more than once only with
// MaybeDelivered. Held.
func TestRedTeam2CloseWithConcurrentSessionsAndSpool(t *testing.T) {
	for _, m := range fakesmtp.EngineModes {
		for _, d := range []time.Duration{0, 10 * time.Millisecond, 40 * time.Millisecond, 90 * time.Millisecond, 160 * time.Millisecond, 300 * time.Millisecond} {
			rtRun(t, fmt.Sprint(m.Name, "/", d), func(t *testing.T) {
				srv := &rt2Server{ext: m.Ext, enhanced: true}
				srv.hook = func(c rt2Cmd) ([]string, bool) {
					l := []string{"~15ms", srv.honest(c.verb)}
					if c.verb == "END" {
						l = append(l, "KEEP")
					}
					return l, true
				}
				s := rtRelay(t, srv.serve)
				dir := t.TempDir()
				c1, err := mxrelay.New(s.URL, s.APIKey, testkit.ClientOptions(s, &mxrelay.Options{SpoolDir: dir, MaxConcurrentSessions: 3,
					MaxEmailsPerSession: 3, BatchWait: 5 * time.Millisecond, CommandTimeout: 2 * time.Second}))
				require.NoError(t, err)
				subs := rtNumbered("m", 12)
				hs := rtEnqueue(t, c1, subs, rtMailTo("a@example.com", "b@example.com"), mxrelay.WithRetries(2))
				time.Sleep(d) // on the bubble's clock: Close comes d into the run
				ctx, cancel := context.WithTimeout(context.Background(), time.Millisecond)
				defer cancel()
				start := time.Now()
				_ = c1.Close(ctx)
				assert.Less(t, time.Since(start), 3*time.Second, "Close waited past its context")

				type fate struct {
					delivered, failed, maybe, handedBack bool
					line                                 string
				}
				fates := map[string]*fate{}
				byID := map[string]string{}
				for i, h := range hs {
					select {
					case <-h.Done():
					default:
						t.Fatalf("email %s has no result after Close returned", subs[i])
					}
					res, err := h.Wait(context.Background())
					f := &fate{maybe: res.MaybeDelivered, line: fmt.Sprintf("c1: err=%v maybe=%v attempts=%d", err, res.MaybeDelivered, res.Attempts)}
					switch {
					case err == nil:
						f.delivered = true
					case errors.Is(err, mxrelay.ErrSpooled):
						f.handedBack = true
					default:
						f.failed = true
					}
					fates[subs[i]] = f
					byID[res.EmailID] = subs[i]
				}
				c2 := testkit.NewClient(t, s, &mxrelay.Options{SpoolDir: dir})
				second := map[string]*mxrelay.Result{}
				for _, h := range c2.Recovered() {
					res, _ := h.Wait(testkit.Ctx(t))
					require.NotNil(t, res)
					subj, ok := byID[res.EmailID]
					if !assert.True(t, ok, "recovered email %s was not one of c1's", res.EmailID) {
						continue
					}
					assert.True(t, fates[subj].handedBack, "email %s recovered though c1 gave it a final result", subj)
					second[subj] = res
				}
				require.NoError(t, c2.Close(testkit.Ctx(t)))
				for _, subj := range subs {
					f := fates[subj]
					kept := srv.keptN(subj)
					t.Logf("email %s: %s; server kept %d", subj, f.line, kept)
					switch {
					case f.delivered && !f.maybe:
						assert.Equal(t, 1, kept, "email %s delivered, not maybe, kept %d", subj, kept)
					case f.failed && !f.maybe:
						assert.Zero(t, kept, "email %s failed, not maybe, kept %d", subj, kept)
					case f.handedBack:
						r := second[subj]
						if !assert.NotNil(t, r, "email %s handed back and not recovered", subj) {
							continue
						}
						t.Logf("email %s: c2: err=%v maybe=%v", subj, r.Err, r.MaybeDelivered)
						switch {
						case r.Err == nil && !r.MaybeDelivered && !f.maybe:
							assert.Equal(t, 1, kept, "email %s handed back then delivered, not maybe, kept %d", subj, kept)
						case r.Err != nil && !r.MaybeDelivered && !f.maybe:
							assert.Zero(t, kept, "email %s handed back then failed, not maybe, kept %d", subj, kept)
						}
					}
				}
				var handedBack int
				for _, f := range fates {
					if f.handedBack {
						handedBack++
					}
				}
				assert.Len(t, c2.Recovered(), handedBack, "the next Client recovers exactly the emails handed back")
			})
		}
	}
}

// Close during a confirmation wait: every end of data answered 250 (kept),
// the server hangs on QUIT, whose 221 would confirm the last email. Close
// gets a short context. With SpoolDir and RetryUnknown the last email may
// be handed back and sent again by the next Client: it must then say
// MaybeDelivered (the server holds two copies). Held (with RetryUnknown
// the last email is sent again and says MaybeDelivered, kept twice).
func TestRedTeam2CloseWhileWaitingForQuitConfirmation(t *testing.T) {
	for _, m := range fakesmtp.EngineModes {
		for _, retryUnknown := range []bool{false, true} {
			t.Run(fmt.Sprint(m.Name, "/RetryUnknown=", retryUnknown), func(t *testing.T) {
				t.Parallel()
				srv := &rt2Server{ext: m.Ext, enhanced: true}
				quitSeen := make(chan struct{}, 4)
				srv.hook = func(c rt2Cmd) ([]string, bool) {
					if c.conn == 1 && c.verb == "QUIT" {
						quitSeen <- struct{}{}
						return []string{"HANG"}, true
					}
					return nil, false
				}
				s := rtRelay(t, srv.serve)
				dir := t.TempDir()
				c1, err := mxrelay.New(s.URL, s.APIKey, testkit.Fast(&mxrelay.Options{SpoolDir: dir, RetryUnknown: retryUnknown,
					MaxEmailsPerSession: 3, BatchWait: 100 * time.Millisecond, CommandTimeout: 5 * time.Second}))
				require.NoError(t, err)
				hs := rtEnqueue(t, c1, rt2Subjects, rtMailTo(), mxrelay.WithRetries(2))
				select {
				case <-quitSeen:
				case <-time.After(10 * time.Second):
					t.Fatal("no QUIT")
				}
				ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
				defer cancel()
				start := time.Now()
				_ = c1.Close(ctx)
				assert.Less(t, time.Since(start), 3*time.Second, "Close waited past its context")
				byID := map[string]string{}
				first := map[string]*mxrelay.Result{}
				for i, h := range hs {
					res, err := h.Wait(context.Background())
					t.Logf("c1 email %s: err=%v maybe=%v", rt2Subjects[i], err, res.MaybeDelivered)
					byID[res.EmailID] = rt2Subjects[i]
					first[rt2Subjects[i]] = res
				}
				c2 := testkit.NewClient(t, s, &mxrelay.Options{SpoolDir: dir, RetryUnknown: retryUnknown})
				second := map[string]*mxrelay.Result{}
				for _, h := range c2.Recovered() {
					res, err := h.Wait(testkit.Ctx(t))
					t.Logf("c2 email %s: err=%v maybe=%v", byID[res.EmailID], err, res.MaybeDelivered)
					second[byID[res.EmailID]] = res
				}
				require.NoError(t, c2.Close(testkit.Ctx(t)))
				for _, subj := range rt2Subjects {
					kept := srv.keptN(subj)
					r := first[subj]
					if r2 := second[subj]; r2 != nil {
						r = r2
					}
					t.Logf("email %s: final err=%v maybe=%v; server kept %d", subj, r.Err, r.MaybeDelivered, kept)
					if !r.MaybeDelivered && !first[subj].MaybeDelivered {
						if r.Err == nil {
							assert.Equal(t, 1, kept, "email %s delivered, not maybe, kept %d", subj, kept)
						} else {
							assert.Zero(t, kept, "email %s failed, not maybe, kept %d", subj, kept)
						}
					}
					if kept > 1 {
						assert.True(t, r.MaybeDelivered, "email %s kept %d times, the last Result does not say MaybeDelivered", subj, kept)
					}
				}
			})
		}
	}
}
