package relaytest

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"log"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"slices"
	"sync"
	"time"

	"github.com/coder/websocket"
	"github.com/emersion/go-smtp"

	"github.com/mxrelay/mxrelay/internal/wire"
)

// DefaultAPIKey is the key a Server accepts when Options.APIKeys is empty.
const DefaultAPIKey = "relaytest-key-0123456789"

// Defaults of Options.
const (
	DefaultAddr        = "127.0.0.1:0"
	DefaultAuthTimeout = 10 * time.Second
	DefaultDomain      = "relaytest.local"
)

// closeGrace is how long Close and CloseClientConnections wait for a
// client to answer the close frame before cutting the TCP connection.
const closeGrace = time.Second

// dialTimeout bounds the dial of the upstream.
const dialTimeout = 10 * time.Second

// Options configures a Server. A nil *Options and the zero value of every
// field are useful; the Server works on a copy.
type Options struct {
	// Addr is the address the relay listens on, on Network (TCP unless
	// set). "" means 127.0.0.1:0 (loopback, a free port). The package
	// does not refuse other addresses; cmd/mockrelay does unless asked.
	Addr string
	// APIKeys are the accepted keys; empty means only DefaultAPIKey.
	APIKeys []string
	// UpstreamAddr is the host:port of an SMTP server to forward channels
	// to, reached through Network. "" starts the in-process go-smtp
	// server, whose accepted messages are in Mailbox.
	UpstreamAddr string
	// Users (in-process server only) maps SMTP AUTH users to passwords.
	// Non-empty: AUTH PLAIN and LOGIN are offered and required before
	// MAIL. Empty: no AUTH is offered.
	Users map[string]string
	// AuthMechanisms (in-process server only, with Users) limits the SASL
	// mechanisms offered, in order. Zero: PLAIN and LOGIN.
	AuthMechanisms []string
	// TLSConfig (in-process server only): when set, the upstream offers
	// STARTTLS with this config. nil: no STARTTLS.
	TLSConfig *tls.Config
	// RawTunnel makes the Server a websockify-style raw tunnel instead of
	// an mxrelay relay: each WebSocket carries one SMTP session's bytes in
	// binary frames from the first byte, to the same upstream, with the key
	// in "Authorization: Bearer <key>" (401 without). For mxrelay's
	// Options.RawTunnel. Faults, Latency and DisableBinary do not apply.
	RawTunnel bool
	// DisableBinary refuses binary frames: READY never carries
	// "binary": true. false: binary is granted whenever asked.
	DisableBinary bool
	// HideExtensions are EHLO keywords the relay removes from the
	// upstream's EHLO reply, case-insensitive: "CHUNKING" stands for a
	// server without BDAT, "PIPELINING" for a lock-step one. Zero: the
	// reply passes as it is.
	HideExtensions []string
	// NoSubprotocol makes the relay select no subprotocol even when the
	// client offers mxrelay.v1. false: mxrelay.v1 is selected when offered.
	NoSubprotocol bool
	// AuthTimeout is how long the relay waits for AUTHENTICATE before
	// closing with 4001. Zero means DefaultAuthTimeout (10s).
	AuthTimeout time.Duration
	// Latency delays frames. Zero: no delay.
	Latency Latency
	// Domain is the in-process server's hostname, in its greeting. ""
	// means DefaultDomain ("relaytest.local").
	Domain string
	// MaxMessageBytes is the in-process server's message size limit,
	// advertised in EHLO (SIZE). Zero: no limit.
	MaxMessageBytes int64
	// Throttle, if set, makes the relay answer as an upstream that limits
	// its senders (Amazon SES, Gmail, providers at N per second): past
	// Limit transactions in a window of Per, MAIL is answered Reply and
	// not forwarded, so the transaction goes nowhere.
	Throttle *Throttle
	// Logger receives connection, authentication and channel events at
	// Info, the SMTP dialogue (verbs and reply codes, never credentials or
	// bodies) at Debug. nil: silent.
	Logger *slog.Logger
	// OnMessage, if set, is called with each message the in-process
	// upstream accepts, after it is in the mailbox and before the 250 to
	// the end of data is sent (so a client that saw 250 knows the callback
	// ran). It is called from the SMTP session's goroutine; a panic in it is
	// recovered and logged.
	OnMessage func(Message)
	// OnSMTPData, if set, is called with the SMTP bytes of every channel in
	// the unit Fault.DropAfterBytes counts: the SMTP stream of one channel,
	// without WebSocket framing, JSON encoding or control messages. Bytes
	// from the client are reported as they arrive, before the relay parses
	// them; bytes to the client as they are queued for it, after faults
	// have changed them. A stream cut by DropAfterBytes is reported up to
	// the cut. It is called from the relay's goroutines, in order within
	// one direction of a channel, and must not call the Server's methods
	// that wait for connections (Close, CloseClientConnections); a panic in
	// it is recovered and logged. Nil: not called.
	OnSMTPData func(SMTPData)
	// Network, if set, carries every connection of the Server: the relay
	// listens on it at Addr, the in-process upstream listens on it, and
	// the relay reaches UpstreamAddr through it. It is for a network in
	// memory, so that a Server, its upstream and a client can run inside
	// a testing/synctest bubble (a goroutine blocked on a real socket
	// keeps the bubble's clock from advancing); the client then dials
	// through it too, with an http.Client whose Transport's DialContext is
	// the Network's. Nil: TCP.
	Network Network
}

