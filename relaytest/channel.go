package relaytest

import (
	"bytes"
	"errors"
	"io"
	"log/slog"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/coder/websocket"

	"github.com/mxrelay/mxrelay/internal/wire"
)

// Bounds of what a channel holds on behalf of its peers.
const (
	maxCommandLine = 64 << 10 // a longer command line is forwarded without being parsed
	maxReply       = 64 << 10 // a longer reply is forwarded without being parsed
	maxPending     = 4096     // commands awaiting a reply; more fails the channel
	upstreamBuf    = 32 << 10
)

// What the client tap is reading.
const (
	modeCommand = iota // command lines
	modeBody           // a DATA body, up to <CRLF>.<CRLF>
	modeChunk          // the raw bytes of a BDAT chunk
	modeOpaque         // after STARTTLS: nothing can be parsed any more
)

// verbSASL stands for a line of a SASL exchange after AUTH: a response,
// not a command.
const verbSASL = "(sasl)"

// channel is one SMTP channel: a TCP connection to the upstream and the
// taps that follow the SMTP dialogue on both streams to apply faults.
//
// The client tap (fromClient) runs in the conn's process goroutine, the
// reply tap (fromUpstream) in readUpstream; mu serialises them. Both queue
// what goes to the client while holding mu, so that replies the relay
// makes up are delivered in their place among the upstream's. Neither
// writes to the upstream while holding mu: that could deadlock against an
// upstream that is itself blocked writing replies.
type channel struct {
	unwatch func() bool // stops closing up when the connection ends

	c      *conn
	id     int
	up     net.Conn
	addr   string // up's local address: how the in-process backend knows it
	binary bool
	log    *slog.Logger
	done   chan struct{} // closed when readUpstream returns

	mu   sync.Mutex
	quit bool // the upstream answered QUIT 221: its hang-up is the normal end
	// ended: a terminal SMTP_CHANNEL_CLOSED or SMTP_CHANNEL_ERROR was queued,
	// or the client closed the channel. Nothing more is forwarded.
	ended bool
	// dead: the WebSocket is being closed by a fault. Nothing more is
	// forwarded.
	dead bool
	// stalled: a StallReply or a 421 ReplaceReply fired; the client's
	// bytes are swallowed.
	stalled bool

	// Client to upstream.
	mode       int
	line       []byte // a command line being received
	overlong   bool   // in a command line longer than maxCommandLine
	body       int    // state of the end-of-data detector (go-smtp's)
	chunkLeft  int64
	chunkLast  bool
	chunkDrop  bool     // the BDAT was answered by a fault: swallow its chunk
	chunkEntry *pending // the reply awaited for the BDAT LAST being received
	sasl       bool     // the next line is a SASL response
	upCount    int64
	upLimit    int64 // DropAfterBytes client to upstream; -1: none

	// Upstream to client.
	rbuf      []byte // a reply being received
	batching  bool   // emitLocked gathers into batch (one upstream read)
	batch     []byte
	fifo      []*pending // replies awaited, in order
	downCount int64
	downLimit int64 // DropAfterBytes upstream to client; -1: none
}

// pending is a reply the client awaits, in order.
type pending struct {
	verb        string // upper-case verb, "." (end of DATA), verbSASL, or "" for the greeting
	synthetic   []byte // the relay answers itself with this, when it reaches the head
	replace     []byte // send this instead of the upstream's reply
	dropOnReply bool   // cut the WebSocket instead of forwarding the reply
	closeAfter  bool   // 421: close the channel after the reply
	endOfData   bool   // its reply answers an end of data (DATA's "." or BDAT ... LAST)
}

func newChannel(c *conn, id int, up net.Conn, binary bool) *channel {
	return &channel{
		c:         c,
		id:        id,
		up:        up,
		addr:      up.LocalAddr().String(),
		binary:    binary,
		log:       c.log.With("channel", id),
		done:      make(chan struct{}),
		upLimit:   -1,
		downLimit: -1,
		fifo:      []*pending{{verb: ""}}, // the greeting
	}
}

func (ch *channel) isEnded() bool {
	ch.mu.Lock()
	defer ch.mu.Unlock()
	return ch.ended
}

// endByClient marks the channel ended on the client's request; it reports
// false if the relay had already ended it.
func (ch *channel) endByClient() bool {
	ch.mu.Lock()
	defer ch.mu.Unlock()
	if ch.ended {
		return false
	}
	ch.ended = true
	return true
}

