// Package relayconn is the client side of the relay: the mxrelay
// WebSocket (dial, AUTHENTICATE, the heartbeat, and SMTP channels exposed
// as net.Conn) and the raw tunnel, both behind one Dialer that hands out
// streams ready for SMTP. It knows docs/protocol.md and nothing about
// emails.
package relayconn

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"

	"github.com/mxrelay/mxrelay/internal/wire"
)

// Config describes the connections of a Dialer, or one connection (Dial).
// Zero durations disable the timer they name; the caller (the root
// package) fills in defaults.
type Config struct {
	URL        string
	APIKey     string
	HTTPClient *http.Client
	Header     http.Header
	Binary     bool // ask for binary data frames
	// RawTunnel makes NewDialer dial raw tunnels (docs/protocol.md §13)
	// instead of the mxrelay protocol: the key, if any, goes as a bearer
	// token, and only DialTimeout of the timers applies.
	RawTunnel bool
	// DialTimeout bounds a Dialer's WebSocket handshake; Dial takes its
	// bound from its context.
	DialTimeout       time.Duration
	AuthTimeout       time.Duration
	ChannelTimeout    time.Duration
	HeartbeatInterval time.Duration
	HeartbeatTimeout  time.Duration
	// MaxBuffered bounds the SMTP bytes received and not yet read on a
	// channel; past it the connection stops reading (backpressure).
	MaxBuffered int
	Logger      *slog.Logger
	// Step, if set, hears each step a Dialer takes (see Dialer.Open), on
	// the goroutine that called Open.
	Step func(Step)
}

// AuthError is a refused AUTHENTICATE: success:false or close 4003. It is
// permanent: the same key must not be tried again.
type AuthError struct {
	Message string
}

func (e *AuthError) Error() string {
	if e.Message == "" {
		return "relay refused the API key"
	}
	return "relay refused the API key: " + e.Message
}

// ChannelError is SMTP_CHANNEL_ERROR: the relay could not reach the
// upstream, or the upstream failed. It is temporary.
type ChannelError struct {
	Message string
}

func (e *ChannelError) Error() string { return "relay channel error: " + e.Message }

// ClosedError is a WebSocket that ended: Code is the close status, or -1
// when it ended without a close frame.
type ClosedError struct {
	Code   websocket.StatusCode
	Reason string
	Err    error
}

func (e *ClosedError) Error() string {
	if e.Code < 0 {
		return fmt.Sprintf("relay connection lost: %v", e.Err)
	}
	if e.Reason != "" {
		return fmt.Sprintf("relay closed the connection: %d %s", int(e.Code), e.Reason)
	}
	return fmt.Sprintf("relay closed the connection: %d", int(e.Code))
}

func (e *ClosedError) Unwrap() error { return e.Err }

// ProtocolError is a relay that broke docs/protocol.md. The connection is closed
// with status 1002 (or 1009 for a frame over the limits).
type ProtocolError struct {
	Err error
}

func (e *ProtocolError) Error() string { return "relay protocol error: " + e.Err.Error() }
func (e *ProtocolError) Unwrap() error { return e.Err }

// ErrTimeout is wrapped by the errors of AuthTimeout, ChannelTimeout and the
// heartbeat.
var ErrTimeout = errors.New("timed out")

// ErrClosed is returned after Close.
var ErrClosed = errors.New("relay connection closed")

// Conn is one authenticated-or-not WebSocket to a relay. Its methods are
// safe for concurrent use; at most one channel is open at a time.
type Conn struct {
	cfg Config
	ws  *websocket.Conn
	raw *rawConn // the connection under ws, nil if the transport hid it
	log *slog.Logger

	ctx    context.Context // bounds the connection's lifetime
	cancel context.CancelFunc
	// wctx bounds data writes. It ends only after the closer has tried to
	// send its close status: coder/websocket cuts the connection when a
	// write's context ends, which would lose that status.
	wctx    context.Context
	wcancel context.CancelFunc
	wg      sync.WaitGroup

	chClose chan *Channel // channels whose SMTP_CHANNEL_CLOSE is to be sent

	authResp chan wire.AuthenticateResponse // buffered 1
	opening  chan openResult                // buffered 1, non-nil while a channel open waits

	closeReq chan closeRequest // buffered 1: the first request wins

	mu sync.Mutex
	ch *Channel // current channel, until SMTP_CHANNEL_CLOSED
	// last is the channel opened last, ended or not: the next open waits
	// for its SMTP_CHANNEL_CLOSED and for its own SMTP_CHANNEL_CLOSE to be
	// written (docs/protocol.md §6).
	last  *Channel
	dead  chan struct{}
	err   error // why the connection ended
	cause error // why a close was asked for, before err is set
}

