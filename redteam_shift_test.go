package mxrelay_test

import (
	"io"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mxrelay/mxrelay"
	"github.com/mxrelay/mxrelay/relaytest"
)

// rtServer is a red-team scripted upstream. It speaks enough SMTP for the
// four engine modes and lets a hook decide the bytes written for each
// command. It knows what it did with each message (kept, by Subject).
type rtServer struct {
	ext      []string
	enhanced bool // advertise ENHANCEDSTATUSCODES and use enhanced codes
	// hook returns the lines to write for a command (verb is "END" for an
	// end of data, whose subject is then set). ok=false means: do the
	// honest thing. A line "CUT" closes the connection; "KEEP" marks the
	// message kept (an honest END keeps it on its own).
	hook func(conn, tx int, verb, subject string) (lines []string, ok bool)

	mu    sync.Mutex
	conns int
	kept  map[string]int
	ends  map[string]int
}

func (s *rtServer) keptN(subject string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.kept[subject]
}

func (s *rtServer) endsN(subject string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.ends[subject]
}

func (s *rtServer) honest(verb string) string {
	e := func(code, rest string) string {
		if s.enhanced {
			return code + " " + rest
		}
		_, text, _ := strings.Cut(rest, " ")
		return code + " " + text
	}
	switch verb {
	case "MAIL":
		return e("250", "2.1.0 sender ok")
	case "RCPT":
		return e("250", "2.1.5 recipient ok")
	case "RSET", "NOOP":
		return e("250", "2.0.0 ok")
	case "CHUNK":
		return e("250", "2.0.0 chunk ok")
	case "END":
		return e("250", "2.0.0 queued")
	}
	return "250 ok"
}

func (s *rtServer) serve(c *upConn) {
	s.mu.Lock()
	s.conns++
	conn := s.conns
	if s.kept == nil {
		s.kept, s.ends = map[string]int{}, map[string]int{}
	}
	s.mu.Unlock()
	tx := 0
	c.say("220 mx.test ESMTP")
	// do writes the hook's lines, or honest; false ends the connection.
	do := func(verb, subject, honest string) bool {
		lines, ok := []string(nil), false
		if s.hook != nil {
			lines, ok = s.hook(conn, tx, verb, subject)
		}
		if !ok {
			lines = []string{honest}
			if verb == "END" {
				lines = append(lines, "KEEP")
			}
		}
		var out strings.Builder
		for _, l := range lines {
			switch l {
			case "KEEP":
				s.mu.Lock()
				s.kept[subject]++
				s.mu.Unlock()
			case "CUT":
				c.write([]byte(out.String()))
				return false
			default:
				out.WriteString(l + "\r\n")
			}
		}
		if out.Len() > 0 {
			c.write([]byte(out.String()))
		}
		return true
	}
	end := func(body string) bool {
		subject := subjectOf([]byte(body))
		s.mu.Lock()
		s.ends[subject]++
		s.mu.Unlock()
		return do("END", subject, s.honest("END"))
	}
	var chunks strings.Builder
	c.commands(func(verb, l string) bool {
		switch verb {
		case "EHLO":
			h := "250-mx.test\r\n"
			for _, e := range s.ext {
				h += "250-" + e + "\r\n"
			}
			if s.enhanced {
				h += "250-ENHANCEDSTATUSCODES\r\n"
			}
			h += "250 8BITMIME"
			c.say(h)
			return true
		case "MAIL":
			tx++
			chunks.Reset()
		case "DATA":
			if !do("DATA", "", "354 go ahead") {
				return false
			}
			var body strings.Builder
			for {
				l, ok := c.line()
				if !ok {
					return false
				}
				if l == "." {
					break
				}
				body.WriteString(strings.TrimPrefix(l, ".") + "\r\n")
			}
			return end(body.String())
		case "BDAT":
			f := strings.Fields(l)
			n, _ := strconv.Atoi(f[1])
			buf := make([]byte, n)
			if _, err := io.ReadFull(c.r, buf); err != nil {
				return false
			}
			chunks.Write(buf)
			if len(f) > 2 {
				return end(chunks.String())
			}
			return do("CHUNK", "", s.honest("CHUNK"))
		}
		return do(verb, "", s.honest(verb))
	})
}