// endLocked ends the channel from the relay's side with CLOSED.
func (ch *channel) endLocked(reason string) {
	ch.finishLocked(wire.TypeChannelClosed, wire.ChannelClosed{Reason: reason}, "reason", reason)
}

// failLocked ends the channel from the relay's side with ERROR.
func (ch *channel) failLocked(msg string) {
	ch.finishLocked(wire.TypeChannelError, wire.ChannelError{Error: msg}, "error", msg)
}

// finishLocked sends the channel's one CLOSED or ERROR and hangs up the
// upstream.
func (ch *channel) finishLocked(typ string, data any, key, why string) {
	ch.flushBatch()
	if ch.ended || ch.dead {
		return
	}
	ch.ended = true
	ch.log.Info("relaytest: channel ended", "type", typ, key, why)
	ch.c.sendControl(typ, data)
	_ = ch.up.Close()
}

// closeForFault closes the WebSocket cleanly with the fault's status
// (1001 when it names none); nothing more of the channel is forwarded.
func (ch *channel) closeForFault(f Fault) {
	ch.dead = true
	code := f.Code
	if code == 0 {
		code = websocket.StatusGoingAway
	}
	ch.c.closeWith(code, "injected fault")
}

// settle keeps the in-process mailbox in step with the reply the client
// gets to an end of data: the message stored for a 2xx is withdrawn when a
// fault turns that 2xx into a refusal, and a fault never turns a refusal
// into a 2xx (the client would be told "delivered" for nothing stored).
func (ch *channel) settle(e *pending, code int, out, upstream []byte) []byte {
	if code/100 != 2 {
		return upstream
	}
	id, ok := ch.c.s.takeStored(ch.addr)
	if ok && e.replace != nil && replyCode(out)/100 != 2 {
		ch.c.s.withdraw(id)
	}
	return out
}

// readUpstream forwards the upstream's bytes until it hangs up.
func (ch *channel) readUpstream() {
	defer ch.c.wg.Done()
	defer close(ch.done)
	buf := make([]byte, upstreamBuf)
	for {
		n, err := ch.up.Read(buf)
		if n > 0 {
			ch.fromUpstream(buf[:n])
		}
		if err != nil {
			ch.mu.Lock()
			if len(ch.rbuf) > 0 {
				ch.emitLocked(ch.rbuf) // an unterminated last line
				ch.rbuf = nil
			}
			reason := "upstream closed the connection"
			switch {
			case ch.quit:
				// The normal end, not a failure, whichever side hung up
				// first: the upstream after its 221, or the relay closing
				// the upstream connection when the client left after it.
				reason = "session ended with QUIT"
			case !errors.Is(err, io.EOF):
				reason = "upstream connection failed: " + err.Error()
			}
			ch.endLocked(reason)
			ch.mu.Unlock()
			return
		}
	}
}

// fromClient forwards SMTP bytes from the client; false ends the
// connection.
func (ch *channel) fromClient(p []byte) bool {
	ch.mu.Lock()
	out, act := ch.tapClient(p)
	ch.mu.Unlock()
	if len(out) > 0 {
		if _, err := ch.up.Write(out); err != nil {
			// readUpstream sees the failure too and ends the channel.
			ch.log.Debug("relaytest: write to upstream failed", "err", err)
			_ = ch.up.Close()
		}
	}
	switch act {
	case actCut:
		ch.c.cut()
		return false
	case actStop:
		return false
	}
	return true
}

// What the processor does after forwarding a tapped chunk.
const (
	actContinue = iota
	actStop     // a close is queued
	actCut      // cut the WebSocket now
)