type closeRequest struct {
	code   websocket.StatusCode
	reason string
	now    bool // the peer is dead: skip the closing handshake
}

// closeGrace bounds the closing handshake: a relay that does not answer our
// close frame in time is cut off.
const closeGrace = time.Second

type openResult struct {
	ch  *Channel // the channel READY opened, ended since or not
	err error
}

// Dial opens the WebSocket and starts its reader and heartbeat. It does not
// authenticate.
func Dial(ctx context.Context, cfg Config) (*Conn, error) {
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	hc, raw := grabConn(cfg.HTTPClient)
	ws, resp, err := websocket.Dial(ctx, cfg.URL, &websocket.DialOptions{
		HTTPClient:   hc,
		HTTPHeader:   cfg.Header,
		Subprotocols: []string{wire.Subprotocol},
	})
	if resp != nil && resp.Body != nil {
		resp.Body.Close()
	}
	if err != nil {
		if resp != nil && resp.StatusCode == http.StatusSwitchingProtocols {
			// The relay upgraded, and the library refused what it answered
			// (a subprotocol we did not offer, a bad accept key).
			return nil, &ProtocolError{Err: err}
		}
		return nil, err
	}
	if p := ws.Subprotocol(); p != "" && p != wire.Subprotocol {
		ws.Close(websocket.StatusProtocolError, "unsupported subprotocol")
		return nil, &ProtocolError{Err: fmt.Errorf("relay selected subprotocol %q", p)}
	}
	ws.SetReadLimit(wire.ReadLimit)
	c := &Conn{
		cfg:      cfg,
		ws:       ws,
		raw:      raw.get(),
		log:      log,
		authResp: make(chan wire.AuthenticateResponse, 1),
		closeReq: make(chan closeRequest, 1),
		dead:     make(chan struct{}),
	}
	c.ctx, c.cancel = context.WithCancel(context.Background())
	c.wctx, c.wcancel = context.WithCancel(context.Background())
	c.chClose = make(chan *Channel, 1)
	c.wg.Add(3)
	go c.readLoop()
	go c.closer()
	go c.channelCloser()
	if cfg.HeartbeatInterval > 0 {
		c.wg.Add(1)
		go c.heartbeat()
	}
	return c, nil
}

// Done is closed when the connection has ended; Err then says why.
func (c *Conn) Done() <-chan struct{} { return c.dead }

// Err is why the connection ended, nil while it is alive.
func (c *Conn) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}

// fail records why the connection ended (first cause wins), ends the current
// channel with that cause and wakes every waiter.
func (c *Conn) fail(err error) {
	c.mu.Lock()
	if c.err != nil {
		c.mu.Unlock()
		return
	}
	if c.cause != nil {
		// A close was asked for this reason: the reader's "closed"
		// that may come first is its consequence.
		err = c.cause
	}
	c.err = err
	ch := c.ch
	c.ch = nil
	close(c.dead)
	c.mu.Unlock()
	if ch != nil {
		ch.remoteEnd(err)
	}
	c.cancel()
}

// Close ends the connection with the given status and waits for its
// goroutines. It is safe to call more than once.
func (c *Conn) Close(code websocket.StatusCode, reason string) error {
	c.shutdown(code, reason, ErrClosed)
	c.wg.Wait()
	return nil
}

