package smtpc

import (
	"cmp"
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/emersion/go-smtp"
	"github.com/mxrelay/mxrelay/internal/wire"
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
	// Canceled, if set, is asked before each BDAT chunk: true withdraws the
	// transaction (with RSET, so the session goes on).
	Canceled func() bool
	// BeforeEnd, if set, is called right before the end of data is
	// written: false withdraws the transaction (with BDAT by RSET; with
	// DATA by closing the connection, the only way to stop a DATA).
	BeforeEnd func() bool
	// Done receives the transaction's result, exactly once, on the
	// engine's reader goroutine or on the caller's.
	Done func(*Result)

	seq          uint64
	pending      int    // replies still owed
	closed       bool   // every command is written
	finished     bool   // Done was called or is being called
	endAt        int64  // stream offset of the end of data; -1 before it
	endN         uint64 // the end of data's place among the replies owed
	rcptAnswered int
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
	// End is the reply to the end of data ("." or BDAT LAST); nil when
	// there was none. Only End decides whether the message was accepted.
	End *Reply
	// Err is set when the transaction did not run to its end: the
	// connection failed (or the server closed it with 421), the body could
	// not be read or had a bare line ending (Body), the Tx withdrew it
	// (ErrWithdrawn).
	Err  error
	Body error
	// Unknown is set with Err when the end of data was at least partly
	// handed on and no reply came: the server may have the message.
	Unknown bool
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
)

type expect struct {
	tx   *Tx
	kind kind
	idx  int
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

	mu      sync.Mutex
	fifo    []expect
	head    int
	pushed  uint64 // expectations pushed
	done    uint64 // replies handled
	live    map[*Tx]struct{}
	broken  error
	closing uint64 // after a 421, the place of the first command not processed; 0: none
}

const chunkSize = 256 << 10

// Start begins the pipelined phase: from here on replies are read by a
// goroutine of the client, which ends with Close.
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
	p.progress = make(chan struct{}, 1)
	p.readerDone = make(chan struct{})
	p.live = map[*Tx]struct{}{}
	p.rbuf = make([]byte, 32<<10)
	go c.readLoop()
}

// Mode describes how transactions are sent, for logs.
func (c *Client) Mode() string {
	switch p := &c.p; {
	case p.pipelining && p.chunking:
		return "pipelined BDAT, window " + strconv.Itoa(cap(p.slots))
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
			c.breakWith(err)
			return
		}
		p.mu.Lock()
		if p.head == len(p.fifo) {
			if r.Code == 421 && p.closing == 0 {
				// Unsolicited: nothing written from now on is processed.
				p.closing = p.done + 1
			}
			p.mu.Unlock()
			if r.Code == 421 {
				c.breakWith(r.Err())
			} else {
				c.breakWith(fmt.Errorf("%w: reply %d with no command waiting for it", ErrProtocol, r.Code))
			}
			return
		}
		e := p.fifo[p.head]
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
		err = apply(e, r)
		tx := e.tx
		fin := false
		if tx != nil {
			tx.pending--
			fin = tx.closed && tx.pending == 0 && !tx.finished
			if fin {
				tx.finished = true
			}
		}
		p.mu.Unlock()
		if fin {
			c.finalize(tx)
		}
		// Signalled after the result is out, so that a writer woken by it
		// sees the transaction gone.
		select {
		case p.progress <- struct{}{}:
		default:
		}
		if err == nil && r.Code == 421 {
			err = r.Err()
		}
		if err != nil {
			c.breakWith(err)
			return
		}
	}
}

// apply records reply r to the command e stands for; an error means the
// connection cannot go on.
func apply(e expect, r Reply) error {
	class := r.Code / 100
	want := 2
	if e.kind == kData {
		want = 3
	}
	if class == 2 || class == 3 {
		if class != want || e.kind == kData && r.Code != 354 {
			return fmt.Errorf("%w: reply %d to %s", ErrProtocol, r.Code, e.kind)
		}
	}
	tx := e.tx
	ok := class == want
	switch e.kind {
	case kReset, kAbort, kQuit:
		if !ok && e.kind != kQuit {
			return fmt.Errorf("RSET refused: %w", r.Err())
		}
	case kMail:
		if !ok {
			tx.res.Mail = r.Err()
		}
	case kRcpt:
		tx.rcptAnswered++
		if !ok {
			tx.res.Rcpt[e.idx] = r.Err()
		}
	case kData, kChunk:
		if !ok && tx.res.DataCmd == nil {
			tx.res.DataCmd = r.Err()
		}
	case kEnd:
		tx.res.End = &r
	}
	return nil
}

func (k kind) String() string {
	return [...]string{"RSET", "MAIL", "RCPT", "DATA", "BDAT", "end of data", "RSET", "QUIT"}[k]
}

// breakWith records why the connection cannot go on and closes it, which
// unblocks the writer; the first cause wins.
func (c *Client) breakWith(err error) {
	p := &c.p
	p.mu.Lock()
	first := p.broken == nil
	if first {
		p.broken = err
	}
	p.mu.Unlock()
	if first {
		c.raw.Close()
	}
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
	p.mu.Unlock()
	<-p.slots
	tx.res.RcptAnswered = tx.rcptAnswered
	tx.Done(&tx.res)
}

// push records that a reply is owed for the command about to be written.
func (c *Client) push(tx *Tx, k kind, idx int) uint64 {
	p := &c.p
	p.mu.Lock()
	p.fifo = append(p.fifo, expect{tx: tx, kind: k, idx: idx})
	p.pushed++
	n := p.pushed
	if tx != nil {
		tx.pending++
	}
	p.mu.Unlock()
	return n
}

