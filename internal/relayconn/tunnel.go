package relayconn

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"
)

// tunnel is a raw WebSocket tunnel: the SMTP byte stream in binary frames
// from the first byte, as Debian's websockify carries a TCP connection
// (docs/protocol.md §13). One tunnel is one session.
type tunnel struct {
	net.Conn
	ws      *websocket.Conn
	written atomic.Int64
	// The deadlines set: coder/websocket's net.Conn ends a read or write
	// in progress at its deadline with "context canceled", which Read and
	// Write turn back into os.ErrDeadlineExceeded.
	rd, wd atomic.Pointer[time.Time]
}

// dialTunnel opens one tunnel. The API key, when there is one, travels as
// "Authorization: Bearer <key>" on the upgrade request; a 401 or 403 to it
// is an *AuthError. Other failures are the dial's error.
func dialTunnel(ctx context.Context, cfg Config) (*tunnel, error) {
	h := http.Header{}
	for k, v := range cfg.Header {
		h[k] = v
	}
	if cfg.APIKey != "" {
		h.Set("Authorization", "Bearer "+cfg.APIKey)
	}
	ws, resp, err := websocket.Dial(ctx, cfg.URL, &websocket.DialOptions{
		HTTPClient:   cfg.HTTPClient,
		HTTPHeader:   h,
		Subprotocols: []string{"binary"}, // websockify's name for raw bytes
	})
	if resp != nil && resp.Body != nil {
		resp.Body.Close()
	}
	if err != nil {
		if resp != nil && (resp.StatusCode == http.StatusUnauthorized || resp.StatusCode == http.StatusForbidden) {
			return nil, &AuthError{Message: "the tunnel answered " + resp.Status}
		}
		return nil, fmt.Errorf("tunnel: %w", err)
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
	n, err := t.Conn.Write(p)
	return n, passed(&t.wd, "write", err)
}

func (t *tunnel) Read(p []byte) (int, error) {
	n, err := t.Conn.Read(p)
	return n, passed(&t.rd, "read", err)
}

// passed returns, for the error of an operation whose deadline d has
// passed, os.ErrDeadlineExceeded, as a net.Conn says a deadline passed;
// otherwise err.
func passed(d *atomic.Pointer[time.Time], op string, err error) error {
	if at := d.Load(); err != nil && at != nil && !at.IsZero() && !time.Now().Before(*at) {
		return fmt.Errorf("tunnel %s: %w", op, os.ErrDeadlineExceeded)
	}
	return err
}

func (t *tunnel) SetDeadline(at time.Time) error {
	t.SetReadDeadline(at)
	return t.SetWriteDeadline(at)
}

func (t *tunnel) SetReadDeadline(at time.Time) error {
	t.rd.Store(&at)
	return t.Conn.SetReadDeadline(at)
}

func (t *tunnel) SetWriteDeadline(at time.Time) error {
	t.wd.Store(&at)
	return t.Conn.SetWriteDeadline(at)
}

// Abort cuts the tunnel's connection: a write blocked on a gateway that
// stopped reading returns.
func (t *tunnel) Abort() { t.ws.CloseNow() }

// Binary is true: a tunnel carries any byte.
func (t *tunnel) Binary() bool { return true }

// Written counts the bytes handed to the WebSocket so far.
func (t *tunnel) Written() int64 { return t.written.Load() }

// Cause is nil: a raw tunnel has no message saying why it ended.
func (t *tunnel) Cause() error { return nil }