// Network is what a Server listens on and dials through
// (Options.Network). Its methods must be safe for concurrent use; network
// is always "tcp".
type Network interface {
	Listen(network, address string) (net.Listener, error)
	DialContext(ctx context.Context, network, address string) (net.Conn, error)
}

// tcp is the host's network.
type tcp struct{}

func (tcp) Listen(network, address string) (net.Listener, error) { return net.Listen(network, address) }

func (tcp) DialContext(ctx context.Context, network, address string) (net.Conn, error) {
	var d net.Dialer
	return d.DialContext(ctx, network, address)
}

// dialUpstream connects to the upstream, within dialTimeout.
func (s *Server) dialUpstream(ctx context.Context) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(ctx, dialTimeout)
	defer cancel()
	return s.opts.Network.DialContext(ctx, "tcp", s.SMTPAddr)
}

// SMTPData is a piece of the SMTP stream of a channel, for
// Options.OnSMTPData.
type SMTPData struct {
	// Conn numbers the relay's WebSockets from 1 in the order they were
	// accepted; Channel numbers the channels of one WebSocket from 1.
	Conn, Channel int
	// FromServer is the direction: false from the client to the upstream,
	// true from the upstream (or the relay's own replies) to the client.
	FromServer bool
	// Data is the caller's to keep.
	Data []byte
}

// Latency is an injected delay per direction, applied to every frame the
// relay sends that way (control messages and SMTP data alike), without
// reordering frames and without slowing the other direction.
type Latency struct {
	// ToServer delays frames from the client: they are handled (and their
	// SMTP bytes forwarded upstream) this long after they arrive.
	ToServer time.Duration
	// ToClient delays frames to the client: each is written this long
	// after the relay produced it.
	ToClient time.Duration
}

