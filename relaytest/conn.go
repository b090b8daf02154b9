package relaytest

import (
	"context"
	"crypto/subtle"
	"encoding/json"
	"log/slog"
	"net"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/coder/websocket"

	"github.com/mxrelay/mxrelay/internal/wire"
)

// Queues between the WebSocket and the goroutines that apply the latency.
// They are bounded in bytes, not in frames: with latency, a queue holds
// what is in flight, and a bound in frames would cap frames per second as
// no network does. A frame larger than the bound passes alone.
const (
	queueFrames = 4096
	queueBytes  = 2 << 20 // per direction and connection
)

// budget bounds the bytes in a queue; take waits for room.
type budget struct {
	mu    sync.Mutex
	used  int64
	freed chan struct{} // buffered 1
}

func newBudget() *budget { return &budget{freed: make(chan struct{}, 1)} }

func (b *budget) take(ctx context.Context, n int) bool {
	for {
		b.mu.Lock()
		if b.used == 0 || b.used+int64(n) <= queueBytes {
			b.used += int64(n)
			b.mu.Unlock()
			return true
		}
		b.mu.Unlock()
		select {
		case <-b.freed:
		case <-ctx.Done():
			return false
		}
	}
}

func (b *budget) give(n int) {
	b.mu.Lock()
	b.used -= int64(n)
	b.mu.Unlock()
	select {
	case b.freed <- struct{}{}:
	default:
	}
}

// conn is one client WebSocket. Three goroutines serve it:
//
//   - the HTTP handler's goroutine reads frames into in (serve);
//   - process takes them from in after ToServer latency, runs the protocol
//     and owns the channel;
//   - write takes frames from out after ToClient latency and writes them.
//
// Everything the relay sends goes through out, so frames keep their order
// and a close is written after the frames queued before it. Each open
// channel adds the goroutine that reads its upstream.
type conn struct {
	s         *Server
	id        int
	ws        *websocket.Conn
	raw       net.Conn // the TCP connection under ws, to cut it abruptly
	log       *slog.Logger
	ctx       context.Context // ends when the connection is being torn down
	cancel    context.CancelFunc
	in        chan inFrame
	out       chan outFrame
	inRoom    *budget
	outRoom   *budget
	wg        sync.WaitGroup // process, write, channel readers
	finished  chan struct{}  // closed when serve has returned and the conn is forgotten
	processed chan struct{}  // closed when process has returned: nobody reads in

	// Owned by process.
	authed      bool
	authSeen    bool // AUTHENTICATE read (and ignored, with IgnoreAuth)
	ch          *channel
	lastChannel int
}

type inFrame struct {
	due  time.Time
	typ  websocket.MessageType
	data []byte
}

type outFrame struct {
	due    time.Time
	typ    websocket.MessageType
	data   []byte
	close  bool // close cleanly with code and reason
	abort  bool // cut the TCP connection
	code   websocket.StatusCode
	reason string
}

func newConn(s *Server, id int, ws *websocket.Conn, raw net.Conn) *conn {
	ctx, cancel := context.WithCancel(context.Background())
	return &conn{
		s:         s,
		id:        id,
		ws:        ws,
		raw:       raw,
		log:       s.log.With("conn", id),
		ctx:       ctx,
		cancel:    cancel,
		in:        make(chan inFrame, queueFrames),
		out:       make(chan outFrame, queueFrames),
		inRoom:    newBudget(),
		outRoom:   newBudget(),
		finished:  make(chan struct{}),
		processed: make(chan struct{}),
	}
}

// serve runs the connection until the WebSocket is closed, then tears
// everything down and waits for its goroutines.
func (c *conn) serve() {
	c.wg.Add(2)
	go c.process()
	go c.write()

	for {
		typ, data, err := c.ws.Read(c.ctx)
		if err != nil {
			c.log.Info("relaytest: connection closed", "status", int(websocket.CloseStatus(err)))
			break
		}
		f := inFrame{due: time.Now().Add(c.s.opts.Latency.ToServer), typ: typ, data: data}
		if !c.inRoom.take(c.ctx, len(data)) {
			break
		}
		select {
		case c.in <- f:
			continue
		case <-c.processed:
			// The protocol has ended the connection; keep reading (and
			// dropping) until the writer's close ends the WebSocket.
			c.inRoom.give(len(data))
			continue
		case <-c.ctx.Done():
		}
		break
	}
	c.cancel()
	c.wg.Wait()
	_ = c.ws.CloseNow()
}

