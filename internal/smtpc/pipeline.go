package smtpc

import (
	"bytes"
	"cmp"
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/emersion/go-smtp"
)

// ErrWithdrawn is the error of a transaction its Tx withdrew before the
// end of data.
var ErrWithdrawn = errors.New("transaction withdrawn before its end of data")

// ErrClosed is the error of transactions still open when Close was called
// on a healthy connection.
var ErrClosed = errors.New("connection closed with the transaction open")

// Tx is one transaction: MAIL, RCPTs, the body, the end of data.
type Tx struct {
	Mail  string   // the MAIL command, from MailCommand
	Rcpts []string // the RCPT commands, from RcptCommand
	Body  io.Reader
	// Raw sends Body as it is, for BODY=BINARYMIME: no line ending
	// checked or added, no line length limit. BDAT only.
	Raw bool
	// Canceled, if set, is asked before the first command and before each
	// BDAT chunk: true withdraws the transaction (with RSET once something
	// of it is written, so the session goes on).
	Canceled func() bool
	// BeforeEnd, if set, is called right before the end of data is
	// written: false withdraws the transaction (with BDAT by RSET; with
	// DATA by closing the connection, the only way to stop a DATA).
	BeforeEnd func() bool
	// Done receives the transaction's result, exactly once, on the
	// engine's reader goroutine or on the caller's.
	Done func(*Result)

	seq          uint64
	pending      int       // replies still owed
	pushed       int       // replies asked for
	closed       bool      // every command is written
	slot         bool      // holds a place in the window: replies are owed
	lastInStep   bool      // its last reply so far answered a strict command in step
	flushedAt    time.Time // when its end of data was all handed on (windowed only; p.mu)
	endOff       int64     // stream offset after its end of data (windowed only; writer)
	finished     bool      // Done was called or is being called
	endAt        int64     // stream offset of the end of data; -1 before it
	endN         uint64    // the end of data's place among the replies owed
	rcptAnswered int
	end          Reply // the reply to the end of data, which res.End points to
	res          Result
}

// Result is what became of a transaction.
type Result struct {
	// Mail is nil when the server accepted MAIL, else its refusal.
	Mail *smtp.SMTPError
	// Rcpt holds, for each RCPT in order, nil when accepted or the refusal.
	// Entries past RcptAnswered were not answered.
	Rcpt         []*smtp.SMTPError
	RcptAnswered int
	// DataCmd is a refusal of DATA (no 354), or of a BDAT chunk before the
	// last one.
	DataCmd *smtp.SMTPError
	// End is the reply to the end of data ("." or BDAT LAST), whatever
	// its code (a 3xx there is out of SMTP's grammar); nil when there was
	// none. Only End decides whether the message was accepted.
	End *Reply
	// Confirmed is set when a reply that can only answer a command written
	// after this transaction's last one came as that command expects: 354
	// to DATA, 221 to QUIT, or 250 to RSET or NOOP with an enhanced code
	// MAIL and RCPT are not answered with (see unmistakable); never a
	// 421, which any command may get. The replies before it were then in
	// step with the commands, none shifted by a stray, lost or duplicated
	// line. Without it a 2xx to the end of data may be another command's.
	Confirmed bool
	// Untrusted is set when the connection broke on a protocol error (a
	// reply out of step or out of grammar) before this transaction's
	// replies were confirmed: the stream was shifted somewhere, and none
	// of its replies, refusals included, can be taken for its own.
	Untrusted bool
	// Err is set when the transaction did not run to its end, or its
	// replies were not confirmed: the connection failed (or the server
	// closed it with 421), the body could not be read or had a bare line
	// ending (Body), the Tx withdrew it (ErrWithdrawn).
	Err  error
	Body error
	// EndSent is set when the end of data was at least partly handed on in
	// a way the server processes (not after a 421): with no confirmed
	// reply to it, the server may have the message.
	EndSent bool
}

type kind uint8

const (
	kReset kind = iota // RSET before a pipelined MAIL
	kMail
	kRcpt
	kData
	kChunk
	kEnd
	kAbort // RSET that withdraws a transaction, or after a failure
	kQuit
	kNoop // NOOP that confirms the transactions before it (Sync)
)

// strict reports whether the command has one right answer (250, or 221
// to QUIT), so that any other reply shows the replies out of step.
func (k kind) strict() bool { return k == kReset || k == kAbort || k == kQuit || k == kNoop }

type expect struct {
	tx   *Tx
	kind kind
	idx  int
	end  int64 // stream offset just past the command (and its chunk, for BDAT)
}