// firstConn is a hook for rtServer that scripts the first connection
// only, one command at a time.
func firstConn(hook func(tx int, verb string) ([]string, bool)) func(conn, tx int, verb, subject string) ([]string, bool) {
	var mu sync.Mutex
	return func(conn, tx int, verb, _ string) ([]string, bool) {
		mu.Lock()
		defer mu.Unlock()
		if conn != 1 {
			return nil, false
		}
		return hook(tx, verb)
	}
}

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
	for _, m := range mxrelay.EngineModes {
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
			u := newUpstream(t, srv.serve)
			s := newRelay(t, &relaytest.Options{UpstreamAddr: u.addr})
			c := newClient(t, s, &mxrelay.Options{MaxEmailsPerSession: 2, BatchWait: 200 * time.Millisecond})
			var hs []*mxrelay.Handle
			for _, subj := range []string{"one", "two"} {
				h, err := c.Enqueue(mail(subj), mxrelay.WithRetries(3))
				require.NoError(t, err)
				hs = append(hs, h)
			}
			res, err := hs[0].Wait(ctxT(t))
			require.NotNil(t, res)
			t.Logf("email 1: err=%v maybe=%v attempts=%d; server kept %d, ends %d", err, res.MaybeDelivered, res.Attempts, srv.keptN("one"), srv.endsN("one"))
			if err == nil && !res.MaybeDelivered {
				assert.Equal(t, 1, srv.keptN("one"),
					"email 1 reported delivered (MaybeDelivered false, reply %+v) but the server kept %d copies", res.Reply, srv.keptN("one"))
			}
			_, _ = hs[1].Wait(ctxT(t))
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
	u := newUpstream(t, srv.serve)
	s := newRelay(t, &relaytest.Options{UpstreamAddr: u.addr})
	c := newClient(t, s, &mxrelay.Options{MaxEmailsPerSession: 3, BatchWait: 200 * time.Millisecond})
	var hs []*mxrelay.Handle
	for _, subj := range []string{"one", "two", "three"} {
		h, err := c.Enqueue(mail(subj), mxrelay.WithRetries(3))
		require.NoError(t, err)
		hs = append(hs, h)
	}
	for i, h := range hs {
		res, err := h.Wait(ctxT(t))
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
	for _, m := range mxrelay.EngineModes {
		t.Run(m.Name, func(t *testing.T) {
			srv := &rtServer{ext: m.Ext, enhanced: true}
			srv.hook = func(conn, tx int, verb, subject string) ([]string, bool) {
				if conn == 1 && tx == 1 && verb == "END" {
					return []string{}, true // "554 5.7.1 refused", lost on the way
				}
				return nil, false
			}
			u := newUpstream(t, srv.serve)
			s := newRelay(t, &relaytest.Options{UpstreamAddr: u.addr})
			c := newClient(t, s, &mxrelay.Options{MaxEmailsPerSession: 3, BatchWait: 200 * time.Millisecond, CommandTimeout: time.Second})
			var hs []*mxrelay.Handle
			for _, subj := range []string{"one", "two", "three"} {
				h, err := c.Enqueue(mail(subj), mxrelay.WithRetries(3))
				require.NoError(t, err)
				hs = append(hs, h)
			}
			res, err := hs[0].Wait(ctxT(t))
			require.NotNil(t, res)
			t.Logf("email 1: err=%v maybe=%v reply=%+v; server kept %d", err, res.MaybeDelivered, res.Reply, srv.keptN("one"))
			if err == nil && !res.MaybeDelivered {
				assert.Equal(t, 1, srv.keptN("one"), "email 1 reported delivered on reply %+v, but the server refused it and kept nothing", res.Reply)
			}
			for _, h := range hs[1:] {
				_, _ = h.Wait(ctxT(t))
			}
		})
	}
}