// shutdown closes the WebSocket with code from outside (Close,
// CloseClientConnections), cutting it if the close handshake does not end
// within closeGrace, and waits until the connection is gone.
func (c *conn) shutdown(code websocket.StatusCode, reason string) {
	closeGracefully(c.ws, c.raw, code, reason)
	// Wake whatever still waits: a write to an upstream that stopped
	// reading, or the reader handing a frame to a blocked process.
	c.cancel()
	<-c.finished
}

// closeGracefully closes ws with code, and cuts raw (the TCP connection
// under it) if the close handshake has not ended within closeGrace.
func closeGracefully(ws *websocket.Conn, raw net.Conn, code websocket.StatusCode, reason string) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = ws.Close(code, reason)
	}()
	t := time.NewTimer(closeGrace)
	select {
	case <-done:
	case <-t.C:
		if raw != nil {
			_ = raw.Close()
		}
		_ = ws.CloseNow()
		<-done
	}
	t.Stop()
}

// cut closes the TCP connection under the WebSocket: no close frame.
func (c *conn) cut() {
	if c.raw != nil {
		_ = c.raw.Close()
		return
	}
	_ = c.ws.CloseNow()
}

// sleepUntil waits for t; it reports false if the connection ended first.
func (c *conn) sleepUntil(t time.Time) bool {
	d := time.Until(t)
	if d <= 0 {
		return c.ctx.Err() == nil
	}
	tm := time.NewTimer(d)
	defer tm.Stop()
	select {
	case <-tm.C:
		return true
	case <-c.ctx.Done():
		return false
	}
}

// write writes the queued frames in order. A close or abort ends it, and
// with it the connection.
func (c *conn) write() {
	defer c.wg.Done()
	defer c.cancel()
	for {
		var f outFrame
		select {
		case f = <-c.out:
			c.outRoom.give(len(f.data))
		case <-c.ctx.Done():
			return
		}
		if !c.sleepUntil(f.due) {
			return
		}
		switch {
		case f.abort:
			c.log.Info("relaytest: connection cut")
			c.cut()
			return
		case f.close:
			c.log.Info("relaytest: closing connection", "status", int(f.code), "reason", f.reason)
			_ = c.ws.Close(f.code, f.reason)
			return
		}
		if err := c.ws.Write(c.ctx, f.typ, f.data); err != nil {
			return
		}
	}
}

// send queues f for the client; it reports false if the connection ended.
func (c *conn) send(f outFrame) bool {
	f.due = time.Now().Add(c.s.opts.Latency.ToClient)
	if !c.outRoom.take(c.ctx, len(f.data)) {
		return false
	}
	select {
	case c.out <- f:
		return true
	case <-c.ctx.Done():
		return false
	}
}

// sendControl queues a control message.
func (c *conn) sendControl(typ string, data any) bool {
	return c.send(outFrame{typ: websocket.MessageText, data: wire.MustEncode(typ, data)})
}

// closeWith queues a clean close after what is already queued. It returns
// false, so that handlers can end with it.
func (c *conn) closeWith(code websocket.StatusCode, reason string) bool {
	c.send(outFrame{close: true, code: code, reason: reason})
	return false
}

// protocolError closes with 1002. The detail goes to the log, the close
// frame gets a fixed reason.
func (c *conn) protocolError(detail string) bool {
	c.log.Info("relaytest: protocol error", "detail", detail)
	return c.closeWith(websocket.StatusProtocolError, "protocol error")
}

