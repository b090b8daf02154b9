package smtpsink

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"net"
	"strconv"
	"time"
)

// readBuffer is the input buffer of a session: commands and message data
// are read through it, so its size is also the largest read of data.
const readBuffer = 64 << 10

// errLineTooLong is a command line over Options.MaxLineLength.
var errLineTooLong = errors.New("smtpsink: line too long")

// session is one SMTP connection.
type session struct {
	s    *Server
	conn net.Conn
	r    *bufio.Reader
	w    *bufio.Writer

	hello  bool // EHLO or HELO seen
	esmtp  bool // it was EHLO: parameters are allowed
	errors int  // commands answered 5xx for syntax or sequence

	// The transaction.
	mail        bool  // MAIL accepted
	rcpts       int   // RCPTs accepted
	chunked     bool  // a BDAT was received in it
	chunkFailed bool  // a BDAT of it was refused: the rest are too
	size        int64 // octets received by BDAT
}

func newSession(s *Server, c net.Conn) *session {
	se := &session{s: s, conn: c}
	se.w = bufio.NewWriter(c)
	se.r = bufio.NewReaderSize(flushingReader{se}, readBuffer)
	return se
}

// flushingReader is the session's input. Before it blocks on the network,
// it writes the replies waiting in the output buffer: they are sent once
// no more input is buffered, so the replies to pipelined commands leave
// together, and a client waiting for a reply always gets it.
type flushingReader struct{ se *session }

func (f flushingReader) Read(p []byte) (int, error) {
	if err := f.se.flush(); err != nil {
		return 0, err
	}
	_ = f.se.conn.SetReadDeadline(time.Now().Add(f.se.s.opts.IdleTimeout))
	return f.se.conn.Read(p)
}

func (se *session) flush() error {
	if se.w.Buffered() == 0 {
		return nil
	}
	_ = se.conn.SetWriteDeadline(time.Now().Add(se.s.opts.IdleTimeout))
	return se.w.Flush()
}

func (se *session) reply(s string) {
	se.w.WriteString(s)
	se.w.WriteString("\r\n")
}

// fail replies with a 5xx that counts as the client's error, and reports
// whether the session may go on.
func (se *session) fail(s string) bool {
	se.reply(s)
	se.errors++
	if se.errors >= maxErrors {
		se.reply("421 4.7.0 Too many errors, closing")
		return false
	}
	return true
}

func (se *session) reset() {
	se.mail, se.rcpts, se.chunked, se.chunkFailed, se.size = false, 0, false, false, 0
}

func (se *session) serve() {
	se.s.sessions.Add(1)
	se.reply("220 " + se.s.opts.Hostname + " ESMTP smtpsink")
	defer se.flush()
	for {
		line, err := se.readLine()
		if errors.Is(err, errLineTooLong) {
			if !se.fail("500 5.5.2 Line too long") {
				return
			}
			continue
		}
		if err != nil {
			return
		}
		if !se.command(line) {
			return
		}
	}
}

// readLine returns the next command line without its line ending. A line
// longer than MaxLineLength is read to its end and dropped.
func (se *session) readLine() ([]byte, error) {
	line, err := se.r.ReadSlice('\n')
	if err == nil && len(line) <= se.s.opts.MaxLineLength {
		line = bytes.TrimSuffix(line[:len(line)-1], []byte("\r"))
		return line, nil
	}
	for errors.Is(err, bufio.ErrBufferFull) {
		_, err = se.r.ReadSlice('\n')
	}
	if err != nil {
		return nil, err
	}
	return nil, errLineTooLong
}

// command runs one command line and reports whether the session goes on.
func (se *session) command(line []byte) bool {
	verb, arg, _ := bytes.Cut(line, []byte(" "))
	switch string(bytes.ToUpper(verb)) {
	case "EHLO":
		return se.ehlo(arg)
	case "HELO":
		if len(bytes.TrimSpace(arg)) == 0 {
			return se.fail("501 5.5.4 HELO needs a domain")
		}
		se.reset()
		se.hello, se.esmtp = true, false
		se.reply("250 " + se.s.opts.Hostname)
	case "MAIL":
		return se.mailCmd(arg)
	case "RCPT":
		return se.rcptCmd(arg)
	case "DATA":
		return se.data(arg)
	case "BDAT":
		if se.s.opts.DisableChunking {
			return se.fail("502 5.5.1 Command not implemented")
		}
		return se.bdat(arg)
	case "RSET":
		se.reset()
		se.reply("250 2.0.0 Ok")
	case "NOOP":
		se.reply("250 2.0.0 Ok")
	case "QUIT":
		se.reply("221 2.0.0 Bye")
		return false
	case "VRFY", "EXPN", "HELP", "STARTTLS", "AUTH":
		return se.fail("502 5.5.1 Command not implemented")
	default:
		return se.fail("500 5.5.2 Command not recognized")
	}
	return true
}

func (se *session) ehlo(arg []byte) bool {
	if len(bytes.TrimSpace(arg)) == 0 {
		return se.fail("501 5.5.4 EHLO needs a domain")
	}
	se.reset()
	se.hello, se.esmtp = true, true
	o := &se.s.opts
	lines := []string{o.Hostname}
	add := func(off bool, ext string) {
		if !off {
			lines = append(lines, ext)
		}
	}
	add(o.DisablePipelining, "PIPELINING")
	add(o.DisableChunking, "CHUNKING")
	add(o.Disable8BitMIME, "8BITMIME")
	add(o.DisableSize, "SIZE "+strconv.FormatInt(o.MaxMessageBytes, 10))
	add(o.DisableSMTPUTF8, "SMTPUTF8")
	add(o.DisableDSN, "DSN")
	lines = append(lines, "ENHANCEDSTATUSCODES")
	for i, l := range lines {
		sep := "-"
		if i == len(lines)-1 {
			sep = " "
		}
		se.reply("250" + sep + l)
	}
	return true
}