// pipeline state, used after Start. The writer side (Send, Wait, Quit,
// Close) is one goroutine; the reader is another.
type pipe struct {
	pipelining, chunking bool
	slots                chan struct{}
	progress             chan struct{} // buffered 1: a reply was handled
	readerDone           chan struct{}
	rbuf, cbuf, chunk    []byte
	sent                 int // transactions started

	// syncOwed is set when the last command owed a reply is an end of
	// data: a strict command after it is what confirms it. Writer only.
	syncOwed bool
	// unflushed are the transactions whose BDAT LAST is written and not
	// yet all handed to the connection: stampHanded stamps their
	// flushedAt. Writer only.
	unflushed []*Tx
	win       window

	mu          sync.Mutex
	fifo        []expect
	head        int
	pushed      uint64 // expectations pushed
	done        uint64 // replies handled
	live        map[*Tx]struct{}
	unconfirmed []*Tx  // answered, waiting for an in-step reply after them
	cmd         []byte // the writer's: a BDAT command being made
	spare       []*Tx  // the reader's: an emptied array for unconfirmed, not to grow one per email
	inStepAt    uint64 // the place of the last strict command answered in step
	broken      error
	shifted     bool             // the reader found the replies out of step or out of grammar
	style       [kNoop + 1]style // per kind of command, its first 2xx's enhanced code
	closing     uint64           // after a 421, the place of the first command not processed; 0: none
	noopBlind   bool             // a NOOP's 250 was worded as MAIL's or RCPT's: NOOP confirms nothing
}

const chunkSize = 256 << 10

// Start begins the pipelined phase: from here on replies are read by a
// goroutine of the client, which ends with Close. Bytes the server sent
// after its last handshake reply answer nothing the client wrote: the
// connection is then broken (a protocol error) before anything is sent.
func (c *Client) Start() {
	p := &c.p
	p.pipelining = !c.cfg.NoPipelining && c.Has("PIPELINING")
	p.chunking = c.Has("CHUNKING")
	w := 1
	switch {
	case p.pipelining && p.chunking:
		w = c.cfg.Window
	case p.pipelining:
		w = 2 // one end of data in flight with the next transaction's commands
	}
	p.slots = make(chan struct{}, w)
	p.win.init(w, c.cfg.StartWindow, c.cfg.FixedWindow || !(p.pipelining && p.chunking))
	p.progress = make(chan struct{}, 1)
	p.readerDone = make(chan struct{})
	p.mu.Lock() // Settling and Outstanding may be asked from another goroutine already
	p.live = map[*Tx]struct{}{}
	p.mu.Unlock()
	p.rbuf = make([]byte, 32<<10)
	if n := c.br.Buffered(); n > 0 {
		c.readerBreak(c.strayErr(n))
	}
	go c.readLoop()
}

// Mode describes how transactions are sent, for logs.
func (c *Client) Mode() string {
	switch p := &c.p; {
	case p.pipelining && p.chunking:
		if p.win.fixed {
			return "pipelined BDAT, window " + strconv.Itoa(cap(p.slots))
		}
		return "pipelined BDAT, adaptive window up to " + strconv.Itoa(cap(p.slots))
	case p.pipelining:
		return "pipelined DATA"
	case p.chunking:
		return "lock-step BDAT"
	}
	return "lock-step DATA"
}

// Windowed reports whether several transactions may be in flight, each
// written whole without waiting for a reply.
func (c *Client) Windowed() bool { return c.p.pipelining && c.p.chunking }