// Server is a test relay. Create it with NewServer, or NewUnstartedServer
// and Start; Close it when done. Its methods are safe for concurrent use.
type Server struct {
	// URL is the WebSocket URL of the relay, "ws://127.0.0.1:PORT/smtp",
	// set by Start.
	URL string
	// APIKey is a key the Server accepts: the first of Options.APIKeys, or
	// DefaultAPIKey.
	APIKey string
	// SMTPAddr is the address of the upstream: the in-process server's
	// loopback address, or Options.UpstreamAddr. Set by Start.
	SMTPAddr string

	opts Options
	log  *slog.Logger
	ln   net.Listener

	http      *http.Server
	httpConns sync.WaitGroup // non-hijacked HTTP connections
	bg        sync.WaitGroup // the HTTP and SMTP accept loops

	smtp   *smtp.Server
	smtpLn net.Listener

	connWG    sync.WaitGroup // WebSocket handlers
	closeOnce sync.Once

	mu            sync.Mutex
	throttleStart time.Time // Options.Throttle's window
	throttleN     int
	started       bool
	closed        bool
	down          bool
	conns         map[*conn]struct{}
	tunnels       map[net.Conn]context.CancelFunc // Options.RawTunnel sessions
	accepting     map[chan struct{}]struct{}      // upgrades in progress; closed when decided
	restarts      int                             // CloseClientConnections calls
	upConns       map[*trackedConn]struct{}
	lastConnID    int
	faults        []*armedFault
	mailbox       []stored
	stats         Stats
	nextID        uint64
	storedBy      map[int][]uint64 // IDs of stored messages awaiting their 2xx reply, by upstream connection
	seqByAddr     map[string]int   // the upstream connection now from each relay-side address
}

// Stats counts what a Server saw since it started.
type Stats struct {
	Connections      int // WebSockets accepted
	Authenticated    int // successful AUTHENTICATE
	AuthFailures     int // AUTHENTICATE refused (bad key or RejectAuth)
	Channels         int // SMTP_CHANNEL_OPEN answered with READY (SMTP sessions through the relay)
	UpstreamSessions int // SMTP connections the in-process server accepted
	Messages         int // messages in the mailbox
	Throttled        int // MAIL commands refused by Options.Throttle
}

// Throttle is a sending limit of the upstream (see Options.Throttle).
type Throttle struct {
	Limit int           // transactions accepted per window
	Per   time.Duration // the window; zero: one second
	// Reply answers a MAIL past the limit. "": "451 4.7.0 Throttling:
	// too many messages, slow down". A 421 closes the session, as a real
	// server does after 421.
	Reply string
}

