package test

import (
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mxrelay/mxrelay"
	"github.com/mxrelay/mxrelay/internal/fakesmtp"
	"github.com/mxrelay/mxrelay/internal/testkit"
)

// The guarantee (README, Guarantees): delivered only on a 2xx "that can
// only be the answer to it ... so that one stray line cannot shift the
// answers". A 421 is, however, a reply a server may give to ANY command,
// the end of data included (RFC 5321 §3.8), and the engine counts a 421 to
// a strict command (RSET, NOOP, QUIT) as "in step": it confirms the 2xx
// before it.
//
// Scenario: the server (or a relay that repeats a line) writes one stray
// "250 2.0.0 ok" before its real answer to the end of data, which is
// "421 4.3.2 shutting down": the message is not kept. The client, with the
// next transaction's RSET (or QUIT) in flight, takes the stray 250 for the
// end of data and the 421 for the RSET, "in step": email 1 is reported
// delivered, with MaybeDelivered false, and is never sent again. The truth:
// the server holds zero copies. One stray line, no enhanced code check
// can help (2.0.0 is no address status).
func TestRedTeamStrayLineThen421ConfirmsAFalseDelivery(t *testing.T) {
	for _, m := range fakesmtp.EngineModes {
		t.Run(m.Name, func(t *testing.T) {
			srv := &rtServer{ext: m.Ext, enhanced: true}
			held := false
			srv.hook = firstConn(func(tx int, verb string) ([]string, bool) {
				switch {
				case verb == "END" && tx == 1:
					held = true // answered below, once the next command is in
					return []string{}, true
				case held && (verb == "RSET" || verb == "MAIL" || verb == "NOOP"):
					// One stray line, then the real answer to the end of
					// data: 421, nothing kept.
					return []string{"250 2.0.0 ok", "421 4.3.2 shutting down", "CUT"}, true
				}
				return nil, false
			})
			s := rtRelay(t, srv.serve)
			c := testkit.NewClient(t, s, &mxrelay.Options{MaxEmailsPerSession: 2, BatchWait: 200 * time.Millisecond})
			hs := rtEnqueue(t, c, []string{"one", "two"}, rtMailTo(), mxrelay.WithRetries(3))
			res, err := hs[0].Wait(testkit.Ctx(t))
			require.NotNil(t, res)
			t.Logf("email 1: err=%v maybe=%v attempts=%d; server kept %d, ends %d", err, res.MaybeDelivered, res.Attempts, srv.keptN("one"), srv.endsN("one"))
			if err == nil && !res.MaybeDelivered {
				assert.Equal(t, 1, srv.keptN("one"),
					"email 1 reported delivered (MaybeDelivered false, reply %+v) but the server kept %d copies", res.Reply, srv.keptN("one"))
			}
			_, _ = hs[1].Wait(testkit.Ctx(t))
		})
	}
}

// The same shift with no 421: three stray lines, a repeat of a
// transaction's RSET/MAIL/RCPT replies (a pipelining server writes those
// in one write; a relay that forwards a frame twice repeats all three).
// Enhanced codes are on, so the address-status check (X.1.X) is in play.
//
// Windowed BDAT, three emails. The stream is shifted by three at email 2's
// end of data: BDAT LAST takes the repeated RSET reply "250 2.0.0 ok" (no
// address status), and email 3's RSET takes the repeated MAIL reply "250
// 2.1.0 sender ok", which the engine takes as in step (it checks the code
// only, not that an RSET's answer carries no address status). Email 2 is
// reported delivered; the server refused it (554) and kept nothing.
func TestRedTeamRepeatedFrameConfirmsAFalseDelivery(t *testing.T) {
	srv := &rtServer{ext: []string{"PIPELINING", "CHUNKING"}, enhanced: true}
	repeated := false
	srv.hook = firstConn(func(tx int, verb string) ([]string, bool) {
		switch {
		case tx == 2 && verb == "END":
			// The repeated frame (RSET, MAIL, RCPT of email 2), then the
			// real answer: refused.
			lines := []string{"250 2.0.0 ok", "250 2.1.0 sender ok", "250 2.1.5 recipient ok"}
			if repeated {
				lines = nil
			}
			repeated = true
			return append(lines, "554 5.7.1 message refused by content filter"), true
		}
		return nil, false
	})
	s := rtRelay(t, srv.serve)
	c := testkit.NewClient(t, s, &mxrelay.Options{MaxEmailsPerSession: 3, BatchWait: 200 * time.Millisecond})
	hs := rtEnqueue(t, c, []string{"one", "two", "three"}, rtMailTo(), mxrelay.WithRetries(3))
	for i, h := range hs {
		res, err := h.Wait(testkit.Ctx(t))
		require.NotNil(t, res)
		subj := []string{"one", "two", "three"}[i]
		t.Logf("email %s: err=%v maybe=%v reply=%+v attempts=%d; server kept %d, ends %d", subj, err, res.MaybeDelivered, res.Reply, res.Attempts, srv.keptN(subj), srv.endsN(subj))
		if err == nil && !res.MaybeDelivered {
			assert.GreaterOrEqual(t, srv.keptN(subj), 1, "email %s reported delivered, but the server kept none", subj)
		}
		if err != nil && !res.MaybeDelivered {
			assert.Zero(t, srv.keptN(subj), "email %s reported failed, not maybe delivered, but the server kept it", subj)
		}
	}
}

