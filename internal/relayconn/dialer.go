package relayconn

import (
	"context"
	"errors"
	"net"

	"github.com/coder/websocket"

	"github.com/mxrelay/mxrelay/internal/wire"
)

// Stream is what one SMTP session runs over: a Channel of a Conn, or a
// raw tunnel (Config.RawTunnel).
type Stream interface {
	net.Conn
	// Binary reports whether any byte may travel (false: UTF-8 only).
	Binary() bool
	// Written counts the bytes handed to the WebSocket so far, including
	// a write that failed: a byte counted here may have reached the relay.
	Written() int64
	// Cause says why the far end ended the stream, or nil.
	Cause() error
	// Abort closes the stream now, interrupting a write in progress.
	Abort()
}

// Step is a step a Dialer takes to set up a stream, reported to
// Config.Step as it is taken.
type Step int

// The steps, in the order they are taken. A raw tunnel takes the first
// two; the mxrelay protocol takes the first four once per connection and
// the last once per stream.
const (
	StepConnecting     Step = iota + 1 // dialing the WebSocket
	StepConnected                      // the WebSocket is open
	StepAuthenticating                 // AUTHENTICATE is sent
	StepAuthenticated                  // the relay accepted the API key
	StepChannelOpening                 // SMTP_CHANNEL_OPEN is sent
)

// Dialer opens the streams SMTP sessions run over, through the transport
// NewDialer chose once: the mxrelay protocol, which keeps one
// authenticated Conn between streams and opens a Channel on it for each,
// or raw tunnels, a WebSocket each, of which none is kept. A Dialer is
// used by one goroutine at a time.
type Dialer interface {
	// Open returns a stream ready for the SMTP greeting: it dials (within
	// Config.DialTimeout) and authenticates when no connection is kept,
	// then opens a channel, reporting each step to Config.Step before it
	// is taken, or, for StepConnected and StepAuthenticated, once it is
	// done. ctx bounds all of it. A kept connection that has ended is not
	// dialled again: Close it first (Done says when). When Open fails, a
	// connection that failed with it has ended: Done is closed and Err
	// says why. Errors are *AuthError (the key was refused), *ChannelError,
	// *ClosedError, *ProtocolError, ErrTimeout (AuthTimeout,
	// ChannelTimeout) or the dial's own error (a context deadline for
	// DialTimeout, a *tls.CertificateVerificationError).
	Open(ctx context.Context) (Stream, error)
	// Done is closed when the kept connection has ended; Err then says
	// why. It is nil when no connection is kept: none yet, after Close,
	// or raw tunnels, which keep none.
	Done() <-chan struct{}
	// Err is why the kept connection ended; nil while it is alive or
	// when none is kept.
	Err() error
	// Close ends the kept connection with a normal close (1000) and waits
	// for its goroutines. It does nothing when none is kept.
	Close()
}

// NewDialer returns the Dialer of cfg's transport.
func NewDialer(cfg Config) Dialer {
	if cfg.RawTunnel {
		return &tunnelDialer{cfg: cfg}
	}
	return &relayDialer{cfg: cfg}
}

// RetryFor says how a client comes back after a connection ended with err
// (Dialer.Err, Conn.Err): wire.RetryIfWork after a normal close (1000),
// wire.RetryNever after the key was refused, wire.RetryBackoff after
// anything else. err may be wrapped.
func RetryFor(err error) wire.Retry {
	var ae *AuthError
	var ce *ClosedError
	switch {
	case errors.As(err, &ae):
		return wire.RetryNever
	case errors.As(err, &ce):
		return wire.RetryFor(ce.Code)
	}
	return wire.RetryBackoff
}

func (c Config) step(s Step) {
	if c.Step != nil {
		c.Step(s)
	}
}

// dial runs fn within DialTimeout, after reporting StepConnecting.
func dial[T any](ctx context.Context, cfg Config, fn func(context.Context, Config) (T, error)) (T, error) {
	cfg.step(StepConnecting)
	if cfg.DialTimeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, cfg.DialTimeout)
		defer cancel()
	}
	return fn(ctx, cfg)
}

// relayDialer is the mxrelay protocol: one Conn, kept, and a Channel per
// stream.
type relayDialer struct {
	cfg  Config
	conn *Conn
}

func (d *relayDialer) Open(ctx context.Context) (Stream, error) {
	if d.conn == nil {
		conn, err := dial(ctx, d.cfg, Dial)
		if err != nil {
			return nil, err
		}
		d.conn = conn
		d.cfg.step(StepConnected)
		d.cfg.step(StepAuthenticating)
		if err := conn.Authenticate(ctx); err != nil {
			conn.abort(websocket.StatusNormalClosure, err) // ended with it
			return nil, err
		}
		d.cfg.step(StepAuthenticated)
	}
	d.cfg.step(StepChannelOpening)
	ch, err := d.conn.OpenChannel(ctx)
	if err != nil {
		return nil, err
	}
	return ch, nil
}

func (d *relayDialer) Done() <-chan struct{} {
	if d.conn == nil {
		return nil
	}
	return d.conn.Done()
}

func (d *relayDialer) Err() error {
	if d.conn == nil {
		return nil
	}
	return d.conn.Err()
}

func (d *relayDialer) Close() {
	if d.conn != nil {
		d.conn.Close(websocket.StatusNormalClosure, "")
		d.conn = nil
	}
}

// tunnelDialer is raw tunnels: a WebSocket per stream, none kept.
type tunnelDialer struct {
	cfg Config
}

func (d *tunnelDialer) Open(ctx context.Context) (Stream, error) {
	t, err := dial(ctx, d.cfg, dialTunnel)
	if err != nil {
		return nil, err
	}
	d.cfg.step(StepConnected)
	return t, nil
}

func (d *tunnelDialer) Done() <-chan struct{} { return nil }
func (d *tunnelDialer) Err() error            { return nil }
func (d *tunnelDialer) Close()                {}