// tapClient parses bytes from the client, applies faults, and returns what
// to forward upstream and what to do then. Called with mu held.
func (ch *channel) tapClient(p []byte) (out []byte, act int) {
	if ch.ended || ch.dead || ch.stalled {
		return nil, actContinue
	}
	cutAfter := false
	if ch.upLimit >= 0 {
		if left := ch.upLimit - ch.upCount; int64(len(p)) >= left {
			p = p[:left]
			cutAfter = true
		}
		ch.upCount += int64(len(p))
	}
	ch.observe(false, p)
	if ch.mode != modeCommand && len(ch.line) > 0 {
		// The reply tap switched modes while a partial line was held (a
		// client that did not wait for 354): those bytes belong to the new
		// mode.
		p = append(ch.line, p...)
		ch.line = nil
	}
	for len(p) > 0 && act == actContinue && !ch.ended && !ch.dead && !ch.stalled {
		switch ch.mode {
		case modeOpaque:
			out = append(out, p...)
			p = nil

		case modeBody:
			end := -1
			for i, b := range p {
				ch.body = dotStep(ch.body, b)
				if ch.body == dotEOF {
					end = i + 1
					break
				}
			}
			if end < 0 {
				out = append(out, p...)
				p = nil
				continue
			}
			seg := p[:end]
			p = p[end:]
			ch.mode = modeCommand
			e := &pending{verb: "."}
			var ok bool
			if out, act, ok = ch.endOfData(e, seg, min(3, len(seg)), out); ok {
				ch.push(e)
				out = append(out, seg...)
			}

		case modeChunk:
			n := min(int64(len(p)), ch.chunkLeft)
			seg := p[:n]
			p = p[n:]
			ch.chunkLeft -= n
			if ch.chunkLeft > 0 || !ch.chunkLast || ch.chunkDrop {
				if !ch.chunkDrop {
					out = append(out, seg...)
				}
				if ch.chunkLeft == 0 {
					ch.mode = modeCommand
				}
				continue
			}
			ch.mode = modeCommand
			var ok bool
			if out, act, ok = ch.endOfData(ch.chunkEntry, seg, 1, out); ok {
				out = append(out, seg...)
			}
			ch.chunkEntry = nil

		default: // modeCommand
			i := bytes.IndexByte(p, '\n')
			if i < 0 {
				if ch.overlong {
					out = append(out, p...)
				} else if ch.line = append(ch.line, p...); len(ch.line) > maxCommandLine {
					out = append(out, ch.line...)
					ch.line = nil
					ch.overlong = true
				}
				p = nil
				continue
			}
			line := p[:i+1]
			if len(ch.line) > 0 {
				line = append(ch.line, line...)
				ch.line = nil
			}
			p = p[i+1:]
			if ch.overlong {
				ch.overlong = false
				out = append(out, line...)
				continue
			}
			out, act = ch.command(line, out)
		}
	}
	if cutAfter && act == actContinue && !ch.dead {
		ch.log.Info("relaytest: fault", "fault", DropAfterBytes, "direction", "to server", "bytes", ch.upLimit)
		out = append(out, ch.line...) // the count is what passes, parsed or not
		ch.line = nil
		ch.dead = true
		act = actCut
	}
	return out, act
}

// command handles one command line (with its CRLF) from the client.
func (ch *channel) command(line, out []byte) ([]byte, int) {
	if ch.sasl {
		ch.sasl = false
		ch.log.Debug("relaytest: C: (SASL response)")
		ch.push(&pending{verb: verbSASL})
		return append(out, line...), actContinue
	}
	text := strings.TrimRight(string(line), "\r\n")
	verb, arg, _ := strings.Cut(text, " ")
	verb = strings.ToUpper(verb)
	if verb == "AUTH" {
		mech, _, _ := strings.Cut(arg, " ")
		ch.log.Debug("relaytest: C: AUTH " + mech + " ...")
	} else {
		ch.log.Debug("relaytest: C: " + text)
	}
	rcpt := ""
	if verb == "RCPT" {
		rcpt = rcptAddress(arg)
	}
	size, last, isBDAT := int64(-1), false, false
	if verb == "BDAT" {
		size, last, isBDAT = parseBDAT(arg)
	}

	if verb == "MAIL" {
		if reply, ok := ch.c.s.throttled(time.Now()); ok {
			ch.log.Info("relaytest: throttled", "reply", reply)
			return ch.replace(verb, reply, out, size, last, isBDAT)
		}
	}
	if f, ok := ch.c.s.takeFault(func(f *Fault) bool { return f.matchCommand(verb, rcpt) }); ok {
		ch.log.Info("relaytest: fault", "fault", f.Kind, "command", verb)
		switch f.Kind {
		case ReplaceReply:
			return ch.replace(verb, f.Reply, out, size, last, isBDAT)
		case StallReply:
			ch.stalled = true
			return out, actContinue
		case CloseWebSocket:
			ch.closeForFault(f)
			return out, actStop
		case DropAfterRcpt:
			ch.dead = true
			return append(out, line...), actCut
		}
	}

	e := &pending{verb: verb}
	if isBDAT && size == 0 && last {
		// An empty last chunk: the command itself ends the data.
		var ok bool
		var act int
		if out, act, ok = ch.endOfData(e, line, len(line), out); !ok {
			return out, act
		}
		ch.push(e)
		return append(out, line...), act
	}
	ch.push(e)
	out = append(out, line...)
	if isBDAT {
		ch.startChunk(size, last, e, false)
	}
	return out, actContinue
}