// shutdown records why the connection ends and asks the closer to send the
// close frame. It never blocks.
func (c *Conn) shutdown(code websocket.StatusCode, reason string, err error) {
	c.request(closeRequest{code: code, reason: truncate(reason, 120)}, err)
}

func (c *Conn) request(req closeRequest, err error) {
	// The reason is claimed before the request, so that the reader, which
	// fails as soon as the closer acts, reports it and not "closed".
	c.mu.Lock()
	if c.err == nil && c.cause == nil {
		c.cause = err
	}
	c.mu.Unlock()
	// The request goes first: once fail wakes the waiters, the owner may
	// call Close, and the status we chose must win over its 1000.
	select {
	case c.closeReq <- req:
	default:
	}
	c.fail(err)
}

// channelCloser sends SMTP_CHANNEL_CLOSE for channels closed by
// Channel.Close, so that closing (which is how a send is cancelled) never
// blocks its caller behind a write in progress.
func (c *Conn) channelCloser() {
	defer c.wg.Done()
	for {
		select {
		case ch := <-c.chClose:
			ch.sendClose()
		case <-c.ctx.Done():
			select {
			case ch := <-c.chClose:
				close(ch.closeDone)
			default:
			}
			return
		}
	}
}

// abort drops the connection for a protocol error or a timeout.
func (c *Conn) abort(code websocket.StatusCode, err error) {
	c.shutdown(code, err.Error(), err)
}

// closer owns the closing handshake: the first request's status is sent,
// and a relay that does not answer it within closeGrace is cut off, since
// the library would wait for the answer for seconds, reading and dropping
// whatever the relay sends meanwhile. CloseNow then releases the reader
// whatever happened.
func (c *Conn) closer() {
	defer c.wg.Done()
	defer c.wcancel()
	req := <-c.closeReq
	if !req.now {
		if c.raw != nil {
			c.raw.closing.Store(true)
		}
		cut := make(chan struct{})
		t := time.AfterFunc(closeGrace, func() {
			defer close(cut)
			// CloseNow does nothing while Close runs: cut the connection
			// under it.
			if c.raw != nil {
				c.raw.Close()
			}
			c.ws.CloseNow()
		})
		c.ws.Close(req.code, req.reason)
		if !t.Stop() {
			<-cut
		}
	}
	c.ws.CloseNow()
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n]
	}
	return s
}

func (c *Conn) write(ctx context.Context, typ websocket.MessageType, p []byte) error {
	if err := c.ws.Write(ctx, typ, p); err != nil {
		return c.deadOr(err)
	}
	return nil
}

func (c *Conn) writeControl(ctx context.Context, typ string, data any) error {
	return c.write(ctx, websocket.MessageText, wire.MustEncode(typ, data))
}

// Authenticate sends AUTHENTICATE and waits for the answer, at most
// AuthTimeout. A refusal is an *AuthError; the connection is then closed.
func (c *Conn) Authenticate(ctx context.Context) error {
	if c.cfg.AuthTimeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, c.cfg.AuthTimeout)
		defer cancel()
	}
	c.log.Debug("mxrelay: authenticating", "key", wire.MaskKey(c.cfg.APIKey))
	if err := c.writeControl(ctx, wire.TypeAuthenticate, wire.Authenticate{APIKey: c.cfg.APIKey}); err != nil {
		return c.deadOr(err)
	}
	select {
	case r := <-c.authResp:
		return c.authAnswered(r)
	case <-c.dead:
		select {
		case r := <-c.authResp:
			// Read before the connection ended (a relay that refuses
			// the key and closes at once): the answer says why.
			return c.authAnswered(r)
		default:
		}
		return c.Err()
	case <-ctx.Done():
		err := fmt.Errorf("no AUTHENTICATE_RESPONSE: %w", ErrTimeout)
		if ctx.Err() == context.Canceled {
			err = ctx.Err()
		}
		c.abort(websocket.StatusNormalClosure, err)
		return err
	}
}

