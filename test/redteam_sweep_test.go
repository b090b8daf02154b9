package test

import (
	"fmt"
	"testing"
	"time"

	"github.com/mxrelay/mxrelay"
	"github.com/mxrelay/mxrelay/internal/fakesmtp"
)

// rt2Run sends three emails (to a@ and b@) through srv in one session, and
// checks each against what the server kept. It returns the violations.
func rt2Run(t *testing.T, srv *rt2Server, o *mxrelay.Options) []string {
	t.Helper()
	var bad []string
	rtSession(t, srv, o, 400*time.Millisecond, rtMailTo("a@example.com", "b@example.com"), 2, func(out rt3Outcome, res *mxrelay.Result) {
		line := fmt.Sprintf("email %s: err=%v maybe=%v reply=%q attempts=%d rejected=%v; server kept %d", out.subj, out.err, out.maybe, res.Reply.Message, res.Attempts, res.Rejected, out.kept)
		t.Log(line)
		if b := out.broken(line); b != "" {
			bad = append(bad, b)
		}
	})
	return bad
}

// rt2Sweep runs script(k) at each command position k of the first
// connection, in each engine mode, and reports every violation.
func rt2Sweep(t *testing.T, positions int, mk func(m string, ext []string, k int) *rt2Server) {
	for _, m := range fakesmtp.EngineModes {
		t.Run(m.Name, func(t *testing.T) {
			for k := 1; k <= positions; k++ {
				t.Run(fmt.Sprint("at ", k), func(t *testing.T) {
					t.Parallel()
					for _, b := range rt2Run(t, mk(m.Name, m.Ext, k), nil) {
						t.Errorf("%s at command %d: %s", m.Name, k, b)
					}
				})
			}
		})
	}
}

// A 421 (then the server closes) in place of the reply to command k of
// the first connection, at every k: three emails, the server keeping
// every end of data it answered 250 before. Held.
func TestRedTeam2_421AtEveryPosition(t *testing.T) {
	rt2Sweep(t, 18, func(_ string, ext []string, k int) *rt2Server {
		return &rt2Server{ext: ext, enhanced: true, hook: func(c rt2Cmd) ([]string, bool) {
			if c.conn == 1 && c.n == k {
				return []string{"421 4.3.2 shutting down", "CUT"}, true
			}
			return nil, false
		}}
	})
}

// rt2RefusingB is an honest server, with enhanced codes, that refuses
// b@ of email two 550 5.1.1 on every connection, and whose lines for
// command k of the first connection are edit's of them. Each end of data
// is kept.
func rt2RefusingB(ext []string, k int, edit func(lines []string) []string) *rt2Server {
	srv := &rt2Server{ext: ext, enhanced: true}
	srv.hook = func(c rt2Cmd) ([]string, bool) {
		lines := []string{srv.honest(c.verb)}
		if c.verb == "RCPT" && c.tx == 2 && c.rcpt == 1 {
			lines = []string{"550 5.1.1 no such user"}
		}
		if c.conn == 1 && c.n == k {
			lines = edit(lines)
		}
		if c.verb == "END" {
			lines = append(lines, "KEEP")
		}
		return lines, true
	}
	return srv
}

// One stray "250 2.0.0 ok" written after the reply to command k, at every
// k, with enhanced codes; b@ of email two is refused 550 5.1.1 on every
// connection. BROKEN in pipelined BDAT at k = 1..7 (every stray before
// email two's refusal): email two is reported failed 550 (MaybeDelivered
// false) though the server kept it. The shift moves b@'s 550 5.1.1 onto
// the end of data (a refusal is trusted without an address-status check),
// and email three's RSET, taking the real "250 2.0.0 queued", confirms it.
// At k = 1..3 email one's end of data even took "250 2.1.5" (an address
// status: the client makes email one unknown) and yet the stream is not
// marked shifted, so what follows stays trusted. The other modes held.
func TestRedTeam2StrayLineAtEveryPosition(t *testing.T) {
	rt2Sweep(t, 18, func(_ string, ext []string, k int) *rt2Server {
		return rt2RefusingB(ext, k, func(lines []string) []string { return append(lines, "250 2.0.0 ok") })
	})
}

// The reply to command k of the first connection lost (a relay that drops
// a frame), at every k; b@ of email two is refused 550 5.1.1. Held (every
// email whose reply was lost or shifted ends unknown), though under the
// shift email two's Rejected names a@ for b@'s 550.
func TestRedTeam2LostReplyAtEveryPosition(t *testing.T) {
	rt2Sweep(t, 18, func(_ string, ext []string, k int) *rt2Server {
		return rt2RefusingB(ext, k, func([]string) []string { return nil })
	})
}