// replace answers a command with reply instead of forwarding it (a BDAT
// command's chunk is swallowed with it).
func (ch *channel) replace(verb, reply string, out []byte, size int64, last, isBDAT bool) ([]byte, int) {
	r, code, _ := formatReply(reply)
	ch.push(&pending{verb: verb, synthetic: r, closeAfter: code == 421})
	if code == 421 {
		// A server that says 421 processes nothing after it (RFC 5321
		// §3.8): what the client pipelined behind it is not forwarded.
		ch.stalled = true
		ch.flushSynthetic()
		return out, actContinue
	}
	ch.flushSynthetic()
	if isBDAT {
		ch.startChunk(size, last, nil, true)
	}
	return out, actContinue
}

func (ch *channel) startChunk(size int64, last bool, e *pending, drop bool) {
	if size <= 0 {
		return
	}
	ch.mode = modeChunk
	ch.chunkLeft = size
	ch.chunkLast = last
	ch.chunkDrop = drop
	ch.chunkEntry = e
}

// endOfData applies the faults of the end of data: seg is the part of the
// client's frame that ends the data (it has not been appended to out), of
// which the last withhold bytes are the end marker that a stall or a close
// keeps from the upstream. e is the reply awaited for it. It reports
// whether seg is to be forwarded.
func (ch *channel) endOfData(e *pending, seg []byte, withhold int, out []byte) ([]byte, int, bool) {
	ch.log.Debug("relaytest: C: (end of data)")
	if e != nil {
		e.endOfData = true
	}
	f, ok := ch.c.s.takeFault((*Fault).matchEndOfData)
	if !ok {
		return out, actContinue, true
	}
	ch.log.Info("relaytest: fault", "fault", f.Kind, "command", ".")
	switch f.Kind {
	case StallReply:
		ch.stalled = true
		return append(out, seg[:len(seg)-withhold]...), actContinue, false
	case CloseWebSocket:
		ch.closeForFault(f)
		return append(out, seg[:len(seg)-withhold]...), actStop, false
	case ReplaceReply:
		reply, code, _ := formatReply(f.Reply)
		if e != nil {
			e.replace = reply
			e.closeAfter = code == 421
		}
	case DropAfterFinalDot:
		if e != nil {
			e.dropOnReply = true
		}
	}
	return out, actContinue, true
}

// push adds an awaited reply. Called with mu held.
func (ch *channel) push(e *pending) {
	if len(ch.fifo) >= maxPending {
		ch.failLocked("too many commands awaiting a reply")
		return
	}
	ch.fifo = append(ch.fifo, e)
}

// flushSynthetic sends the relay's own replies that are next in order.
// Called with mu held.
func (ch *channel) flushSynthetic() {
	for len(ch.fifo) > 0 && ch.fifo[0].synthetic != nil && !ch.ended && !ch.dead {
		e := ch.fifo[0]
		ch.fifo[0] = nil
		ch.fifo = ch.fifo[1:]
		ch.log.Debug("relaytest: S: (injected) " + firstLine(e.synthetic))
		ch.emitLocked(e.synthetic)
		if e.closeAfter {
			ch.endLocked("injected 421 reply")
		}
	}
}

// fromUpstream parses the upstream's replies and forwards them, in order
// with the relay's own.
func (ch *channel) fromUpstream(p []byte) {
	ch.mu.Lock()
	defer ch.mu.Unlock()
	if ch.ended || ch.dead {
		return
	}
	if ch.mode == modeOpaque {
		ch.emitLocked(p)
		return
	}
	ch.rbuf = append(ch.rbuf, p...)
	ch.batching = true
	defer ch.flushBatch()
	for !ch.ended && !ch.dead && ch.mode != modeOpaque {
		end := replyEnd(ch.rbuf)
		if end < 0 {
			if len(ch.rbuf) > maxReply {
				// Too long to hold: forward its complete lines, or if there
				// are none its complete characters, and parse the rest.
				n := bytes.LastIndexByte(ch.rbuf, '\n') + 1
				if n == 0 {
					n = wire.RuneCut(ch.rbuf)
				}
				ch.emitLocked(ch.rbuf[:n])
				ch.rbuf = append(ch.rbuf[:0], ch.rbuf[n:]...)
			}
			break
		}
		ch.reply(ch.rbuf[:end])
		ch.rbuf = append(ch.rbuf[:0], ch.rbuf[end:]...)
	}
	if ch.mode == modeOpaque && len(ch.rbuf) > 0 {
		ch.emitLocked(ch.rbuf)
		ch.rbuf = nil
	}
}