func (c *Client) readLoop() {
	p := &c.p
	defer close(p.readerDone)
	for {
		r, err := c.rr.read()
		if err != nil {
			c.readerBreak(err)
			return
		}
		p.mu.Lock()
		if p.head == len(p.fifo) {
			// Unsolicited: a 421 says nothing written from now on is
			// processed.
			c.unexpected(r, fmt.Errorf("%w: reply %d with no command waiting for it", ErrProtocol, r.Code))
			return
		}
		e := p.fifo[p.head]
		if c.cc.started.Load() < e.end {
			// Its command has not been handed to the connection yet: the
			// server cannot have read it. A stray or early reply; a 421
			// is the server closing, which processes nothing after it.
			c.unexpected(r, fmt.Errorf("%w: reply %d came before its command (%s) was sent", ErrProtocol, r.Code, e.kind))
			return
		}
		p.fifo[p.head] = expect{}
		p.head++
		if p.head >= 1024 && p.head*2 >= len(p.fifo) {
			// A window that never empties would grow the queue for the
			// whole session: move what is left down.
			p.fifo = p.fifo[:copy(p.fifo, p.fifo[p.head:])]
			p.head = 0
		}
		if p.head == len(p.fifo) {
			p.fifo, p.head = p.fifo[:0], 0
			c.cc.SetReadDeadline(time.Time{})
		} else if c.cfg.Timeout > 0 {
			c.cc.SetReadDeadline(time.Now().Add(c.cfg.Timeout))
		}
		p.done++
		if r.Code == 421 && p.closing == 0 {
			p.closing = p.done + 1
		}
		inStep, err := apply(e, r)
		if k := e.kind.styleKey(); err == nil && k != kEnd {
			err = p.style[k].check(e.kind, r)
		}
		if err != nil || inStep && (e.kind == kReset || e.kind == kAbort || e.kind == kNoop) && !p.unmistakable(r) {
			if inStep && e.kind == kNoop {
				p.noopBlind = true
			}
			inStep = false
		}
		if err == nil && r.Code == 421 {
			err = r.Err()
		}
		// Recorded before the lock is let go: a writer that sees this
		// reply handled (Quit) sees why the connection ends with it.
		first := err != nil && c.fail(err, true)
		var fin []*Tx
		if inStep {
			p.inStepAt = p.done
			// Every transaction answered before this reply was answered in
			// step: a shifted stream would have given this command another
			// command's reply.
			for _, tx := range p.unconfirmed {
				tx.res.Confirmed, tx.finished = true, true
			}
			fin, p.unconfirmed, p.spare = p.unconfirmed, p.spare, nil
		}
		if tx := e.tx; tx != nil {
			tx.pending--
			// Its own strict command confirms it only as its last one (a
			// RSET that withdraws it): the RSET before its MAIL confirms
			// the transactions before, not its own later replies.
			tx.lastInStep = inStep
			if tx.closed && tx.pending == 0 && !tx.finished {
				fin = c.answered(tx, fin)
			}
		}
		p.mu.Unlock()
		for _, tx := range fin {
			c.finalize(tx)
		}
		if cap(fin) > 0 && cap(fin) <= 1024 {
			clear(fin) // the Txs go with their results
			p.spare = fin[:0]
		}
		if first {
			c.raw.Close()
		}
		// Signalled after the results are out, so that a writer woken by
		// it sees the transactions gone.
		select {
		case p.progress <- struct{}{}:
		default:
		}
		if err != nil {
			return
		}
	}
}

// unexpected ends the connection on r, a reply no command written can
// have asked for (p.mu is held, and let go): a 421 is the server closing,
// which processes nothing after it; anything else is err, a protocol
// error.
func (c *Client) unexpected(r Reply, err error) {
	p := &c.p
	if r.Code == 421 && p.closing == 0 {
		p.closing = p.done + 1
	}
	p.mu.Unlock()
	if r.Code == 421 {
		c.breakWith(r.Err())
		return
	}
	c.readerBreak(err)
}

// readerBreak is breakWith for what the reader found (see fail).
func (c *Client) readerBreak(err error) { c.breakAs(err, true) }

// Quiet returns an error if the server has sent bytes that no command
// asked for: to be called at the end of the handshake, when nothing is
// owed, so that such a session fails before it starts.
func (c *Client) Quiet() error {
	if n := c.br.Buffered(); n > 0 {
		return c.strayErr(n)
	}
	return nil
}

// strayErr is the error of n bytes waiting after the handshake: the 421
// they start with, if they do (a server closing, which processes nothing
// after it), else a protocol error.
func (c *Client) strayErr(n int) error {
	b, _ := c.br.Peek(n)
	if line, _, ok := bytes.Cut(b, []byte("\n")); ok {
		if code, _, text, err := parseLine(string(bytes.TrimSuffix(line, []byte("\r")))); err == nil && code == 421 {
			return Reply{Code: code, Message: text}.Err()
		}
	}
	return fmt.Errorf("%w: the server sent a reply after the handshake with no command waiting for it", ErrProtocol)
}

// answered handles tx, every command written and every reply in: it is
// finished now if its replies are confirmed (its last command was a strict
// one, answered in step), else it waits for a confirming reply. It returns
// fin with tx added when tx is finished. p.mu is held.
func (c *Client) answered(tx *Tx, fin []*Tx) []*Tx {
	if !tx.flushedAt.IsZero() {
		c.p.win.sample(time.Now(), tx.flushedAt, len(c.p.slots))
	}
	c.freeSlot(tx) // nothing of it is in flight any more
	if tx.lastInStep || tx.pushed == 0 {
		tx.res.Confirmed = tx.pushed > 0
		tx.finished = true
		return append(fin, tx)
	}
	c.p.unconfirmed = append(c.p.unconfirmed, tx)
	return fin
}

