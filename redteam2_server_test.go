package mxrelay_test

import (
	"io"
	"strconv"
	"strings"
	"sync"
	"time"
)

// rt2Cmd is one command the red-team server read, for its hook.
type rt2Cmd struct {
	conn int    // connection, from 1
	n    int    // command number in the connection, from 1 (EHLO excluded)
	tx   int    // transaction (MAIL count) in the connection, from 1
	verb string // MAIL, RCPT, RSET, NOOP, QUIT, DATA, CHUNK, END, ...
	rcpt int    // for RCPT: its index in the transaction, from 0
	subj string // for END: the message's Subject
}

// rt2Server is rtServer with QUIT scriptable as well, each command
// numbered, and RCPTs indexed. hook returns the lines to write ("CUT"
// closes, "KEEP" marks the message kept, "~Nms" sleeps, "HANG" stops
// answering until the client hangs up); ok=false does the honest thing,
// an honest END keeping the message.
type rt2Server struct {
	ext      []string
	enhanced bool
	rset     string // the honest RSET reply; default 250 2.0.0 ok
	hook     func(c rt2Cmd) (lines []string, ok bool)

	mu    sync.Mutex
	conns int
	kept  map[string]int
	ends  map[string]int
}

func (s *rt2Server) keptN(subject string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.kept[subject]
}

func (s *rt2Server) honest(verb string) string {
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
	case "RSET":
		if s.rset != "" {
			return s.rset
		}
		return e("250", "2.0.0 ok")
	case "NOOP":
		return e("250", "2.0.0 ok")
	case "CHUNK":
		return e("250", "2.0.0 chunk ok")
	case "END":
		return e("250", "2.0.0 queued")
	case "DATA":
		return "354 go ahead"
	case "QUIT":
		return e("221", "2.0.0 bye")
	}
	return "250 ok"
}

func (s *rt2Server) serve(c *upConn) {
	s.mu.Lock()
	s.conns++
	conn := s.conns
	if s.kept == nil {
		s.kept, s.ends = map[string]int{}, map[string]int{}
	}
	s.mu.Unlock()
	cmd := rt2Cmd{conn: conn}
	c.say("220 mx.test ESMTP")
	hang := false
	// do writes the hook's lines, or the honest one; false ends.
	do := func(verb string) bool {
		cmd.n++
		cmd.verb = verb
		lines, ok := []string(nil), false
		if s.hook != nil && !hang {
			lines, ok = s.hook(cmd)
		}
		if hang {
			return true
		}
		if !ok {
			lines = []string{s.honest(verb)}
			if verb == "END" {
				lines = append(lines, "KEEP")
			}
		}
		var out strings.Builder
		flush := func() {
			if out.Len() > 0 {
				c.write([]byte(out.String()))
				out.Reset()
			}
		}
		for _, l := range lines {
			switch {
			case l == "KEEP":
				s.mu.Lock()
				s.kept[cmd.subj]++
				s.mu.Unlock()
			case l == "CUT":
				flush()
				return false
			case l == "HANG":
				flush()
				hang = true
				return true
			case strings.HasPrefix(l, "~"):
				flush()
				d, _ := time.ParseDuration(l[1:])
				time.Sleep(d)
			default:
				out.WriteString(l + "\r\n")
			}
		}
		flush()
		return true
	}
	end := func(body string) bool {
		cmd.subj = subjectOf([]byte(body))
		s.mu.Lock()
		s.ends[cmd.subj]++
		s.mu.Unlock()
		return do("END")
	}
	var chunks strings.Builder
	for {
		l, ok := c.line()
		if !ok {
			return
		}
		verb := strings.ToUpper(strings.Fields(l + " x")[0])
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
			continue
		case "MAIL":
			cmd.tx++
			cmd.rcpt = -1
			cmd.subj = ""
			chunks.Reset()
		case "RCPT":
			cmd.rcpt++
		case "QUIT":
			do("QUIT")
			return
		case "DATA":
			if !do("DATA") {
				return
			}
			var body strings.Builder
			for {
				l, ok := c.line()
				if !ok {
					return
				}
				if l == "." {
					break
				}
				body.WriteString(strings.TrimPrefix(l, ".") + "\r\n")
			}
			if !end(body.String()) {
				return
			}
			continue
		case "BDAT":
			f := strings.Fields(l)
			n, _ := strconv.Atoi(f[1])
			buf := make([]byte, n)
			if _, err := io.ReadFull(c.r, buf); err != nil {
				return
			}
			chunks.Write(buf)
			if len(f) > 2 {
				if !end(chunks.String()) {
					return
				}
			} else if !do("CHUNK") {
				return
			}
			continue
		}
		if !do(verb) {
			return
		}
	}
}