// process runs the protocol: authentication, then channels and their data.
// It stops at the first frame that ends the connection.
func (c *conn) process() {
	defer c.wg.Done()
	// Once the protocol stops, nothing reads c.in: the reader in serve must
	// not wait to hand it a frame (the writer still sends what is queued).
	defer close(c.processed)
	defer c.dropChannel()
	authTimer := time.NewTimer(c.s.opts.AuthTimeout)
	defer authTimer.Stop()
	for {
		var timeout <-chan time.Time
		if !c.authed {
			timeout = authTimer.C
		}
		select {
		case <-c.ctx.Done():
			return
		case <-timeout:
			c.log.Info("relaytest: no AUTHENTICATE in time", "timeout", c.s.opts.AuthTimeout)
			c.closeWith(wire.StatusAuthTimeout, "authentication timeout")
			return
		case f := <-c.in:
			c.inRoom.give(len(f.data))
			if !c.sleepUntil(f.due) || !c.handle(f) {
				return
			}
		}
	}
}

// handle handles one frame; false ends the connection.
func (c *conn) handle(f inFrame) bool {
	if f.typ == websocket.MessageBinary {
		if !c.authed {
			return c.protocolError("binary frame before authentication")
		}
		return c.data(f.data, true)
	}
	if !utf8.Valid(f.data) {
		// A JSON string cannot hold these bytes; decoding would replace
		// them silently, the data loss docs/protocol.md §7 forbids.
		c.log.Info("relaytest: text frame is not valid UTF-8")
		return c.closeWith(websocket.StatusInvalidFramePayloadData, "text frame is not valid UTF-8")
	}
	m, err := wire.Decode(f.data)
	if err != nil {
		if tooBigControl(f.data) {
			c.log.Info("relaytest: control message too big", "bytes", len(f.data))
			return c.closeWith(websocket.StatusMessageTooBig, "control message too big")
		}
		return c.protocolError(err.Error())
	}
	if !c.authed {
		if m.Type != wire.TypeAuthenticate || c.authSeen {
			return c.protocolError(m.Type + " before authentication")
		}
		return c.authenticate(m)
	}
	switch m.Type {
	case wire.TypeAuthenticate:
		return c.protocolError("second AUTHENTICATE")
	case wire.TypeChannelOpen:
		return c.openChannel(m)
	case wire.TypeChannelClose:
		return c.closeChannel()
	case wire.TypeToServer:
		p, err := wire.DecodeData(m)
		if err != nil {
			return c.protocolError(err.Error())
		}
		return c.data(p, false)
	case wire.TypeAuthenticateResponse, wire.TypeChannelReady, wire.TypeChannelError,
		wire.TypeChannelClosed, wire.TypeFromServer:
		return c.protocolError(m.Type + " sent by the client")
	default:
		c.log.Debug("relaytest: unknown message type ignored", "type", m.Type)
		return true
	}
}

func (c *conn) authenticate(m wire.Message) bool {
	c.authSeen = true
	var a wire.Authenticate
	if err := m.Unmarshal(&a); err != nil {
		return c.protocolError(err.Error())
	}
	key := wire.MaskKey(a.APIKey)
	if f, ok := c.s.takeFault(kindIs(RejectAuth, IgnoreAuth, DropAfterAuthenticate)); ok {
		c.log.Info("relaytest: fault", "fault", f.Kind, "key", key)
		switch f.Kind {
		case IgnoreAuth:
			return true
		case DropAfterAuthenticate:
			c.cut()
			return false
		default: // RejectAuth
			msg := f.Error
			if msg == "" {
				msg = "authentication rejected"
			}
			return c.refuse(msg)
		}
	}
	if !c.validKey(a.APIKey) {
		c.log.Info("relaytest: authentication failed", "key", key)
		return c.refuse("invalid API key")
	}
	c.authed = true
	c.s.count(func(st *Stats) { st.Authenticated++ })
	c.log.Info("relaytest: authenticated", "key", key)
	return c.sendControl(wire.TypeAuthenticateResponse, wire.AuthenticateResponse{Success: true})
}

func (c *conn) refuse(msg string) bool {
	c.s.count(func(st *Stats) { st.AuthFailures++ })
	c.sendControl(wire.TypeAuthenticateResponse, wire.AuthenticateResponse{Error: msg})
	return c.closeWith(wire.StatusAuthFailed, "authentication failed")
}

func (c *conn) validKey(key string) bool {
	ok := 0
	for _, k := range c.s.opts.APIKeys {
		ok |= subtle.ConstantTimeCompare([]byte(k), []byte(key))
	}
	return ok == 1
}