// throttled reports whether a MAIL now is past Options.Throttle, and
// counts it in the window when it is not.
func (s *Server) throttled(now time.Time) (string, bool) {
	t := s.opts.Throttle
	if t == nil {
		return "", false
	}
	per := t.Per
	if per <= 0 {
		per = time.Second
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if now.Sub(s.throttleStart) >= per {
		s.throttleStart, s.throttleN = now, 0
	}
	if s.throttleN < t.Limit {
		s.throttleN++
		return "", false
	}
	s.stats.Throttled++
	if t.Reply == "" {
		return "451 4.7.0 Throttling: too many messages, slow down", true
	}
	return t.Reply, true
}

// NewServer starts and returns a new Server. opts may be nil. It panics
// when it cannot listen, as httptest.NewServer does. The caller must Close
// it.
func NewServer(opts *Options) *Server {
	s := NewUnstartedServer(opts)
	s.Start()
	return s
}

// NewUnstartedServer returns a new Server that already listens, so its
// port is taken, but serves nothing until Start. opts may be nil. It
// panics when it cannot listen. The caller must Close it, started or not.
func NewUnstartedServer(opts *Options) *Server {
	var o Options
	if opts != nil {
		o = *opts
	}
	o.APIKeys = slices.Clone(o.APIKeys)
	if len(o.APIKeys) == 0 {
		o.APIKeys = []string{DefaultAPIKey}
	}
	o.Users = maps.Clone(o.Users)
	if o.Addr == "" {
		o.Addr = DefaultAddr
	}
	if o.AuthTimeout <= 0 {
		o.AuthTimeout = DefaultAuthTimeout
	}
	if o.Domain == "" {
		o.Domain = DefaultDomain
	}
	o.Latency.ToServer = max(o.Latency.ToServer, 0)
	o.Latency.ToClient = max(o.Latency.ToClient, 0)
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if t := o.Throttle; t != nil {
		c := *t // the caller's stays theirs
		o.Throttle = &c
		if _, code, err := formatReply(c.Reply); c.Reply != "" && (err != nil || code < 400) {
			panic(fmt.Sprintf("relaytest: Options.Throttle.Reply %q: want a 4xx or 5xx reply", c.Reply))
		}
	}
	if o.Network == nil {
		o.Network = tcp{}
	}
	ln, err := o.Network.Listen("tcp", o.Addr)
	if err != nil {
		panic(fmt.Sprintf("relaytest: failed to listen on %s: %v", o.Addr, err))
	}
	return &Server{
		APIKey:    o.APIKeys[0],
		opts:      o,
		log:       o.Logger,
		ln:        ln,
		conns:     make(map[*conn]struct{}),
		tunnels:   make(map[net.Conn]context.CancelFunc),
		accepting: make(map[chan struct{}]struct{}),
		upConns:   make(map[*trackedConn]struct{}),
		storedBy:  make(map[int][]uint64),
		seqByAddr: make(map[string]int),
	}
}

// Start starts a Server from NewUnstartedServer: the in-process upstream
// (unless Options.UpstreamAddr is set), then the relay. It panics if the
// Server was already started or closed.
func (s *Server) Start() {
	s.mu.Lock()
	if s.started || s.closed {
		s.mu.Unlock()
		panic("relaytest: Server already started or closed")
	}
	s.started = true
	s.mu.Unlock()

	if s.opts.UpstreamAddr != "" {
		s.SMTPAddr = s.opts.UpstreamAddr
	} else {
		s.startSMTP()
	}
	s.URL = "ws://" + s.ln.Addr().String() + wire.DefaultPath

	mux := http.NewServeMux()
	mux.HandleFunc(wire.DefaultPath, s.serveWebSocket)
	s.http = &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          log.New(io.Discard, "", 0),
		ConnContext: func(ctx context.Context, c net.Conn) context.Context {
			return context.WithValue(ctx, rawConnKey{}, c)
		},
		ConnState: func(_ net.Conn, st http.ConnState) {
			switch st {
			case http.StateNew:
				s.httpConns.Add(1)
			case http.StateHijacked, http.StateClosed:
				s.httpConns.Done()
			}
		},
	}
	s.bg.Add(1)
	go func() {
		defer s.bg.Done()
		_ = s.http.Serve(s.ln)
	}()
	s.log.Info("relaytest: listening", "url", s.URL, "upstream", s.SMTPAddr)
}

// rawConnKey is the context key under which the HTTP server stores the
// TCP connection of a request, so that a fault can cut it abruptly.
type rawConnKey struct{}

// Close closes the listener, every WebSocket (status 1001, or abruptly if
// the client does not answer the close frame within a second), every
// upstream connection and the in-process SMTP server, and waits for every
// goroutine the Server started. Calling it again does nothing.
func (s *Server) Close() {
	s.closeOnce.Do(s.close)
}

func (s *Server) close() {
	s.mu.Lock()
	s.closed = true
	started := s.started
	conns := slices.Collect(maps.Keys(s.conns))
	s.mu.Unlock()

	if !started {
		_ = s.ln.Close()
		return
	}
	_ = s.http.Close() // the listener and connections not yet upgraded
	shutdownConns(conns, websocket.StatusGoingAway, "relay closed")
	s.closeTunnels()
	s.connWG.Wait()
	if s.smtpLn != nil {
		_ = s.smtpLn.Close()
	}
	s.bg.Wait()
	s.httpConns.Wait()
	if s.smtp != nil {
		s.mu.Lock()
		ups := slices.Collect(maps.Keys(s.upConns))
		s.mu.Unlock()
		for _, c := range ups {
			_ = c.Close()
		}
		// The accept loop has returned and every connection is closed:
		// Shutdown only waits for the session goroutines to notice.
		_ = s.smtp.Shutdown(context.Background())
	}
	s.log.Info("relaytest: closed")
}