// apply records reply r to the command e stands for. inStep reports a
// strict command answered as it expects; an error means the connection
// cannot go on.
func apply(e expect, r Reply) (inStep bool, err error) {
	class := r.Code / 100
	tx := e.tx
	switch e.kind {
	case kReset, kAbort, kNoop, kQuit:
		want := 250
		if e.kind == kQuit {
			want = 221
		}
		switch {
		case r.Code == 421:
			// Any command may get it, the end of data included: it
			// confirms nothing (the reader breaks the connection on it).
			return false, nil
		case r.Code != want:
			return false, fmt.Errorf("%w: reply %d to %s: the replies are out of step with the commands", ErrProtocol, r.Code, e.kind)
		case want == 250 && r.AddressStatus():
			// An address status (X.1.X) is what MAIL and RCPT get: the
			// reply may be theirs, one line late. Some servers answer
			// RSET so ("250 2.1.5 Flushed"): not an error, but no proof.
			// (221 answers only QUIT, whatever its text.)
			return false, nil
		}
		return true, nil
	case kEnd:
		// Recorded whatever it is: a reply outside the grammar of an end
		// of data leaves the outcome unknown, not "never sent".
		tx.end = r // in the Tx: no allocation, and r stays on the stack
		tx.res.End = &tx.end
		tx.res.EndSent = true
		switch {
		case class == 3:
			return false, fmt.Errorf("%w: reply %d to the end of data", ErrProtocol, r.Code)
		case class == 2 && r.AddressStatus():
			// A 2xx with an address status (X.1.X) is MAIL's or RCPT's
			// kind of acceptance: the replies are shifted. (A refusal
			// may honestly carry one: Postfix's header_checks REJECT
			// keeps the operator's 5.1.x.)
			return false, fmt.Errorf("%w: reply %d %d.%d.%d to the end of data has an address status: the replies are out of step with the commands", ErrProtocol, r.Code, r.Enhanced[0], r.Enhanced[1], r.Enhanced[2])
		}
	case kData:
		switch {
		case r.Code == 354:
			// Only DATA is answered 354: the replies before it were
			// in step.
			return true, nil
		case class == 2 || class == 3:
			return false, fmt.Errorf("%w: reply %d to DATA", ErrProtocol, r.Code)
		case tx.res.DataCmd == nil:
			tx.res.DataCmd = r.Err()
		}
	case kMail, kRcpt, kChunk:
		if class == 3 {
			return false, fmt.Errorf("%w: reply %d to %s", ErrProtocol, r.Code, e.kind)
		}
		ok := class == 2
		switch e.kind {
		case kMail:
			if !ok {
				tx.res.Mail = r.Err()
			}
		case kRcpt:
			tx.rcptAnswered++
			if !ok {
				tx.res.Rcpt[e.idx] = r.Err()
			}
		default:
			if !ok && tx.res.DataCmd == nil {
				tx.res.DataCmd = r.Err()
			}
		}
	}
	return false, nil
}

// style is how a server words the 2xx to one kind of command. A server
// answers each kind the same way all session long (Postfix: MAIL 2.1.0,
// RCPT 2.1.5, RSET and the end of data 2.0.0; go-smtp: 2.0.0 to all): a
// 2xx whose enhanced code differs from the first one that kind got is
// another command's reply, the stream shifted by a stray or lost line.
// Not for the end of data, whose 2xx a before-queue filter words per
// message (2.0.0, 2.6.0, 2.7.0).
type style struct {
	seen bool
	enh  smtp.EnhancedCode
}

func (s *style) check(k kind, r Reply) error {
	switch {
	case r.Code/100 != 2:
		return nil
	case !s.seen:
		*s = style{seen: true, enh: r.Enhanced}
		return nil
	case r.Enhanced != s.enh:
		return fmt.Errorf("%w: reply %d %d.%d.%d to %s where it was answered %d.%d.%d before: the replies are out of step with the commands",
			ErrProtocol, r.Code, r.Enhanced[0], r.Enhanced[1], r.Enhanced[2], k, s.enh[0], s.enh[1], s.enh[2])
	}
	return nil
}

// unmistakable reports whether a 250 to RSET or NOOP cannot be MAIL's or
// RCPT's reply come one line late (a lost line): its enhanced code is
// one neither of them has been answered with this session. Without
// enhanced codes, or from a server that words them all alike (go-smtp's
// 2.0.0), it can be either: then only a 354 to DATA or the 221 to QUIT
// confirms. p.mu is held.
func (p *pipe) unmistakable(r Reply) bool {
	if r.Enhanced[0] == 0 {
		return false
	}
	for _, k := range []kind{kMail, kRcpt} {
		if st := p.style[k]; st.seen && st.enh == r.Enhanced {
			return false
		}
	}
	return true
}

// styleKey is the kind whose style k shares: both RSETs are one command.
func (k kind) styleKey() kind {
	if k == kAbort {
		return kReset
	}
	return k
}

func (k kind) String() string {
	return [...]string{"RSET", "MAIL", "RCPT", "DATA", "BDAT", "end of data", "RSET", "QUIT", "NOOP"}[k]
}

// breakWith records why the connection cannot go on and closes it, which
// unblocks the writer; the first cause wins.
func (c *Client) breakWith(err error) { c.breakAs(err, false) }

func (c *Client) breakAs(err error, read bool) {
	p := &c.p
	p.mu.Lock()
	first := c.fail(err, read)
	p.mu.Unlock()
	if first {
		c.raw.Close()
	}
}