// reply handles one complete reply from the upstream. Called with mu held.
func (ch *channel) reply(b []byte) {
	code := replyCode(b)
	ch.log.Debug("relaytest: S: " + firstLine(b))
	var e *pending
	if len(ch.fifo) > 0 {
		e = ch.fifo[0]
		ch.fifo[0] = nil
		ch.fifo = ch.fifo[1:]
	}
	if e == nil {
		ch.emitLocked(b) // unsolicited, e.g. a 421 before closing
		return
	}
	if e.dropOnReply {
		ch.log.Info("relaytest: fault fires: reply to the end of data withheld, connection cut")
		ch.flushBatch()
		ch.dead = true
		ch.c.send(outFrame{abort: true})
		return
	}
	out := b
	if e.replace != nil {
		out = e.replace
	}
	if e.verb == "EHLO" && code == 250 && len(ch.c.s.opts.HideExtensions) > 0 {
		out = hideExtensions(out, ch.c.s.opts.HideExtensions)
	}
	if e.endOfData && ch.c.s.smtp != nil {
		out = ch.settle(e, code, out, b)
	}
	// The state changes before the reply goes out, so it is in place when
	// the client's next bytes, which the reply allows, arrive.
	switch {
	case e.verb == "DATA" && code == 354:
		ch.mode = modeBody
		ch.body = dotBeginLine
	case (e.verb == "AUTH" || e.verb == verbSASL) && code == 334:
		ch.sasl = true
	case e.verb == "STARTTLS" && code == 220:
		ch.mode = modeOpaque
	case e.verb == "QUIT" && code == 221:
		ch.quit = true
	}
	ch.emitLocked(out)
	if e.closeAfter {
		ch.endLocked("injected 421 reply")
		return
	}
	ch.flushSynthetic()
}

// flushBatch emits the replies gathered from one read of the upstream.
// Called with mu held.
func (ch *channel) flushBatch() {
	if !ch.batching {
		return
	}
	ch.batching = false
	b := ch.batch
	ch.batch = ch.batch[:0]
	ch.emitLocked(b)
}

// emitLocked queues SMTP bytes for the client, in frames of the channel's
// encoding. Called with mu held.
func (ch *channel) emitLocked(b []byte) {
	if ch.batching {
		// Replies parsed from one read of the upstream go out together,
		// as a relay forwarding what it read would send them.
		ch.batch = append(ch.batch, b...)
		return
	}
	if ch.ended || ch.dead || len(b) == 0 {
		return
	}
	cut := false
	if ch.downLimit >= 0 {
		if left := ch.downLimit - ch.downCount; int64(len(b)) >= left {
			b = b[:left]
			for !ch.binary && len(b) > 0 && !utf8.Valid(b) {
				b = b[:len(b)-1] // do not split a character
			}
			cut = true
		}
		ch.downCount += int64(len(b))
	}
	if !ch.binary && !utf8.Valid(b) {
		ch.failLocked("upstream sent bytes that are not valid UTF-8: they cannot travel in a JSON data message (use a binary channel)")
		return
	}
	ch.observe(true, b)
	for len(b) > 0 {
		n := len(b)
		if ch.binary {
			n = min(n, wire.MaxData)
		} else if n > wire.MaxDataChunk {
			n = wire.MaxDataChunk
			for n > 0 && !utf8.RuneStart(b[n]) {
				n--
			}
		}
		chunk := b[:n]
		b = b[n:]
		var f outFrame
		if ch.binary {
			f = outFrame{typ: websocket.MessageBinary, data: bytes.Clone(chunk)}
		} else {
			data, _ := wire.EncodeData(wire.TypeFromServer, chunk) // valid UTF-8: checked above
			f = outFrame{typ: websocket.MessageText, data: data}
		}
		if !ch.c.send(f) {
			return
		}
	}
	if cut {
		ch.log.Info("relaytest: fault", "fault", DropAfterBytes, "direction", "to client", "bytes", ch.downLimit)
		ch.dead = true
		ch.c.send(outFrame{abort: true})
	}
}