// authAnswered is Authenticate's result for the relay's answer r.
func (c *Conn) authAnswered(r wire.AuthenticateResponse) error {
	if !r.Success {
		err := &AuthError{Message: r.Error}
		c.abort(wire.StatusAuthFailed, err)
		return err
	}
	return nil
}

// deadOr returns why the connection ended, for a write that failed: the
// socket is broken, so the reader is about to learn the cause (a close
// status is worth more than "use of closed network connection"); it waits
// for it a little.
func (c *Conn) deadOr(err error) error {
	t := time.NewTimer(closeGrace)
	defer t.Stop()
	select {
	case <-c.dead:
		return c.Err()
	case <-t.C:
		return err
	}
}

// OpenChannel asks for an SMTP channel and waits for READY or ERROR, at
// most ChannelTimeout. A previous channel must be closed; OpenChannel first
// waits for its SMTP_CHANNEL_CLOSED, and for its SMTP_CHANNEL_CLOSE, if
// Close sent one, to be written: messages carry no channel identifier, so
// nothing of the previous channel may follow the next OPEN (docs/protocol.md §6).
func (c *Conn) OpenChannel(ctx context.Context) (*Channel, error) {
	if c.cfg.ChannelTimeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, c.cfg.ChannelTimeout)
		defer cancel()
	}
	c.mu.Lock()
	prev := c.last
	c.mu.Unlock()
	if prev != nil {
		if err := prev.waitClosed(ctx); err != nil {
			c.abort(websocket.StatusPolicyViolation, fmt.Errorf("previous channel not closed: %w", ErrTimeout))
			return nil, c.Err()
		}
		prev.wcancel() // it writes nothing more
	}
	res := make(chan openResult, 1)
	c.mu.Lock()
	if c.err != nil {
		c.mu.Unlock()
		return nil, c.err
	}
	c.opening = res
	c.mu.Unlock()
	defer func() {
		c.mu.Lock()
		if c.opening == res {
			c.opening = nil
		}
		c.mu.Unlock()
	}()
	if err := c.writeControl(ctx, wire.TypeChannelOpen, wire.ChannelOpen{Binary: c.cfg.Binary}); err != nil {
		return nil, c.deadOr(err)
	}
	select {
	case r := <-res:
		if r.err != nil {
			return nil, r.err
		}
		// The channel READY opened, even if the relay has ended it since
		// (an upstream that greets and hangs up): its bytes are read first.
		return r.ch, nil
	case <-c.dead:
		return nil, c.Err()
	case <-ctx.Done():
		err := fmt.Errorf("no SMTP_CHANNEL_READY: %w", ErrTimeout)
		if ctx.Err() == context.Canceled {
			err = ctx.Err()
		}
		// A late READY would leave the relay with a channel we do not know;
		// the connection cannot be trusted any more.
		c.abort(websocket.StatusNormalClosure, err)
		return nil, err
	}
}

func (c *Conn) protocolError(code websocket.StatusCode, format string, args ...any) {
	err := &ProtocolError{Err: fmt.Errorf(format, args...)}
	c.log.Debug("mxrelay: relay protocol error", "err", err)
	c.abort(code, err)
}

func (c *Conn) readLoop() {
	defer c.wg.Done()
	// The reader's context is never cancelled: coder/websocket closes the
	// connection when a Read's context ends, which would pre-empt the close
	// status the closer sends. Read ends when the closer closes the socket.
	defer c.shutdown(websocket.StatusNormalClosure, "", ErrClosed)
	var frame bytes.Buffer
	for {
		// Each frame is read into the same buffer: what is kept of it
		// (a channel's data, a control message's fields) is copied.
		typ, r, err := c.ws.Reader(context.Background())
		if err == nil {
			frame.Reset()
			_, err = frame.ReadFrom(r)
		}
		p := frame.Bytes()
		if err != nil {
			c.fail(closedError(err))
			return
		}
		if typ == websocket.MessageBinary {
			c.mu.Lock()
			ch := c.ch
			c.mu.Unlock()
			if ch == nil || !ch.binary {
				c.protocolError(websocket.StatusProtocolError, "binary frame outside a binary channel")
				return
			}
			if !ch.deliver(p) {
				return
			}
			continue
		}
		m, err := wire.Decode(p)
		if err != nil {
			code := websocket.StatusProtocolError
			if errors.Is(err, wire.ErrTooBig) {
				code = websocket.StatusMessageTooBig
			}
			c.protocolError(code, "%v", err)
			return
		}
		if !c.handle(m) {
			return
		}
	}
}