func (c *conn) openChannel(m wire.Message) bool {
	var req wire.ChannelOpen
	if err := m.Unmarshal(&req); err != nil {
		return c.protocolError(err.Error())
	}
	if c.ch != nil {
		if !c.ch.isEnded() {
			return c.protocolError("SMTP_CHANNEL_OPEN while a channel is open")
		}
		c.dropChannel() // ended by the relay; the client did not say CLOSE
	}
	if f, ok := c.s.takeFault(kindIs(FailChannel, IgnoreChannel)); ok {
		c.log.Info("relaytest: fault", "fault", f.Kind)
		if f.Kind == IgnoreChannel {
			return true
		}
		msg := f.Error
		if msg == "" {
			msg = "upstream unavailable"
		}
		return c.sendControl(wire.TypeChannelError, wire.ChannelError{Error: msg})
	}

	up, err := c.s.dialUpstream(c.ctx)
	if err != nil {
		if c.ctx.Err() != nil {
			return false
		}
		c.log.Info("relaytest: upstream unreachable", "upstream", c.s.SMTPAddr, "err", err)
		return c.sendControl(wire.TypeChannelError, wire.ChannelError{Error: "upstream unreachable: " + err.Error()})
	}
	c.lastChannel++
	binary := req.Binary && !c.s.opts.DisableBinary
	ch := newChannel(c, c.lastChannel, up, binary)
	// The connection's end closes the upstream, so that a write to an
	// upstream that stopped reading cannot hold the connection open.
	ch.unwatch = context.AfterFunc(c.ctx, func() { _ = up.Close() })
	if f, ok := c.s.takeFault(kindIs(DropAfterBytes)); ok {
		ch.log.Info("relaytest: fault armed", "fault", f.Kind, "bytes", f.Bytes, "fromServer", f.FromServer)
		if f.FromServer {
			ch.downLimit = f.Bytes
		} else {
			ch.upLimit = f.Bytes
		}
	}
	if !c.sendControl(wire.TypeChannelReady, wire.ChannelOpen{Binary: binary}) {
		_ = up.Close()
		return false
	}
	c.ch = ch
	c.s.count(func(st *Stats) { st.Channels++ })
	ch.log.Info("relaytest: channel open", "binary", binary, "upstream", c.s.SMTPAddr)
	c.wg.Add(1)
	go ch.readUpstream()
	return true
}

// closeChannel answers SMTP_CHANNEL_CLOSE.
func (c *conn) closeChannel() bool {
	ch := c.ch
	if ch == nil {
		// Nothing to close: a channel that failed to open, or a CLOSE that
		// crossed the relay's own CLOSED/ERROR. Not worth killing the
		// connection over.
		c.log.Debug("relaytest: SMTP_CHANNEL_CLOSE without a channel, ignored")
		return true
	}
	first := ch.endByClient()
	c.dropChannel()
	if !first {
		// The relay already sent CLOSED or ERROR for this channel: that was
		// the answer.
		return true
	}
	ch.log.Info("relaytest: channel closed by client")
	return c.sendControl(wire.TypeChannelClosed, nil)
}

// dropChannel closes the upstream of the current channel, if any, and
// waits for its reader.
func (c *conn) dropChannel() {
	ch := c.ch
	if ch == nil {
		return
	}
	c.ch = nil
	ch.unwatch()
	_ = ch.up.Close()
	<-ch.done
}

// data handles SMTP bytes from the client.
func (c *conn) data(p []byte, binary bool) bool {
	ch := c.ch
	if ch == nil {
		return c.protocolError("SMTP data while no channel is open")
	}
	if ch.binary != binary {
		if binary {
			return c.protocolError("binary frame on a JSON channel")
		}
		return c.protocolError("JSON data message on a binary channel")
	}
	return ch.fromClient(p)
}

// tooBigControl reports whether a frame that wire.Decode refused is a
// well-formed control message over wire.MaxControl, which docs/protocol.md §4
// answers with 1009 rather than 1002.
func tooBigControl(frame []byte) bool {
	if len(frame) <= wire.MaxControl {
		return false
	}
	var probe struct {
		Type string `json:"type"`
	}
	return json.Unmarshal(frame, &probe) == nil && probe.Type != "" && !wire.IsData(probe.Type)
}