// observe reports SMTP bytes to Options.OnSMTPData. Called with mu held,
// which keeps each direction in order.
func (ch *channel) observe(fromServer bool, p []byte) {
	on := ch.c.s.opts.OnSMTPData
	if on == nil || len(p) == 0 {
		return
	}
	defer func() {
		if v := recover(); v != nil {
			ch.log.Error("relaytest: OnSMTPData panicked", "panic", v)
		}
	}()
	on(SMTPData{Conn: ch.c.id, Channel: ch.id, FromServer: fromServer, Data: bytes.Clone(p)})
}

// hideExtensions removes the lines of an EHLO reply whose keyword is in
// hide, and sets the continuation marks again.
func hideExtensions(b []byte, hide []string) []byte {
	lines := strings.Split(strings.TrimSuffix(string(b), "\r\n"), "\r\n")
	kept := lines[:1]
	for _, l := range lines[1:] {
		kw, _, _ := strings.Cut(l[min(len(l), 4):], " ")
		if !slices.ContainsFunc(hide, func(h string) bool { return strings.EqualFold(h, kw) }) {
			kept = append(kept, l)
		}
	}
	var out []byte
	for i, l := range kept {
		sep := "-"
		if i == len(kept)-1 {
			sep = " "
		}
		if len(l) >= 3 {
			out = append(out, l[:3]+sep+l[min(len(l), 4):]+"\r\n"...)
		}
	}
	return out
}

// replyEnd returns the length of the first complete reply in b (through
// the line that is not a "ddd-" continuation), or -1.
func replyEnd(b []byte) int {
	start := 0
	for {
		i := bytes.IndexByte(b[start:], '\n')
		if i < 0 {
			return -1
		}
		line := b[start : start+i+1]
		start += i + 1
		if len(line) >= 4 && isDigits(string(line[:3])) && line[3] == '-' {
			continue
		}
		return start
	}
}

// replyCode returns the code of a reply, or 0.
func replyCode(b []byte) int {
	if len(b) < 3 || !isDigits(string(b[:3])) {
		return 0
	}
	n, _ := strconv.Atoi(string(b[:3]))
	return n
}

func firstLine(b []byte) string {
	if i := bytes.IndexByte(b, '\n'); i >= 0 {
		b = b[:i]
	}
	return strings.TrimRight(string(b), "\r")
}

// rcptAddress returns the address inside <> of a RCPT argument.
func rcptAddress(arg string) string {
	i := strings.IndexByte(arg, '<')
	if i < 0 {
		return ""
	}
	j := strings.IndexByte(arg[i:], '>')
	if j < 0 {
		return ""
	}
	return arg[i+1 : i+j]
}

// parseBDAT parses "<size> [LAST]"; ok is false for anything else, which
// the upstream rejects without reading a chunk.
func parseBDAT(arg string) (size int64, last, ok bool) {
	f := strings.Fields(arg)
	if len(f) == 0 || len(f) > 2 {
		return -1, false, false
	}
	if len(f) == 2 {
		if !strings.EqualFold(f[1], "LAST") {
			return -1, false, false
		}
		last = true
	}
	n, err := strconv.ParseUint(f[0], 10, 32) // as go-smtp: larger is malformed
	if err != nil {
		return -1, false, false
	}
	return int64(n), last, true
}

// The end-of-data detector: the state machine of go-smtp's dataReader
// (itself net/textproto's), so that the relay sees the end of data exactly
// where the in-process upstream does.
const (
	dotBeginLine = iota
	dotDot
	dotDotCR
	dotCR
	dotData
	dotEOF
)

func dotStep(state int, c byte) int {
	switch state {
	case dotBeginLine:
		switch c {
		case '.':
			return dotDot
		case '\r':
			return dotCR
		}
		return dotData
	case dotDot:
		if c == '\r' {
			return dotDotCR
		}
		return dotData
	case dotDotCR:
		if c == '\n' {
			return dotEOF
		}
		return dotData
	case dotCR:
		if c == '\n' {
			return dotBeginLine
		}
		return dotData
	default: // dotData
		if c == '\r' {
			return dotCR
		}
		return dotData
	}
}
