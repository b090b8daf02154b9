package relayconn

import (
	"context"
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/coder/websocket"

	"github.com/mxrelay/mxrelay/internal/wire"
)

// channelClosed is the end of a channel by SMTP_CHANNEL_CLOSED.
type channelClosed struct{ reason string }

func (e *channelClosed) Error() string {
	if e.reason == "" {
		return "relay closed the SMTP channel"
	}
	return "relay closed the SMTP channel: " + e.reason
}

// Channel is one SMTP channel: a net.Conn whose bytes are the SMTP stream
// between the client and the relay's upstream. Read and Write may be called
// concurrently with each other; deadlines work as for net.Conn. Close sends
// SMTP_CHANNEL_CLOSE without waiting for the answer, which is what
// cancellation uses: after Close no more of the stream reaches the relay.
type Channel struct {
	c      *Conn
	binary bool
	rd, wd *deadline

	written atomic.Int64 // bytes handed to the WebSocket, sent or not

	wmu     sync.Mutex // serialises writes and holds a split rune
	pending []byte
	// wctx bounds the channel's data writes; Abort cancels it, which
	// interrupts a frame write in progress (and so the connection: a frame
	// cut short cannot be followed by another).
	wctx    context.Context
	wcancel context.CancelFunc

	mu sync.Mutex
	// buf[off:] are the bytes received and not yet read, size of them:
	// one array, refilled from its start when emptied, so that a frame
	// costs no allocation of its own.
	buf    []byte
	off    int
	size   int
	late   int           // bytes received after Close, dropped
	wake   chan struct{} // closed and replaced whenever buf or state changes
	cause  error         // why the relay ended the channel
	ended  chan struct{} // closed when the relay ended the channel
	closed bool          // Close was called
	// closeDone is closed once SMTP_CHANNEL_CLOSE was written, or found
	// not needed: nothing of this channel may follow the next OPEN.
	closeDone chan struct{}
}

func newChannel(c *Conn, binary bool) *Channel {
	ch := &Channel{
		c:         c,
		binary:    binary,
		rd:        newDeadline(),
		wd:        newDeadline(),
		wake:      make(chan struct{}),
		ended:     make(chan struct{}),
		closeDone: make(chan struct{}),
	}
	ch.wctx, ch.wcancel = context.WithCancel(c.wctx)
	return ch
}

// Binary reports whether the channel carries raw binary frames; false means
// JSON text, where every byte written must be valid UTF-8.
func (ch *Channel) Binary() bool { return ch.binary }

// Written is the number of bytes handed to the WebSocket so far, including
// a write that failed: a byte counted here may have reached the relay.
func (ch *Channel) Written() int64 { return ch.written.Load() }

// Cause is why the relay ended the channel (nil while it is open, or when
// only Close ended it).
func (ch *Channel) Cause() error {
	ch.mu.Lock()
	defer ch.mu.Unlock()
	return ch.cause
}

// Ended is closed when the relay has ended the channel or the connection
// died.
func (ch *Channel) Ended() <-chan struct{} { return ch.ended }

func (ch *Channel) signal() {
	close(ch.wake)
	ch.wake = make(chan struct{})
}

// deliver queues bytes from the relay; it blocks while more than
// MaxBuffered bytes wait to be read. False means the connection died.
func (ch *Channel) deliver(p []byte) bool {
	limit := ch.c.cfg.MaxBuffered
	if limit <= 0 {
		limit = 4 * wire.MaxData
	}
	ch.mu.Lock()
	defer ch.mu.Unlock()
	if ch.closed || ch.cause != nil {
		// Nobody will read it. Some may still come after our
		// SMTP_CHANNEL_CLOSE: what the relay sent before it read it. A
		// relay that goes on past the limit ignores the close, and would
		// keep the connection reading for nothing.
		ch.late += len(p)
		if ch.late <= limit {
			return true
		}
		ch.mu.Unlock()
		ch.c.protocolError(websocket.StatusProtocolError, "more than %d bytes of SMTP data after SMTP_CHANNEL_CLOSE", limit)
		ch.mu.Lock()
		return false
	}
	if ch.off > 0 && len(ch.buf)+len(p) > cap(ch.buf) {
		// Move what is left down rather than grow the array.
		ch.buf = ch.buf[:copy(ch.buf, ch.buf[ch.off:])]
		ch.off = 0
	}
	ch.buf = append(ch.buf, p...)
	ch.size += len(p)
	ch.signal()
	for ch.size > limit && !ch.closed && ch.cause == nil {
		wake := ch.wake
		ch.mu.Unlock()
		select {
		case <-wake:
		case <-ch.c.dead:
		}
		ch.mu.Lock()
		select {
		case <-ch.c.dead:
			return false
		default:
		}
	}
	return true
}

