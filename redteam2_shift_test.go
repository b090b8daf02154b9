package mxrelay_test

import (
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mxrelay/mxrelay"
	"github.com/mxrelay/mxrelay/internal/fakesmtp"
	"github.com/mxrelay/mxrelay/internal/testkit"
)

// rt2Check asserts the promises for one email against what the server
// kept: delivered (MaybeDelivered false) means kept exactly once; failed
// with MaybeDelivered false means kept zero times.
func rt2Check(t *testing.T, name string, res *mxrelay.Result, err error, kept int) {
	t.Helper()
	t.Logf("email %s: err=%v maybe=%v reply=%+v attempts=%d rejected=%v; server kept %d", name, err, res.MaybeDelivered, res.Reply, res.Attempts, res.Rejected, kept)
	switch {
	case err == nil && !res.MaybeDelivered:
		assert.Equal(t, 1, kept, "email %s reported delivered once (MaybeDelivered false), the server kept %d copies", name, kept)
	case err != nil && !res.MaybeDelivered:
		assert.Zero(t, kept, "email %s reported failed (MaybeDelivered false), the server kept %d copies", name, kept)
	}
}

// One stray line, WITH enhanced status codes, in pipelined BDAT: the README
// says "That catches one stray or lost line when the server uses enhanced
// status codes". It does not when a recipient is refused.
//
// Email one has two recipients; the server accepts a@ and refuses b@
// (5xx or 4xx), keeps the message for a@ and answers its BDAT LAST
// "250 2.0.0 queued". It writes one stray "250 2.0.0 ok" after its reply
// to MAIL. Shifted by one: RCPT a@ takes the stray 250 2.0.0, RCPT b@
// takes a@'s 250 2.1.5, BDAT LAST takes b@'s
// refusal (5.1.1 / 4.2.2: no address-status check is made on a refusal of
// the end of data), and email two's RSET takes the real "250 2.0.0
// queued": in step, so email one's refusal is CONFIRMED.
//
// 5xx: email one is reported failed, MaybeDelivered false; the server kept it.
// 4xx: email one is retried as never sent and reported delivered with
// MaybeDelivered false; the server kept two copies (a silent duplicate).
// BROKEN in pipelined BDAT (both); the other three modes held.
func TestRedTeam2StrayLineMovesRcptRefusalOntoEnd(t *testing.T) {
	for _, refusal := range []string{"550 5.1.1 no such user", "452 4.2.2 mailbox full"} {
		for _, m := range fakesmtp.EngineModes {
			t.Run(refusal[:3]+"/"+m.Name, func(t *testing.T) {
				srv := &rtServer{ext: m.Ext, enhanced: true}
				var mu sync.Mutex
				rcpts := map[int]int{}
				srv.hook = func(conn, tx int, verb, subject string) ([]string, bool) {
					mu.Lock()
					defer mu.Unlock()
					switch verb {
					case "MAIL":
						if conn == 1 && tx == 1 {
							return []string{"250 2.1.0 sender ok", "250 2.0.0 ok"}, true
						}
					case "RCPT":
						rcpts[conn*100+tx]++
						if rcpts[conn*100+tx] == 2 && conn == 1 {
							return []string{refusal}, true
						}
					}
					return nil, false
				}
				s := rtRelay(t, srv.serve)
				c := testkit.NewClient(t, s, &mxrelay.Options{MaxEmailsPerSession: 2, BatchWait: 200 * time.Millisecond, CommandTimeout: time.Second})
				hs := rtEnqueue(t, c, []string{"one", "two"}, rtMailTo("a@example.com", "b@example.com"), mxrelay.WithRetries(3))
				for i, h := range hs {
					res, err := h.Wait(testkit.Ctx(t))
					require.NotNil(t, res)
					subj := []string{"one", "two"}[i]
					rt2Check(t, subj, res, err, srv.keptN(subj))
				}
			})
		}
	}
}