// fail records err as why the connection cannot go on, the first cause
// winning, and reports whether it is the first. A protocol error the
// reader found (read) shows the replies shifted, even when the connection
// had already broken for another cause (a write that failed, say): the
// replies not yet confirmed are then not trusted. p.mu is held.
func (c *Client) fail(err error, read bool) bool {
	p := &c.p
	if read && errors.Is(err, ErrProtocol) {
		p.shifted = true
	}
	if p.broken != nil {
		return false
	}
	p.broken = err
	return true
}

// Err is why the connection broke, or nil.
func (c *Client) Err() error {
	p := &c.p
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.broken
}

func (c *Client) finalize(tx *Tx) {
	p := &c.p
	p.mu.Lock()
	delete(p.live, tx)
	c.freeSlot(tx)
	p.mu.Unlock()
	tx.res.RcptAnswered = tx.rcptAnswered
	tx.Done(&tx.res)
}

// freeSlot gives tx's place in the window back, once. p.mu is held.
func (c *Client) freeSlot(tx *Tx) {
	if tx.slot {
		tx.slot = false
		<-c.p.slots
	}
}

// push records that a reply is owed for a command of n bytes (its chunk
// included) about to be written: the reader takes a reply for it only
// once all n bytes are handed to the connection.
func (c *Client) push(tx *Tx, k kind, idx int, n int) uint64 {
	p := &c.p
	end := c.cc.started.Load() + int64(c.bw.Buffered()) + int64(n)
	switch {
	case k.strict():
		p.syncOwed = false
	case k == kEnd:
		p.syncOwed = true
	}
	p.mu.Lock()
	p.fifo = append(p.fifo, expect{tx: tx, kind: k, idx: idx, end: end})
	p.pushed++
	seq := p.pushed
	if tx != nil {
		tx.pending++
		tx.pushed++
	}
	p.mu.Unlock()
	return seq
}

// line pushes an expectation and writes the command.
func (c *Client) line(tx *Tx, k kind, idx int, cmd string) uint64 {
	return c.lineWith(tx, k, idx, cmd, 0)
}

// lineWith is line for a command followed by extra bytes (a BDAT chunk)
// that the caller writes next.
func (c *Client) lineWith(tx *Tx, k kind, idx int, cmd string, extra int) uint64 {
	n := c.push(tx, k, idx, len(cmd)+2+extra)
	c.bw.WriteString(cmd)
	c.bw.WriteString("\r\n")
	return n
}

// Flush hands the buffered commands on and arms the reply timeout.
func (c *Client) Flush() error {
	p := &c.p
	err := c.bw.Flush() // stampHanded stamps what it hands on
	p.mu.Lock()
	if c.cfg.Timeout > 0 && p.head < len(p.fifo) {
		c.cc.SetReadDeadline(time.Now().Add(c.cfg.Timeout))
	}
	p.mu.Unlock()
	if err != nil {
		c.breakWith(err)
		return c.Err()
	}
	return nil
}

// await flushes and waits until reply n was handled.
func (c *Client) await(n uint64) error {
	if err := c.Flush(); err != nil {
		return err
	}
	return c.waitFor(func() bool { return c.p.done >= n })
}

// waitFor waits until cond, called with p.mu held, is true, or returns why
// the connection broke. It wakes with each reply handled.
func (c *Client) waitFor(cond func() bool) error {
	p := &c.p
	for {
		p.mu.Lock()
		ok, broken := cond(), p.broken
		p.mu.Unlock()
		if ok {
			return nil
		}
		if broken != nil {
			return broken
		}
		select {
		case <-p.progress:
		case <-p.readerDone:
		}
	}
}

// stampHanded stamps the windowed transactions whose end of data is now
// all handed to the connection with the time the write that handed it on
// began: the start of their round trip, which the window measures (the
// server may answer as soon as the bytes are in a Write, and a long write
// would otherwise make the first transactions in it seem answered in no
// time). It runs after each write to the connection, Flush's and the
// buffer's own when it fills: stamped at the next Flush instead, a
// transaction whose bytes left earlier would seem answered sooner than
// the link can, and the shortest round trip would shrink the window for
// good. Writer only.
func (c *Client) stampHanded(began time.Time) {
	p := &c.p
	n := 0
	for n < len(p.unflushed) && p.unflushed[n].endOff <= c.cc.handed {
		n++
	}
	if n == 0 {
		return
	}
	p.mu.Lock()
	for _, tx := range p.unflushed[:n] {
		tx.flushedAt = began
	}
	p.mu.Unlock()
	left := copy(p.unflushed, p.unflushed[n:])
	clear(p.unflushed[left:])
	p.unflushed = p.unflushed[:left]
}

// offset is the stream position of the next byte written.
func (c *Client) offset() int64 { return c.cc.handed + int64(c.bw.Buffered()) }

