package test

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"

	"github.com/mxrelay/mxrelay/internal/fakesmtp"
)

// rt3Run sends the three emails of rt2Subjects (to a@ and b@) in one
// session through srv, no retry, and returns what became of each.
func rt3Run(t *testing.T, srv *rt2Server) []rt3Outcome {
	t.Helper()
	return rtOutcomes(t, srv, nil, 400*time.Millisecond, rtMailTo("a@example.com", "b@example.com"))
}

// rt3Promises reports the emails whose result contradicts what the
// server kept (the README's Guarantees).
func rt3Promises(outs []rt3Outcome) []string {
	var bad []string
	for _, o := range outs {
		if b := o.broken(o.String()); b != "" {
			bad = append(bad, b)
		}
	}
	return bad
}

// goSMTPStyle is how emersion/go-smtp's server (conn.go, v0.25) answers
// each command: 2.0.0 on every 2xx, whatever the command.
func goSMTPStyle(verb string) string {
	switch verb {
	case "MAIL":
		return "250 2.0.0 Roger, accepting mail from <x@example.com>"
	case "RCPT":
		return "250 2.0.0 I'll make sure <a@example.com> gets this"
	case "RSET":
		return "250 2.0.0 Session reset"
	case "NOOP":
		return "250 2.0.0 I have successfully done nothing"
	case "CHUNK":
		return "250 2.0.0 Continue"
	case "END":
		return "250 2.0.0 OK: queued"
	case "DATA":
		return "354 2.0.0 Go ahead. End your data with <CR><LF>.<CR><LF>"
	case "QUIT":
		return "221 2.0.0 Bye"
	}
	return "250 2.0.0 ok"
}

// BREAK. One lost line, with ENHANCEDSTATUSCODES as go-smtp's server
// words its replies (2.0.0 to every command), or with no enhanced codes:
// the server refuses email one's end of data (554, not kept) and that
// reply is lost (a relay that drops a frame). Email one's end of data
// takes email two's RSET 250, email two's RSET takes its MAIL's 250: in
// step, so email one is confirmed and reported delivered, MaybeDelivered
// false, though the server never kept it.
//
// The README ("What no client can tell") says one lost line is caught
// "when the server uses enhanced status codes" and "in the DATA modes
// (the 354 is unmistakable)". Neither holds here: go-smtp's uniform 2.0.0
// gives the style rule nothing to compare, and in pipelined DATA the RSET
// after the end of data is answered (and confirms) before any 354 shows
// the shift. Expected: email one never delivered (unknown at worst).
// BROKEN in pipelined BDAT and pipelined DATA, both styles; the lock-step
// modes held (email one waits for its own reply and ends unknown).
func TestRedTeam3LostRefusalUniformStyle(t *testing.T) {
	for _, st := range []string{"go-smtp 2.0.0", "no enhanced codes"} {
		for _, m := range fakesmtp.EngineModes {
			t.Run(st+"/"+m.Name, func(t *testing.T) {
				t.Parallel()
				srv := &rt2Server{ext: m.Ext, enhanced: st != "no enhanced codes"}
				srv.hook = func(c rt2Cmd) ([]string, bool) {
					if c.conn == 1 && c.tx == 1 && c.verb == "END" {
						return nil, true // 554 5.7.1 refused, the line lost; not kept
					}
					if !srv.enhanced {
						return nil, false
					}
					lines := []string{goSMTPStyle(c.verb)}
					if c.verb == "END" {
						lines = append(lines, "KEEP")
					}
					return lines, true
				}
				for _, b := range rt3Promises(rt3Run(t, srv)) {
					t.Errorf("%s, %s: %s", st, m.Name, b)
				}
			})
		}
	}
}

// FALSE POSITIVE. An honest server refuses email two's end of data with
// an address status, as Postfix does for a header_checks or body_checks
// "REJECT 5.1.1 ..." (cleanup_message.c: dsn_prepend keeps the
// operator's code; smtpd.c: "Allow address-specific DSN status in
// header/body_checks") or a milter's smfi_setreply("550", "5.1.1", ...)
// at end of message. Rule (c) takes it for another command's reply: a
// protocol error, so email two ends unknown (MaybeDelivered) instead of
// failed, and every transaction not yet confirmed (email one; in pipelined
// BDAT email three too) is untrusted: unknown though the server kept it,
// or sent again on a new connection. Expected: one and three delivered,
// two failed with MaybeDelivered false.
func TestRedTeam3HonestEndRefusalWithAddressStatus(t *testing.T) {
	for _, refusal := range []string{"550 5.1.1 <b@example.com>: Recipient address rejected by header check", "450 4.1.8 <x@example.com>: Sender address rejected: Domain not found"} {
		for _, m := range fakesmtp.EngineModes {
			t.Run(refusal[:3]+"/"+m.Name, func(t *testing.T) {
				t.Parallel()
				srv := &rt2Server{ext: m.Ext, enhanced: true}
				srv.hook = func(c rt2Cmd) ([]string, bool) {
					if c.verb == "END" && c.subj == "two" {
						return []string{refusal}, true
					}
					return nil, false
				}
				outs := rt3Run(t, srv)
				for _, b := range rt3Promises(outs) {
					t.Errorf("promise: %s", b)
				}
				if !outs[0].delivered() || !outs[2].delivered() {
					t.Errorf("%s: an honest session did not deliver email one or three: %v / %v", m.Name, outs[0], outs[2])
				}
				if !outs[1].failedClean() {
					t.Errorf("%s: an honest refusal of email two ended %v, not failed (MaybeDelivered false)", m.Name, outs[1])
				}
			})
		}
	}
}