// One reply missing instead of one too many: the server refuses email 1's
// end of data with "554 5.7.1", and that one line never reaches the client
// (a relay that loses a frame; modelled here by the server not writing
// it). Enhanced codes are on. The client, with email 2's commands in
// flight, takes email 2's RSET reply "250 2.0.0 ok" for email 1's end of
// data, and email 2's MAIL reply "250 2.1.0 sender ok" for the RSET: the
// engine accepts any 250 to RSET as "in step", though 2.1.0 is an address
// status that can only answer MAIL or RCPT. Email 1 is reported delivered
// (MaybeDelivered false); the server refused it and holds no copy.
func TestRedTeamLostEndReplyConfirmsAFalseDelivery(t *testing.T) {
	for _, m := range fakesmtp.EngineModes {
		t.Run(m.Name, func(t *testing.T) {
			srv := &rtServer{ext: m.Ext, enhanced: true}
			srv.hook = func(conn, tx int, verb, subject string) ([]string, bool) {
				if conn == 1 && tx == 1 && verb == "END" {
					return []string{}, true // "554 5.7.1 refused", lost on the way
				}
				return nil, false
			}
			s := rtRelay(t, srv.serve)
			c := testkit.NewClient(t, s, &mxrelay.Options{MaxEmailsPerSession: 3, BatchWait: 200 * time.Millisecond, CommandTimeout: time.Second})
			hs := rtEnqueue(t, c, []string{"one", "two", "three"}, rtMailTo(), mxrelay.WithRetries(3))
			res, err := hs[0].Wait(testkit.Ctx(t))
			require.NotNil(t, res)
			t.Logf("email 1: err=%v maybe=%v reply=%+v; server kept %d", err, res.MaybeDelivered, res.Reply, srv.keptN("one"))
			if err == nil && !res.MaybeDelivered {
				assert.Equal(t, 1, srv.keptN("one"), "email 1 reported delivered on reply %+v, but the server refused it and kept nothing", res.Reply)
			}
			for _, h := range hs[1:] {
				_, _ = h.Wait(testkit.Ctx(t))
			}
		})
	}
}

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

// bigMail is mail with a body of about 600 KiB: three BDAT chunks.
func bigMail(subject string) mxrelay.Email {
	var b strings.Builder
	b.WriteString(testkit.Msg(subject))
	line := strings.Repeat("x", 98) + "\r\n"
	for b.Len() < 600<<10 {
		b.WriteString(line)
	}
	return mxrelay.Email{From: "a@example.com", To: []string{"a@example.com", "b@example.com"}, Body: strings.NewReader(b.String())}
}

// rt4RunBig is rt3Run with bodies of several BDAT chunks and options o.
func rt4RunBig(t *testing.T, srv *rt2Server, o *mxrelay.Options) []rt3Outcome {
	t.Helper()
	return rtOutcomes(t, srv, o, 800*time.Millisecond, bigMail)
}

// Multi-chunk bodies (three BDAT chunks each) with a shift next to a
// chunk of email one: a chunk reply duplicated, lost, or a refusal of a
// chunk, in both BDAT modes and both styles. Each verdict is checked
// against what the server kept.
func TestRedTeam4ShiftBetweenChunks(t *testing.T) {
	type script struct {
		name string
		over func(word func(string) string, c rt2Cmd) ([]string, bool)
	}
	var chunk int
	scripts := []script{
		{"first chunk reply twice", func(w func(string) string, c rt2Cmd) ([]string, bool) {
			if c.conn == 1 && c.tx == 1 && c.verb == "CHUNK" {
				chunk++
				if chunk == 1 {
					return []string{w("CHUNK"), w("CHUNK")}, true
				}
			}
			return nil, false
		}},
		{"first chunk reply lost, end refused", func(w func(string) string, c rt2Cmd) ([]string, bool) {
			if c.conn == 1 && c.tx == 1 {
				switch c.verb {
				case "CHUNK":
					chunk++
					if chunk == 1 {
						return nil, true
					}
				case "END":
					return []string{"554 5.7.1 refused"}, true
				}
			}
			return nil, false
		}},
		{"second chunk refused", func(w func(string) string, c rt2Cmd) ([]string, bool) {
			if c.conn == 1 && c.tx == 1 {
				switch c.verb {
				case "CHUNK":
					chunk++
					if chunk == 2 {
						return []string{"552 5.3.4 message too big"}, true
					}
					if chunk > 2 {
						return []string{"503 5.5.1 previous chunk refused"}, true
					}
				case "END":
					return []string{"503 5.5.1 previous chunk refused"}, true
				}
			}
			return nil, false
		}},
		{"end reply lost (refused), next email's chunk", func(w func(string) string, c rt2Cmd) ([]string, bool) {
			if c.conn == 1 && c.tx == 1 && c.verb == "END" {
				return nil, true // 554, lost; not kept
			}
			return nil, false
		}},
		{"stray line after the second chunk's reply, end refused", func(w func(string) string, c rt2Cmd) ([]string, bool) {
			if c.conn == 1 && c.tx == 1 {
				switch c.verb {
				case "CHUNK":
					chunk++
					if chunk == 2 {
						return []string{w("CHUNK"), w("RSET")}, true
					}
				case "END":
					return []string{"554 5.7.1 refused"}, true
				}
			}
			return nil, false
		}},
	}
	for _, sc := range scripts {
		for _, st := range rt4Styles {
			for _, m := range []int{0, 2} {
				mode := fakesmtp.EngineModes[m]
				t.Run(sc.name+"/"+st.name+"/"+mode.Name, func(t *testing.T) {
					srv := &rt2Server{ext: mode.Ext}
					chunk = 0
					w := func(verb string) string { return st.reply(srv, verb) }
					srv.enhanced = true
					rt4Hook(srv, st, func(c rt2Cmd) ([]string, bool) { return sc.over(w, c) })
					for _, b := range rt3Promises(rt4RunBig(t, srv, nil)) {
						t.Errorf("%s: %s", sc.name, b)
					}
				})
			}
		}
	}
}