// line pushes an expectation and writes the command.
func (c *Client) line(tx *Tx, k kind, idx int, cmd string) uint64 {
	n := c.push(tx, k, idx)
	c.bw.WriteString(cmd)
	c.bw.WriteString("\r\n")
	return n
}

// Flush hands the buffered commands on and arms the reply timeout.
func (c *Client) Flush() error {
	err := c.bw.Flush()
	p := &c.p
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

// offset is the stream position of the next byte written.
func (c *Client) offset() int64 { return c.cc.handed + int64(c.bw.Buffered()) }

// closeTx marks every command of tx written; it is finalized here when no
// reply is owed.
func (c *Client) closeTx(tx *Tx) {
	p := &c.p
	p.mu.Lock()
	tx.closed = true
	fin := tx.pending == 0 && !tx.finished
	if fin {
		tx.finished = true
	}
	p.mu.Unlock()
	if fin {
		c.finalize(tx)
	}
}

// Outstanding is the number of transactions without a result.
func (c *Client) Outstanding() int {
	p := &c.p
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.live)
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
	if len(p.slots) == cap(p.slots) {
		// The window is full: hand on what is written, and go on only
		// when an eighth of it is free again, so that transactions go out
		// in batches rather than one per reply (a frame, a write each).
		err := c.Flush()
		if err == nil {
			free := cap(p.slots) - max(1, cap(p.slots)/8)
			err = c.waitFor(func() bool { return len(p.slots) <= free })
		}
		if err != nil {
			tx.res.Err = err
			tx.Done(&tx.res)
			return err
		}
	}
	p.slots <- struct{}{} // only this goroutine takes slots: there is one free
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
	if p.pipelining && p.sent > 0 {
		// No failure of the transaction before can leak into this one,
		// already in the pipe behind it.
		c.line(tx, kReset, 0, "RSET")
	}
	p.sent++
	n := c.line(tx, kMail, 0, tx.Mail)
	if lockstep {
		if err := c.await(n); err != nil {
			return err
		}
		if tx.res.Mail != nil {
			return c.abort(tx, lockstep)
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
		return c.abort(tx, lockstep)
	}
	if p.chunking {
		return c.sendChunks(tx, lockstep)
	}
	return c.sendData(tx, lockstep)
}

// abort ends tx without its end of data: in lock-step after a refusal
// (RSET, as go-smtp's Client does), or to withdraw it.
func (c *Client) abort(tx *Tx, rset bool) error {
	if rset {
		c.line(tx, kAbort, 0, "RSET")
	}
	c.closeTx(tx)
	return nil
}

func (c *Client) sendData(tx *Tx, lockstep bool) error {
	n := c.line(tx, kData, 0, "DATA")
	if err := c.await(n); err != nil {
		return err
	}
	if tx.res.DataCmd != nil {
		return c.abort(tx, lockstep)
	}
	if tx.res.Mail != nil || !anyNil(tx.res.Rcpt) {
		// 354 although nobody can receive the message (RFC 2920 §3.1 asks
		// for 554 here, older servers say 354): an empty message ends the
		// DATA, and the server refuses it.
		c.line(tx, kEnd, 0, ".")
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
	enc := Encoder{Fix: c.cfg.Fix, MaxLine: c.cfg.MaxLine}
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
		kind, cmd := kChunk, "BDAT "+strconv.Itoa(len(chunk))
		if last {
			if tx.BeforeEnd != nil && !tx.BeforeEnd() {
				tx.res.Err = ErrWithdrawn
				return errAbort
			}
			tx.endAt = c.offset()
			kind, cmd = kEnd, cmd+" LAST"
		}
		n := c.line(tx, kind, 0, cmd)
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
				// End the chunk on a character boundary: a JSON channel
				// carries only UTF-8, and a command between the halves of
				// a character would make the stream invalid.
				cut := wire.RuneCut(chunk)
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
		return c.abort(tx, true)
	}
	if err != nil {
		return err
	}
	c.closeTx(tx)
	return nil
}

var errAbort = errors.New("abort")

// Wait flushes and waits until every transaction has its result, or the
// connection broke (its error).
func (c *Client) Wait() error {
	if err := c.Flush(); err != nil {
		return err
	}
	// A broken connection wins over an empty window: the session must not
	// QUIT on it.
	return c.waitFor(func() bool { return c.p.broken == nil && len(c.p.live) == 0 })
}

// Quit sends QUIT (after Start) and waits for its reply.
func (c *Client) Quit() error {
	n := c.line(nil, kQuit, 0, "QUIT")
	return c.await(n)
}

// Close closes the connection, waits for the reader, and gives every
// transaction still without a result its result: unknown when its end of
// data was handed on (and it was not already refused), else not sent,
// with the connection's error (or cause when it had none).
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
	var left []*Tx
	for tx := range p.live {
		if !tx.finished {
			tx.finished = true
			left = append(left, tx)
		}
	}
	p.mu.Unlock()
	slices.SortFunc(left, func(a, b *Tx) int { return cmp.Compare(a.seq, b.seq) })
	for _, tx := range left {
		if tx.res.Err == nil {
			tx.res.Err = err
		}
		// Not unknown: refused before its end, or its end came after a
		// 421, past which a server processes nothing (RFC 5321 §3.8).
		refused := tx.res.Mail != nil || tx.rcptAnswered == len(tx.Rcpts) && !anyNil(tx.res.Rcpt)
		afterClosing := closing > 0 && tx.endN >= closing
		if tx.endAt >= 0 && c.cc.handed > tx.endAt && !refused && !afterClosing {
			tx.res.Unknown = true
		}
		c.finalize(tx)
	}
}

func anyNil(es []*smtp.SMTPError) bool {
	for _, e := range es {
		if e == nil {
			return true
		}
	}
	return false
}