// closeTx marks every command of tx written; it is finalized here when no
// reply is owed.
func (c *Client) closeTx(tx *Tx) {
	p := &c.p
	p.mu.Lock()
	tx.closed = true
	var fin []*Tx
	if tx.pending == 0 && !tx.finished {
		fin = c.answered(tx, nil)
	}
	p.mu.Unlock()
	for _, tx := range fin {
		c.finalize(tx)
	}
}

// Owed is the number of replies the server still owes, whatever their
// commands (a NOOP's included).
func (c *Client) Owed() int {
	p := &c.p
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.fifo) - p.head
}

// Outstanding is the number of transactions without a result.
func (c *Client) Outstanding() int {
	p := &c.p
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.live)
}

// Unanswered is the number of transactions still owed a reply: those
// without a result but waiting only for a confirming reply (see Sync) are
// not counted.
func (c *Client) Unanswered() int {
	p := &c.p
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.live) - len(p.unconfirmed)
}

// Settling is how many transactions have their end of data written, or
// being written, and no result yet: their replies are on the way, or
// they wait for a reply that confirms them (see Result.Confirmed). Cut
// now, each would be an unknown outcome.
func (c *Client) Settling() int {
	p := &c.p
	p.mu.Lock()
	defer p.mu.Unlock()
	n := 0
	for tx := range p.live {
		if tx.endAt >= 0 && !tx.finished { // its end of data is being written, or out
			n++
		}
	}
	return n
}

// Sync writes a NOOP when the last transaction ended with its end of data
// and nothing was written after it, so that its reply confirms the
// transactions waiting for one (see Result.Confirmed), and flushes. The
// next transaction's first command, or QUIT, confirms them too. Without
// PIPELINING it only flushes: the NOOP would go out before the end of
// data's reply, which such a server may refuse (a synchronization error).
func (c *Client) Sync() error {
	if c.p.syncOwed && c.p.pipelining {
		c.line(nil, kNoop, 0, "NOOP")
	}
	return c.Flush()
}

// SyncConfirms reports whether Sync's NOOP may confirm what waits: false
// without PIPELINING (Sync writes none, see Sync), and once a NOOP's 250
// this session was worded as MAIL's or RCPT's (a server that answers
// every command alike, see unmistakable).
func (c *Client) SyncConfirms() bool {
	p := &c.p
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.pipelining && !p.noopBlind
}

// Progress is signalled when a reply was handled.
func (c *Client) Progress() <-chan struct{} { return c.p.progress }

// Broken is closed when the reader stopped: the connection cannot go on.
func (c *Client) Broken() <-chan struct{} { return c.p.readerDone }

// Send writes tx's commands, waiting where the mode requires (for a free
// slot in the window, for 354, for each reply in lock-step). tx gets its
// result through Done, now or later. An error means the connection broke:
// tx and the others in flight get their results at Close.
func (c *Client) Send(tx *Tx) error {
	p := &c.p
	tx.endAt = -1
	tx.res.Rcpt = make([]*smtp.SMTPError, len(tx.Rcpts))
	if err := c.Err(); err != nil {
		tx.res.Err = err
		tx.Done(&tx.res)
		return err
	}
	if lim := p.win.get(); len(p.slots) >= lim {
		// The window is full: hand on what is written, and go on only
		// when an eighth of it is free again, so that transactions go out
		// in batches rather than one per reply (a frame, a write each).
		err := c.Flush()
		if err == nil {
			free := lim - max(1, lim/8)
			err = c.waitFor(func() bool { return len(p.slots) <= free })
		}
		if err != nil {
			tx.res.Err = err
			tx.Done(&tx.res)
			return err
		}
	}
	p.slots <- struct{}{} // only this goroutine takes slots: there is one free
	tx.slot = true
	p.mu.Lock()
	p.live[tx] = struct{}{}
	tx.seq = p.pushed
	p.mu.Unlock()
	if err := c.send(tx); err != nil {
		c.breakWith(err)
		return c.Err()
	}
	return nil
}

func (c *Client) send(tx *Tx) error {
	p := &c.p
	lockstep := !p.pipelining
	if tx.Canceled != nil && tx.Canceled() {
		// Withdrawn before anything of it was written (while it waited
		// for a slot in the window, say).
		tx.res.Err = ErrWithdrawn
		c.closeTx(tx)
		return nil
	}
	if p.sent > 0 && (p.pipelining || p.syncOwed) {
		// Pipelined: no failure of the transaction before can leak into
		// this one, already in the pipe behind it. Lock-step: its 250
		// confirms the transaction before, whose end of data nothing
		// strict has followed yet.
		n := c.line(tx, kReset, 0, "RSET")
		if lockstep {
			if err := c.await(n); err != nil {
				return err
			}
		}
	}
	p.sent++
	n := c.line(tx, kMail, 0, tx.Mail)
	if lockstep {
		if err := c.await(n); err != nil {
			return err
		}
		if tx.res.Mail != nil {
			return c.abort(tx)
		}
	}
	ok := 0
	for i, r := range tx.Rcpts {
		n := c.line(tx, kRcpt, i, r)
		if lockstep {
			if err := c.await(n); err != nil {
				return err
			}
			if tx.res.Rcpt[i] == nil {
				ok++
			}
		}
	}
	if lockstep && ok == 0 {
		return c.abort(tx)
	}
	if p.chunking {
		return c.sendChunks(tx, lockstep)
	}
	return c.sendData(tx, lockstep)
}