// FALSE POSITIVE. An honest server whose 2xx to the end of data varies
// from one message to the next: Postfix with a before-queue content
// filter (smtpd_proxy_filter) answers the end of data with the filter's
// own reply, verbatim (smtpd.c: smtpd_chat_reply(state, "%s",
// STR(proxy->reply)) when the filter said 2xx), and a filter words a
// message it passes and one it discards or quarantines differently.
// Rule (d) makes email two's 2.6.0 after email one's 2.0.0 a protocol
// error: email two ends unknown and what was not yet confirmed with it.
// Expected: all three delivered.
func TestRedTeam3HonestEndStyleVaries(t *testing.T) {
	for _, m := range fakesmtp.EngineModes {
		t.Run(m.Name, func(t *testing.T) {
			t.Parallel()
			srv := &rt2Server{ext: m.Ext, enhanced: true}
			srv.hook = func(c rt2Cmd) ([]string, bool) {
				if c.verb == "END" && c.subj == "two" {
					return []string{"250 2.6.0 Ok, id=12345-02, from MTA([127.0.0.1]:10025): 250 2.0.0 Ok: queued as ABC", "KEEP"}, true
				}
				return nil, false
			}
			outs := rt3Run(t, srv)
			for _, b := range rt3Promises(outs) {
				t.Errorf("promise: %s", b)
			}
			for _, o := range outs {
				if !o.delivered() {
					t.Errorf("%s: an honest session did not deliver: %v", m.Name, o)
				}
			}
		})
	}
}

// RCPT answered "250 2.1.5 Ok" for one recipient and "251 2.1.5 User not
// local; will forward" for the other: the same enhanced code, so no
// change of style. Held if every email is delivered.
func TestRedTeam3Rcpt251SameEnhanced(t *testing.T) {
	for _, m := range fakesmtp.EngineModes {
		t.Run(m.Name, func(t *testing.T) {
			t.Parallel()
			srv := &rt2Server{ext: m.Ext, enhanced: true}
			srv.hook = func(c rt2Cmd) ([]string, bool) {
				if c.verb == "RCPT" && c.rcpt == 1 {
					return []string{"251 2.1.5 User not local; will forward to <b@elsewhere.example>"}, true
				}
				return nil, false
			}
			for _, o := range rt3Run(t, srv) {
				if !o.delivered() || o.kept != 1 {
					t.Errorf("%s: %v", m.Name, o)
				}
			}
		})
	}
}

// A CHOSEN COST (found as a false positive by the red team). RCPT
// answered "250 2.1.5" for one recipient and "250 2.1.0" for another, or
// with an enhanced code on some 2xx replies and not on others, reads like
// a shifted stream, and the style rule (internal/smtpc, style) takes it
// for one: the session breaks and its unconfirmed emails end unknown or
// are resent. No mainstream server was found doing it for RCPT (Postfix:
// always 2.1.5, smtpd.c rcpt_cmd; go-smtp: always 2.0.0), while the rule
// is what catches a stray line after MAIL in Postfix-worded sessions
// (TestRedTeam2StrayLineMovesRcptRefusalOntoEnd). What must hold even so:
// no email is reported delivered that the server did not keep, none is
// failed cleanly that it kept.
func TestRedTeam3HonestRcptStyleVaries(t *testing.T) {
	for _, variant := range []string{"250 2.1.0 recipient ok", "250 recipient ok"} {
		for _, m := range fakesmtp.EngineModes {
			t.Run(variant[:9]+"/"+m.Name, func(t *testing.T) {
				t.Parallel()
				srv := &rt2Server{ext: m.Ext, enhanced: true}
				srv.hook = func(c rt2Cmd) ([]string, bool) {
					if c.verb == "RCPT" && c.rcpt == 1 {
						return []string{variant}, true
					}
					return nil, false
				}
				for _, o := range rt3Run(t, srv) {
					t.Log(o)
					if o.delivered() {
						assert.Equal(t, 1, o.kept, "%v: delivered, but not kept", o)
					}
					if o.failedClean() {
						assert.Zero(t, o.kept, "%v: failed, not maybe, but kept", o)
					}
				}
			})
		}
	}
}