// remoteEnd ends the channel from the relay's side.
func (ch *Channel) remoteEnd(err error) {
	ch.mu.Lock()
	defer ch.mu.Unlock()
	if ch.cause != nil {
		return
	}
	ch.cause = err
	close(ch.ended)
	ch.signal()
}

// waitClosed waits until the relay has ended the channel and, if Close was
// called, until its SMTP_CHANNEL_CLOSE is out.
func (ch *Channel) waitClosed(ctx context.Context) error {
	select {
	case <-ch.ended:
	case <-ctx.Done():
		return ctx.Err()
	}
	ch.mu.Lock()
	closed := ch.closed
	ch.mu.Unlock()
	if !closed {
		return nil
	}
	select {
	case <-ch.closeDone:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Read implements net.Conn. Bytes received before the channel ended are
// returned first; then io.EOF if the relay closed the channel, or the error
// that ended it.
func (ch *Channel) Read(p []byte) (int, error) {
	for {
		ch.mu.Lock()
		if ch.size > 0 {
			n := copy(p, ch.buf[ch.off:])
			ch.off += n
			ch.size -= n
			if ch.size == 0 {
				ch.buf, ch.off = ch.buf[:0], 0
			}
			ch.signal()
			ch.mu.Unlock()
			return n, nil
		}
		if ch.closed {
			ch.mu.Unlock()
			return 0, net.ErrClosed
		}
		if ch.cause != nil {
			err := ch.cause
			ch.mu.Unlock()
			var cc *channelClosed
			if errors.As(err, &cc) {
				return 0, io.EOF
			}
			return 0, err
		}
		wake := ch.wake
		ch.mu.Unlock()
		select {
		case <-wake:
		case <-ch.rd.wait():
			return 0, os.ErrDeadlineExceeded
		}
	}
}

// Write implements net.Conn. In a JSON channel, a rune split between two
// writes is held back until its end arrives; bytes that are not UTF-8 fail
// with wire.ErrInvalidUTF8 and nothing of that write is sent.
func (ch *Channel) Write(p []byte) (int, error) {
	ch.wmu.Lock()
	defer ch.wmu.Unlock()
	if err := ch.writable(); err != nil {
		return 0, err
	}
	if ch.binary {
		for off := 0; off < len(p); {
			end := min(off+wire.MaxData, len(p))
			if err := ch.send(websocket.MessageBinary, p[off:end]); err != nil {
				return off, err
			}
			off = end
		}
		return len(p), nil
	}
	data := p
	if len(ch.pending) > 0 {
		data = append(ch.pending, p...)
	}
	cut := wire.RuneCut(data) // hold back an incomplete rune at the end
	if !utf8.Valid(data[:cut]) {
		return 0, wire.ErrInvalidUTF8
	}
	for off := 0; off < cut; {
		end := min(off+wire.MaxDataChunk, cut)
		for end < cut && !utf8.RuneStart(data[end]) {
			end--
		}
		msg, err := wire.EncodeData(wire.TypeToServer, data[off:end])
		if err != nil {
			return 0, err
		}
		if err := ch.sendFrame(websocket.MessageText, msg, end-off); err != nil {
			return 0, err
		}
		off = end
	}
	ch.pending = append(ch.pending[:0:0], data[cut:]...)
	return len(p), nil
}

func (ch *Channel) writable() error {
	ch.mu.Lock()
	defer ch.mu.Unlock()
	if ch.closed {
		return net.ErrClosed
	}
	if ch.cause != nil {
		return ch.cause
	}
	if t := ch.wd.get(); !t.IsZero() && !time.Now().Before(t) {
		return os.ErrDeadlineExceeded
	}
	return nil
}

func (ch *Channel) send(typ websocket.MessageType, p []byte) error {
	return ch.sendFrame(typ, p, len(p))
}

// sendFrame writes one frame carrying n SMTP bytes, bounded by the write
// deadline. coder/websocket closes the connection when a write's context
// ends: a peer that does not read in time has broken the connection anyway.
func (ch *Channel) sendFrame(typ websocket.MessageType, frame []byte, n int) error {
	if err := ch.c.Err(); err != nil {
		return err // known dead before the write: nothing of it left
	}
	ch.written.Add(int64(n))
	ctx := ch.wctx
	if t := ch.wd.get(); !t.IsZero() {
		var cancel context.CancelFunc
		ctx, cancel = context.WithDeadline(ctx, t)
		defer cancel()
	}
	return ch.c.write(ctx, typ, frame)
}

// Close implements net.Conn: reads and writes fail at once, and
// SMTP_CHANNEL_CLOSE (unless the relay already ended the channel) is sent
// in the background after any write in progress, so that no data follows
// it. Close does not wait for the relay's SMTP_CHANNEL_CLOSED; the next
// OpenChannel does. Safe to call more than once and concurrently with Read
// and Write.
func (ch *Channel) Close() error {
	ch.mu.Lock()
	if ch.closed {
		ch.mu.Unlock()
		return nil
	}
	ch.closed = true
	ch.signal()
	ended := ch.cause != nil
	ch.mu.Unlock()
	if ended {
		close(ch.closeDone)
		return nil
	}
	select {
	case ch.c.chClose <- ch:
	case <-ch.c.dead:
		close(ch.closeDone)
	}
	return nil
}

// Abort is Close for a channel that must end now: a frame write in
// progress (to a relay that stopped reading, say) is interrupted, which
// ends the whole connection, since the rest of a frame cut short can never
// be sent. With no write in progress it is Close. Safe to call more than
// once and concurrently with Read, Write and Close.
func (ch *Channel) Abort() {
	ch.Close()
	ch.wcancel()
}

// sendClose writes SMTP_CHANNEL_CLOSE once no write is in progress,
// unless the relay has ended the channel meanwhile.
func (ch *Channel) sendClose() {
	defer close(ch.closeDone)
	ch.wmu.Lock()
	defer ch.wmu.Unlock()
	select {
	case <-ch.ended:
		return
	default:
	}
	ctx := ch.c.wctx
	if d := ch.c.cfg.ChannelTimeout; d > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, d)
		defer cancel()
	}
	if err := ch.c.writeControl(ctx, wire.TypeChannelClose, nil); err != nil {
		ch.c.abort(websocket.StatusNormalClosure, err)
	}
}

type addr struct{ s string }

func (a addr) Network() string { return "mxrelay" }
func (a addr) String() string  { return a.s }

// LocalAddr implements net.Conn.
func (ch *Channel) LocalAddr() net.Addr { return addr{"client"} }

// RemoteAddr implements net.Conn: the relay's URL.
func (ch *Channel) RemoteAddr() net.Addr { return addr{ch.c.cfg.URL} }

// SetDeadline implements net.Conn.
func (ch *Channel) SetDeadline(t time.Time) error {
	ch.rd.set(t)
	ch.wd.set(t)
	return nil
}

// SetReadDeadline implements net.Conn.
func (ch *Channel) SetReadDeadline(t time.Time) error { ch.rd.set(t); return nil }

// SetWriteDeadline implements net.Conn.
func (ch *Channel) SetWriteDeadline(t time.Time) error { ch.wd.set(t); return nil }