// abort ends tx without its end of data, with RSET (as go-smtp's Client
// does after a refusal): after a refusal, or to withdraw it. The RSET's 250
// confirms tx's replies.
func (c *Client) abort(tx *Tx) error {
	c.line(tx, kAbort, 0, "RSET")
	c.closeTx(tx)
	return nil
}

func (c *Client) sendData(tx *Tx, lockstep bool) error {
	if tx.Raw {
		// BINARYMIME needs BDAT (RFC 3030 §3): nothing can carry it here.
		tx.res.Err = fmt.Errorf("%w: BODY=BINARYMIME without CHUNKING", ErrUnsupported)
		return c.abort(tx)
	}
	if tx.Canceled != nil && tx.Canceled() {
		tx.res.Err = ErrWithdrawn
		return c.abort(tx)
	}
	n := c.line(tx, kData, 0, "DATA")
	if err := c.await(n); err != nil {
		return err
	}
	if tx.res.DataCmd != nil {
		return c.abort(tx)
	}
	if tx.res.Mail != nil || !anyNil(tx.res.Rcpt) {
		// 354 although nobody can receive the message (RFC 2920 §3.1 asks
		// for 554 here, older servers say 354): an empty message ends the
		// DATA, and the server refuses it. It is an end of data all the
		// same: where it starts is recorded, so that EndSent tells it.
		tx.endAt = c.offset()
		tx.endN = c.line(tx, kEnd, 0, ".")
		c.closeTx(tx)
		return nil
	}
	enc := Encoder{Fix: c.cfg.Fix, MaxLine: c.cfg.MaxLine, Stuff: true}
	if err := c.copyBody(tx, &enc, func(b []byte) error {
		_, err := c.bw.Write(b)
		return err
	}); err != nil {
		return err
	}
	if tx.res.Body != nil {
		// A partial body must never get an end of data: close.
		tx.res.Err = tx.res.Body
		return fmt.Errorf("body of a transaction: %w", tx.res.Body)
	}
	if tx.BeforeEnd != nil && !tx.BeforeEnd() {
		tx.res.Err = ErrWithdrawn
		return ErrWithdrawn
	}
	tx.endAt = c.offset()
	tx.endN = c.line(tx, kEnd, 0, ".")
	c.closeTx(tx)
	return nil
}

// copyBody reads tx.Body through enc and hands the result to out in
// pieces. A read or encoding error is recorded in tx.res.Body; the error
// returned is out's (the connection's).
func (c *Client) copyBody(tx *Tx, enc *Encoder, out func([]byte) error) error {
	p := &c.p
	for {
		n, rerr := tx.Body.Read(p.rbuf)
		var err error
		p.cbuf, err = enc.Encode(p.cbuf[:0], p.rbuf[:n])
		if err == nil && rerr == io.EOF {
			p.cbuf, err = enc.Close(p.cbuf)
		}
		if len(p.cbuf) > 0 {
			if werr := out(p.cbuf); werr != nil {
				return werr
			}
		}
		switch {
		case err != nil:
			tx.res.Body = err
			return nil
		case rerr == io.EOF:
			return nil
		case rerr != nil:
			tx.res.Body = rerr
			return nil
		}
	}
}