// handle dispatches one control message; false ends the reader.
func (c *Conn) handle(m wire.Message) bool {
	c.mu.Lock()
	ch, opening := c.ch, c.opening
	c.mu.Unlock()
	switch m.Type {
	case wire.TypeAuthenticateResponse:
		var r wire.AuthenticateResponse
		if err := m.Unmarshal(&r); err != nil {
			c.protocolError(websocket.StatusProtocolError, "%v", err)
			return false
		}
		select {
		case c.authResp <- r:
		default:
			c.protocolError(websocket.StatusProtocolError, "unexpected AUTHENTICATE_RESPONSE")
			return false
		}
	case wire.TypeChannelReady:
		var r wire.ChannelOpen
		if err := m.Unmarshal(&r); err != nil || opening == nil {
			c.protocolError(websocket.StatusProtocolError, "unexpected SMTP_CHANNEL_READY")
			return false
		}
		if r.Binary && !c.cfg.Binary {
			c.protocolError(websocket.StatusProtocolError, "relay chose binary frames that were not asked for")
			return false
		}
		nc := newChannel(c, r.Binary)
		c.mu.Lock()
		c.ch, c.last = nc, nc
		c.opening = nil
		c.mu.Unlock()
		opening <- openResult{ch: nc}
	case wire.TypeChannelError:
		var r wire.ChannelError
		if err := m.Unmarshal(&r); err != nil {
			c.protocolError(websocket.StatusProtocolError, "%v", err)
			return false
		}
		err := &ChannelError{Message: r.Error}
		switch {
		case opening != nil:
			c.mu.Lock()
			c.opening = nil
			c.mu.Unlock()
			opening <- openResult{err: err}
		case ch != nil:
			c.endChannel(ch, err)
		default:
			c.log.Debug("mxrelay: SMTP_CHANNEL_ERROR with no channel", "error", r.Error)
		}
	case wire.TypeChannelClosed:
		var r wire.ChannelClosed
		if err := m.Unmarshal(&r); err != nil {
			c.protocolError(websocket.StatusProtocolError, "%v", err)
			return false
		}
		if ch == nil {
			// With an open waiting for READY, it belongs to the previous
			// channel (a relay that answered a CLOSE that crossed its own
			// CLOSED): docs/protocol.md §6 says to ignore it.
			c.log.Debug("mxrelay: SMTP_CHANNEL_CLOSED with no channel, ignored")
			return true
		}
		c.endChannel(ch, &channelClosed{reason: r.Reason})
	case wire.TypeFromServer:
		if ch == nil || ch.binary {
			c.protocolError(websocket.StatusProtocolError, "SMTP_FROM_SERVER outside a JSON channel")
			return false
		}
		p, err := wire.DecodeData(m)
		if err != nil {
			c.protocolError(websocket.StatusProtocolError, "%v", err)
			return false
		}
		return ch.deliver(p)
	case wire.TypeAuthenticate, wire.TypeChannelOpen, wire.TypeChannelClose, wire.TypeToServer:
		c.protocolError(websocket.StatusProtocolError, "relay sent client message %s", m.Type)
		return false
	default:
		c.log.Debug("mxrelay: ignoring unknown relay message", "type", truncate(m.Type, 64))
	}
	return true
}

// endChannel marks ch ended by the relay and forgets it.
func (c *Conn) endChannel(ch *Channel, err error) {
	c.mu.Lock()
	if c.ch == ch {
		c.ch = nil
	}
	c.mu.Unlock()
	ch.remoteEnd(err)
}