func (se *session) mailCmd(arg []byte) bool {
	switch {
	case !se.hello:
		return se.fail("503 5.5.1 Send EHLO or HELO first")
	case se.mail:
		return se.fail("503 5.5.1 Nested MAIL command")
	}
	params, ok := cutPath(arg, "FROM:", true)
	if !ok {
		return se.fail("501 5.5.4 Syntax: MAIL FROM:<address>")
	}
	size, msg := se.mailParams(params)
	if msg != "" {
		return se.fail(msg)
	}
	if max := se.s.opts.MaxMessageBytes; max > 0 && size > max {
		se.reply("552 5.3.4 Message too big for this server")
		return true
	}
	se.reset()
	se.mail = true
	se.reply("250 2.1.0 Ok")
	return true
}

func (se *session) rcptCmd(arg []byte) bool {
	if !se.mail {
		return se.fail("503 5.5.1 Need MAIL before RCPT")
	}
	params, ok := cutPath(arg, "TO:", false)
	if !ok {
		return se.fail("501 5.5.4 Syntax: RCPT TO:<address>")
	}
	if msg := se.rcptParams(params); msg != "" {
		return se.fail(msg)
	}
	if se.rcpts >= se.s.opts.MaxRecipients {
		se.reply("452 4.5.3 Too many recipients")
		return true
	}
	se.rcpts++
	se.reply("250 2.1.5 Ok")
	return true
}

// ready checks that a transaction can take message data.
func (se *session) ready() string {
	switch {
	case !se.mail:
		return "503 5.5.1 Need MAIL first"
	case se.rcpts == 0:
		return "554 5.5.1 No valid recipients"
	}
	return ""
}

func (se *session) data(arg []byte) bool {
	if len(arg) > 0 {
		return se.fail("501 5.5.4 DATA takes no argument")
	}
	if se.chunked {
		return se.fail("503 5.5.1 DATA after BDAT in one transaction")
	}
	if msg := se.ready(); msg != "" {
		return se.fail(msg)
	}
	se.reply("354 End data with <CR><LF>.<CR><LF>")
	n, err := se.readData()
	if err != nil {
		return false
	}
	se.finish(n)
	return true
}

// finish ends the transaction of a message of n octets with its reply.
func (se *session) finish(n int64) {
	se.reset()
	if max := se.s.opts.MaxMessageBytes; max > 0 && n > max {
		se.reply("552 5.3.4 Message too big for this server")
		return
	}
	se.s.messages.Add(1)
	se.s.bytes.Add(n)
	se.reply(fmt.Sprintf("250 2.0.0 Ok: %d octets queued", n))
}

// readData reads a DATA body up to the line "." and returns its size with
// the dot-stuffing removed. The terminator is <CRLF>.<CRLF>: a "." line
// after a bare LF is data. Lines of any length are read in pieces; a piece
// ends at LF or when the buffer is full, and only a piece that starts a
// line can be the terminator.
func (se *session) readData() (int64, error) {
	var n int64
	bol := true     // the next piece starts a line that follows CRLF
	prevCR := false // the last piece ended with CR
	for {
		piece, err := se.r.ReadSlice('\n')
		if k := len(piece); k > 0 {
			if bol && string(piece) == ".\r\n" {
				return n, nil
			}
			n += int64(k)
			if bol && piece[0] == '.' {
				n-- // dot-stuffing
			}
			last := piece[k-1]
			bol = last == '\n' && (k >= 2 && piece[k-2] == '\r' || k == 1 && prevCR)
			prevCR = last == '\r'
		}
		if err != nil && !errors.Is(err, bufio.ErrBufferFull) {
			return n, err
		}
	}
}

// bdat runs BDAT n [LAST]. Once the size is known, exactly n octets are
// consumed whatever the reply, so that the stream stays in step.
func (se *session) bdat(arg []byte) bool {
	fields := bytes.Fields(arg)
	last := len(fields) == 2 && bytes.EqualFold(fields[1], []byte("LAST"))
	if len(fields) == 0 || len(fields) > 2 || len(fields) == 2 && !last {
		return se.fail("501 5.5.4 Syntax: BDAT size [LAST]")
	}
	n, err := strconv.ParseInt(string(fields[0]), 10, 64)
	if err != nil || n < 0 || fields[0][0] == '+' {
		return se.fail("501 5.5.4 Syntax: BDAT size [LAST]")
	}
	if err := se.discard(n); err != nil {
		return false
	}
	msg := se.ready()
	switch {
	case msg != "":
	case se.chunkFailed:
		msg = "503 5.5.1 An earlier chunk of this message was refused"
	case se.s.opts.MaxMessageBytes > 0 && se.size+n > se.s.opts.MaxMessageBytes:
		msg = "552 5.3.4 Message too big for this server"
	}
	if msg != "" {
		// The transaction, if any, fails, and ends with its last chunk
		// so that a pipelined MAIL after it starts the next one.
		se.chunked, se.chunkFailed = se.mail, se.mail
		if last {
			se.reset()
		}
		se.reply(msg)
		return true
	}
	se.chunked = true
	se.size += n
	if last {
		se.finish(se.size)
		return true
	}
	se.reply(fmt.Sprintf("250 2.0.0 %d octets received", n))
	return true
}

// discard consumes n octets of input.
func (se *session) discard(n int64) error {
	for n > 0 {
		k := int(min(n, 1<<30))
		if _, err := se.r.Discard(k); err != nil {
			return err
		}
		n -= int64(k)
	}
	return nil
}
