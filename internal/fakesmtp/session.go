package fakesmtp

import "strings"

// Session is an honest SMTP server's side of a connection, enough for a
// client's four ways of sending (PIPELINING and CHUNKING offered or not),
// into which a test scripts one misbehaviour: Answer is asked first for
// each command. Serve is its script; one Session may serve any number of
// connections, one after the other or at once, if Answer may.
type Session struct {
	// Greeting is the writes of the greeting, as Play takes them. Nil:
	// "220 mx.test ESMTP".
	Greeting []string
	// Ext are the EHLO keywords offered first; 8BITMIME follows, then
	// ENHANCEDSTATUSCODES if Enhanced.
	Ext []string
	// Enhanced offers ENHANCEDSTATUSCODES and puts enhanced codes in the
	// honest replies.
	Enhanced bool
	// Answer, if set, is asked for the writes that answer cmd, as Play
	// takes them; ok=false makes the honest writes (cmd.Honest).
	Answer func(cmd Cmd) (writes []string, ok bool)
	// Directive, if set, is given each write first, for directives of
	// the test's own: handled says w was one (the lines before it still
	// go out with those after it); more=false stops the writes there,
	// after the lines before it, and keeps the connection.
	Directive func(w string) (handled, more bool)
}

// Cmd is a command the Session read, for Answer.
type Cmd struct {
	// Verb is the command's first word in upper case, or one of the
	// Session's own: "BDAT" is a BDAT line before its chunk is read
	// (honestly answered with nothing), "CHUNK" the chunk of a BDAT that
	// is not the last, read; "END" is the end of data, a DATA body's "."
	// line or the chunk of BDAT LAST, read.
	Verb string
	// Line is the command line ("" for CHUNK and END).
	Line string
	// Tx counts the MAIL commands of the connection so far, from 1.
	Tx int
	// Rcpt is a RCPT's index in its transaction, from 0.
	Rcpt int
	// Message is, for END, the message: the DATA body unstuffed, or the
	// chunks of its BDATs.
	Message string
	// Honest is what an honest server answers ("" for BDAT). For EHLO it
	// holds every line of the reply.
	Honest string
	// Conn is the connection.
	Conn *Conn
}

// EngineModes are the four ways the client's SMTP engine sends, chosen by
// what the server offers: a Session whose Ext is a mode's Ext makes the
// engine send the mode's way.
var EngineModes = []struct {
	Name string
	Ext  []string
}{
	{"pipelined BDAT", []string{"PIPELINING", "CHUNKING"}},
	{"pipelined DATA", []string{"PIPELINING"}},
	{"lock-step BDAT", []string{"CHUNKING"}},
	{"lock-step DATA", nil},
}

// Host is the name the Session and Hello give in their greeting and EHLO
// reply.
const Host = "mx.test"

// honest are the honest replies, with enhanced codes.
var honest = map[string]string{
	"MAIL": "250 2.1.0 sender ok", "RCPT": "250 2.1.5 recipient ok", "DATA": "354 go ahead", "BDAT": "",
	"CHUNK": "250 2.0.0 chunk ok", "END": "250 2.0.0 queued", "RSET": "250 2.0.0 ok", "NOOP": "250 2.0.0 ok",
	"QUIT": "221 2.0.0 bye",
}

// Honest is an honest server's reply to verb (one of Cmd's verbs other
// than EHLO), with enhanced codes or not: "500 5.5.2 unknown command" to
// a verb it does not know, "" to BDAT.
func Honest(verb string, enhanced bool) string {
	r, ok := honest[verb]
	if !ok {
		r = "500 5.5.2 unknown command"
	}
	if enhanced || r == "" || strings.HasPrefix(r, "354") {
		return r
	}
	code, rest, _ := strings.Cut(r, " ")
	_, text, _ := strings.Cut(rest, " ")
	return code + " " + text
}

// ehlo is the Session's honest EHLO reply.
func (s *Session) ehlo() string {
	ext := append(append([]string(nil), s.Ext...), "8BITMIME")
	if s.Enhanced {
		ext = append(ext, "ENHANCEDSTATUSCODES")
	}
	return EHLOReply(Host, ext...)
}

// answer makes the writes for cmd; false: the connection is to end. It
// returns the last line written.
func (s *Session) answer(cmd Cmd) (bool, string) {
	if cmd.Verb == "EHLO" {
		cmd.Honest = s.ehlo()
	} else {
		cmd.Honest = Honest(cmd.Verb, s.Enhanced)
	}
	var writes []string
	ok := false
	if s.Answer != nil {
		writes, ok = s.Answer(cmd)
	}
	if !ok && cmd.Honest != "" {
		writes = []string{cmd.Honest}
	}
	return cmd.Conn.play(writes, s.Directive)
}

// Serve serves c until the client hangs up, after QUIT is answered, or
// when a write ends the connection. The body of a DATA is read only after
// a 354.
func (s *Session) Serve(c *Conn) {
	greeting := s.Greeting
	if greeting == nil {
		greeting = []string{"220 " + Host + " ESMTP"}
	}
	if ok, _ := c.play(greeting, s.Directive); !ok {
		return
	}
	tx, rcpt := 0, 0
	var chunks strings.Builder
	for {
		line, ok := c.Line()
		if !ok {
			return
		}
		cmd := Cmd{Verb: Verb(line), Line: line, Conn: c}
		switch cmd.Verb {
		case "MAIL":
			tx, rcpt = tx+1, 0
			chunks.Reset()
		case "RCPT":
			cmd.Rcpt = rcpt
			rcpt++
		}
		cmd.Tx = tx
		ok, last := s.answer(cmd)
		if !ok || cmd.Verb == "QUIT" {
			return
		}
		end := Cmd{Verb: "END", Tx: tx, Conn: c}
		switch cmd.Verb {
		case "DATA":
			if !strings.HasPrefix(last, "354") {
				continue
			}
			body, ok := c.Body()
			if !ok {
				return
			}
			end.Message = Unstuff(body)
		case "BDAT":
			data, ok := c.Chunk(line)
			if !ok {
				return
			}
			chunks.Write(data)
			if f := strings.Fields(line); len(f) < 3 || !strings.EqualFold(f[2], "LAST") {
				end.Verb = "CHUNK"
			} else {
				end.Message = chunks.String()
			}
		default:
			continue
		}
		if ok, _ := s.answer(end); !ok {
			return
		}
	}
}