func (c *Client) sendChunks(tx *Tx, lockstep bool) error {
	enc := Encoder{Fix: c.cfg.Fix, MaxLine: c.cfg.MaxLine, Raw: tx.Raw}
	p := &c.p
	if p.chunk == nil {
		p.chunk = make([]byte, 0, chunkSize)
	}
	chunk := p.chunk[:0] // reused: its bytes are copied out by each write
	flush := func(last bool) error {
		if tx.Canceled != nil && tx.Canceled() {
			tx.res.Err = ErrWithdrawn
			return errAbort
		}
		// The command is made in p.cmd, not in a new string per chunk.
		kind, cmd := kChunk, strconv.AppendInt(append(p.cmd[:0], "BDAT "...), int64(len(chunk)), 10)
		if last {
			if tx.BeforeEnd != nil && !tx.BeforeEnd() {
				tx.res.Err = ErrWithdrawn
				return errAbort
			}
			tx.endAt = c.offset()
			kind, cmd = kEnd, append(cmd, " LAST"...)
			if !c.p.win.fixed {
				tx.endOff = tx.endAt + int64(len(cmd)+2+len(chunk))
				c.p.unflushed = append(c.p.unflushed, tx)
			}
		}
		p.cmd = append(cmd, "\r\n"...)
		n := c.push(tx, kind, 0, len(p.cmd)+len(chunk))
		c.bw.Write(p.cmd)
		if last {
			tx.endN = n
		}
		if _, err := c.bw.Write(chunk); err != nil {
			return err
		}
		chunk = chunk[:0]
		if !lockstep {
			return nil
		}
		if err := c.await(n); err != nil {
			return err
		}
		if !last && tx.res.DataCmd != nil {
			return errAbort // RFC 3030 §3: no more chunks after a refused one
		}
		return nil
	}
	err := c.copyBody(tx, &enc, func(b []byte) error {
		for len(b) > 0 {
			k := min(len(b), chunkSize-len(chunk))
			chunk = append(chunk, b[:k]...)
			b = b[k:]
			if len(chunk) == chunkSize {
				// On a stream of UTF-8 text, end the chunk on a character
				// boundary: a command between the halves of a character
				// would make the stream invalid.
				cut := len(chunk)
				if c.cfg.UTF8Only {
					cut = runeCut(chunk)
				}
				carry := append([]byte(nil), chunk[cut:]...)
				chunk = chunk[:cut]
				if err := flush(false); err != nil {
					return err
				}
				chunk = append(chunk, carry...)
			}
		}
		return nil
	})
	if err == nil && tx.res.Body != nil {
		tx.res.Err = tx.res.Body
		err = errAbort
	}
	if err == nil {
		err = flush(true)
	}
	if err == errAbort {
		// Chunks written so far are whole commands: RSET withdraws them.
		return c.abort(tx)
	}
	if err != nil {
		return err
	}
	c.closeTx(tx)
	return nil
}

var errAbort = errors.New("abort")

// runeCut returns len(b), or, when b ends inside a UTF-8 sequence, where
// that sequence starts: b[:runeCut(b)] holds whole characters only, if b
// is UTF-8 at all.
func runeCut(b []byte) int {
	i := len(b) - 1
	for i > 0 && i > len(b)-utf8.UTFMax && !utf8.RuneStart(b[i]) {
		i--
	}
	if i >= 0 && !utf8.FullRune(b[i:]) {
		return i
	}
	return len(b)
}

// Wait flushes and waits until every transaction has its result, or the
// connection broke (its error).
func (c *Client) Wait() error {
	if err := c.Flush(); err != nil {
		return err
	}
	// A broken connection wins over an empty window: the session must not
	// QUIT on it. Transactions waiting only for a confirming reply are
	// confirmed by QUIT's.
	return c.waitFor(func() bool { return c.p.broken == nil && len(c.p.live) == len(c.p.unconfirmed) })
}

// Quit sends QUIT (after Start) and waits for its reply, which confirms
// the transactions answered before it. An error means QUIT was not
// answered with 221 (or 421).
func (c *Client) Quit() error {
	n := c.line(nil, kQuit, 0, "QUIT")
	if err := c.await(n); err != nil {
		return err
	}
	p := &c.p
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.inStepAt < n {
		return p.broken // the reply to QUIT was not 221 (nor 421)
	}
	return nil
}

// Close closes the connection, waits for the reader, and gives every
// transaction still without a result its result, with the connection's
// error (or cause when it had none): EndSent when its end of data was
// handed on before any 421, Confirmed false.
func (c *Client) Close(cause error) {
	p := &c.p
	if cause == nil {
		cause = ErrClosed
	}
	c.breakWith(cause)
	if p.readerDone != nil {
		<-p.readerDone
	}
	p.mu.Lock()
	err, closing := p.broken, p.closing
	// A reply out of step or out of grammar: the stream shifted somewhere
	// before it, so no reply not yet confirmed is trusted.
	shifted := p.shifted
	var left []*Tx
	for tx := range p.live {
		if !tx.finished {
			tx.finished = true
			tx.res.Untrusted = shifted
			left = append(left, tx)
		}
	}
	p.unconfirmed = nil
	p.mu.Unlock()
	slices.SortFunc(left, func(a, b *Tx) int { return cmp.Compare(a.seq, b.seq) })
	for _, tx := range left {
		if tx.res.Err == nil {
			tx.res.Err = err
		}
		c.markSent(tx, closing)
		c.finalize(tx)
	}
}

// markSent sets tx.res.EndSent when its end of data was at least partly
// handed on and not after a 421 (closing, see pipe), past which a server
// processes nothing (RFC 5321 §3.8).
func (c *Client) markSent(tx *Tx, closing uint64) {
	afterClosing := closing > 0 && tx.endN >= closing
	tx.res.EndSent = tx.endAt >= 0 && c.cc.handed > tx.endAt && !afterClosing
}

func anyNil(es []*smtp.SMTPError) bool {
	for _, e := range es {
		if e == nil {
			return true
		}
	}
	return false
}
