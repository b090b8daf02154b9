package mxrelay

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"sync/atomic"

	"github.com/coder/websocket"
)

// stream is what a session speaks SMTP over: a channel of the mxrelay
// protocol, or a raw tunnel (Options.RawTunnel).
type stream interface {
	net.Conn
	// Binary reports whether any byte may travel (false: UTF-8 only).
	Binary() bool
	// Written counts the bytes handed to the WebSocket so far.
	Written() int64
	// Cause says why the far end ended the stream, or nil.
	Cause() error
	// Abort closes the stream now, interrupting a write in progress.
	Abort()
}

// tunnel is a raw WebSocket tunnel: the SMTP byte stream in binary frames
// from the first byte, as Debian's websockify carries a TCP connection.
type tunnel struct {
	net.Conn
	ws      *websocket.Conn
	written atomic.Int64
}

// dialTunnel opens one tunnel. The API key, when there is one, travels as
// "Authorization: Bearer <key>" on the upgrade request.
func (c *Client) dialTunnel(ctx context.Context) (*tunnel, error) {
	dctx, cancel := context.WithTimeout(ctx, c.opts.DialTimeout)
	defer cancel()
	h := http.Header{}
	for k, v := range c.opts.Header {
		h[k] = v
	}
	if c.apiKey != "" {
		h.Set("Authorization", "Bearer "+c.apiKey)
	}
	ws, resp, err := websocket.Dial(dctx, c.url, &websocket.DialOptions{
		HTTPClient:   c.opts.HTTPClient,
		HTTPHeader:   h,
		Subprotocols: []string{"binary"}, // websockify's name for raw bytes
	})
	if resp != nil && resp.Body != nil {
		resp.Body.Close()
	}
	if err != nil {
		if resp != nil && (resp.StatusCode == http.StatusUnauthorized || resp.StatusCode == http.StatusForbidden) {
			return nil, fmt.Errorf("%w: the tunnel answered %s", ErrAuthFailed, resp.Status)
		}
		if cerr := certErr(err); cerr != nil {
			return nil, cerr
		}
		return nil, &RelayError{Code: -1, Reason: "dial", Err: fmt.Errorf("tunnel: %w", err)}
	}
	// The frames are unbounded in a raw tunnel; the SMTP reader bounds
	// what it keeps (a line, a reply).
	ws.SetReadLimit(-1)
	t := &tunnel{ws: ws}
	t.Conn = websocket.NetConn(context.Background(), ws, websocket.MessageBinary)
	return t, nil
}

func (t *tunnel) Write(p []byte) (int, error) {
	// Counted before the write: a frame that fails part-way may still have
	// reached the gateway, and an end of data must then count as sent.
	t.written.Add(int64(len(p)))
	return t.Conn.Write(p)
}

// Abort cuts the tunnel's connection: a write blocked on a gateway that
// stopped reading returns.
func (t *tunnel) Abort() { t.ws.CloseNow() }

func (t *tunnel) Binary() bool   { return true }
func (t *tunnel) Written() int64 { return t.written.Load() }

// Cause is nil: a raw tunnel has no message saying why it ended.
func (t *tunnel) Cause() error { return nil }