// CloseClientConnections closes every client WebSocket with status 1012
// (service restart), as a relay restart would, and returns when they are
// closed (a client that does not answer the close frame within a second is
// cut abruptly). Their channels and upstream connections close too. New
// connections are accepted afterwards.
func (s *Server) CloseClientConnections() {
	s.mu.Lock()
	s.restarts++
	conns := slices.Collect(maps.Keys(s.conns))
	accepting := slices.Collect(maps.Keys(s.accepting))
	s.mu.Unlock()
	shutdownConns(conns, websocket.StatusServiceRestart, "service restart")
	s.closeTunnels()
	// Upgrades under way close themselves, seeing restarts changed.
	for _, a := range accepting {
		<-a
	}
}

func shutdownConns(conns []*conn, code websocket.StatusCode, reason string) {
	var wg sync.WaitGroup
	for _, c := range conns {
		wg.Go(func() { c.shutdown(code, reason) })
	}
	wg.Wait()
}

// SetDown sets whether the relay is down. While it is, upgrade requests
// get HTTP 503 Service Unavailable (Retry-After: 1), as from a relay that
// is restarting; existing connections are left alone. SetDown(true) then
// CloseClientConnections is a relay going down; SetDown(false) brings it
// back.
func (s *Server) SetDown(down bool) {
	s.mu.Lock()
	s.down = down
	s.mu.Unlock()
}

// Stats returns the counters.
func (s *Server) Stats() Stats {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.stats
	st.Messages = len(s.mailbox)
	return st
}

func (s *Server) count(f func(*Stats)) {
	s.mu.Lock()
	f(&s.stats)
	s.mu.Unlock()
}

func (s *Server) serveWebSocket(w http.ResponseWriter, r *http.Request) {
	raw, _ := r.Context().Value(rawConnKey{}).(net.Conn)
	s.mu.Lock()
	if s.closed || s.down {
		s.mu.Unlock()
		w.Header().Set("Retry-After", "1")
		http.Error(w, "relay unavailable", http.StatusServiceUnavailable)
		return
	}
	s.connWG.Add(1)
	restarts := s.restarts
	accepting := make(chan struct{})
	s.accepting[accepting] = struct{}{}
	s.mu.Unlock()
	defer s.connWG.Done()
	var once sync.Once
	decided := func() {
		once.Do(func() {
			s.mu.Lock()
			delete(s.accepting, accepting)
			s.mu.Unlock()
			close(accepting)
		})
	}
	defer decided()

	if s.opts.RawTunnel {
		decided()
		s.serveTunnel(w, r, restarts)
		return
	}
	var protos []string
	if !s.opts.NoSubprotocol {
		protos = []string{wire.Subprotocol}
	}
	ws, err := websocket.Accept(w, r, &websocket.AcceptOptions{Subprotocols: protos})
	if err != nil {
		s.log.Info("relaytest: upgrade refused", "remote", r.RemoteAddr, "err", err)
		return
	}
	ws.SetReadLimit(wire.ReadLimit)

	// The client may already see the connection as open: if Close or
	// CloseClientConnections came meanwhile, close it as they would have.
	s.mu.Lock()
	s.stats.Connections++
	if s.closed || s.restarts != restarts {
		code, reason := websocket.StatusServiceRestart, "service restart"
		if s.closed {
			code, reason = websocket.StatusGoingAway, "relay closed"
		}
		s.mu.Unlock()
		closeGracefully(ws, raw, code, reason)
		return
	}
	s.lastConnID++
	c := newConn(s, s.lastConnID, ws, raw)
	s.conns[c] = struct{}{}
	s.mu.Unlock()
	decided()

	c.log.Info("relaytest: connection accepted", "remote", r.RemoteAddr, "subprotocol", ws.Subprotocol())
	c.serve()

	s.mu.Lock()
	delete(s.conns, c)
	s.mu.Unlock()
	close(c.finished)
}