func closedError(err error) error {
	if errors.Is(err, ErrClosed) {
		return err
	}
	var ce websocket.CloseError
	if errors.As(err, &ce) {
		if ce.Code == wire.StatusAuthFailed {
			return &AuthError{Message: ce.Reason}
		}
		return &ClosedError{Code: ce.Code, Reason: ce.Reason, Err: err}
	}
	if errors.Is(err, websocket.ErrMessageTooBig) {
		// The library closed with 1009 for a frame over the read limit.
		return &ProtocolError{Err: err}
	}
	return &ClosedError{Code: -1, Err: err}
}

func (c *Conn) heartbeat() {
	defer c.wg.Done()
	t := time.NewTicker(c.cfg.HeartbeatInterval)
	defer t.Stop()
	for {
		select {
		case <-c.ctx.Done():
			return
		case <-t.C:
		}
		// Ping runs on the connection's context and our timer decides:
		// coder/websocket closes the socket when a Ping's context ends, and
		// the reader would then record "closed" before the timeout is known.
		pong := make(chan error, 1)
		go func() { pong <- c.ws.Ping(c.ctx) }()
		var expired <-chan time.Time
		timer := time.NewTimer(c.cfg.HeartbeatTimeout)
		if c.cfg.HeartbeatTimeout > 0 {
			expired = timer.C
		}
		select {
		case err := <-pong:
			timer.Stop()
			if err == nil {
				continue
			}
			if c.ctx.Err() != nil {
				return
			}
			c.request(closeRequest{now: true}, fmt.Errorf("heartbeat: %w", err))
		case <-expired:
			c.request(closeRequest{now: true}, fmt.Errorf("heartbeat: no pong within %v: %w", c.cfg.HeartbeatTimeout, ErrTimeout))
			<-pong // ends with the connection
		}
		return
	}
}

// closeBudget is how many bytes the closing handshake may read while it
// waits for the relay's close frame: enough for a frame in flight, not for
// a relay that goes on sending.
const closeBudget = wire.MaxData + 64<<10

// rawConn is the connection under the WebSocket, as the upgrade hands it
// over. Once the closing handshake starts (closing), it reads at most
// closeBudget more bytes, then cuts the connection: the library's
// handshake would read and drop whatever the relay sends for seconds.
type rawConn struct {
	io.ReadWriteCloser
	closing atomic.Bool
	read    atomic.Int64 // bytes read since closing
}

var errCloseBudget = errors.New("relay kept sending during the closing handshake")

func (r *rawConn) Read(p []byte) (int, error) {
	closing := r.closing.Load()
	if closing {
		left := closeBudget - r.read.Load()
		if left <= 0 {
			r.Close()
			return 0, errCloseBudget
		}
		p = p[:min(int64(len(p)), left)]
	}
	n, err := r.ReadWriteCloser.Read(p)
	if closing {
		r.read.Add(int64(n))
	}
	return n, err
}

// rawSlot receives the rawConn of a dial.
type rawSlot struct {
	mu sync.Mutex
	c  *rawConn
}

func (s *rawSlot) get() *rawConn {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.c
}

// grabConn returns a copy of hc (nil: http.DefaultClient) whose transport
// puts a rawConn around the connection of a 101 response (the body of such
// a response is the connection itself).
func grabConn(hc *http.Client) (*http.Client, *rawSlot) {
	if hc == nil {
		hc = http.DefaultClient
	}
	cp := *hc
	slot := &rawSlot{}
	cp.Transport = grabTransport{rt: hc.Transport, slot: slot}
	return &cp, slot
}

type grabTransport struct {
	rt   http.RoundTripper
	slot *rawSlot
}

func (g grabTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	rt := g.rt
	if rt == nil {
		rt = http.DefaultTransport
	}
	resp, err := rt.RoundTrip(r)
	if err == nil && resp.StatusCode == http.StatusSwitchingProtocols {
		if c, ok := resp.Body.(io.ReadWriteCloser); ok {
			rc := &rawConn{ReadWriteCloser: c}
			resp.Body = rc
			g.slot.mu.Lock()
			g.slot.c = rc
			g.slot.mu.Unlock()
		}
	}
	return resp, err
}
