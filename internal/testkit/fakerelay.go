package testkit

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/mxrelay/mxrelay/internal/wire"
)

// FakeRelay is a hand-written relay whose behaviour after accepting the
// WebSocket is the test's script. It records the close status it got.
// Its methods are safe for concurrent use.
type FakeRelay struct {
	*httptest.Server
	mu     sync.Mutex
	closes []websocket.StatusCode
	conns  int
}

// NewFakeRelay starts a FakeRelay that selects one of subprotocols and runs
// script for each WebSocket, within five seconds, then reads until the
// client closes. It is closed when the test ends.
func NewFakeRelay(t testing.TB, subprotocols []string, script func(ctx context.Context, ws *websocket.Conn)) *FakeRelay {
	f := &FakeRelay{}
	var wg sync.WaitGroup
	f.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ws, err := websocket.Accept(w, r, &websocket.AcceptOptions{Subprotocols: subprotocols})
		if err != nil {
			return
		}
		wg.Add(1)
		defer wg.Done()
		f.mu.Lock()
		f.conns++
		f.mu.Unlock()
		ctx, cancel := context.WithTimeout(r.Context(), 5*time.Second)
		defer cancel()
		script(ctx, ws)
		// Read until the client closes, to learn its close status.
		for {
			if _, _, err := ws.Read(ctx); err != nil {
				f.mu.Lock()
				f.closes = append(f.closes, websocket.CloseStatus(err))
				f.mu.Unlock()
				ws.CloseNow()
				return
			}
		}
	}))
	t.Cleanup(func() {
		f.Server.CloseClientConnections()
		f.Server.Close()
		wg.Wait()
	})
	return f
}

// WSURL is the relay's ws:// URL.
func (f *FakeRelay) WSURL() string { return "ws" + strings.TrimPrefix(f.Server.URL, "http") + "/smtp" }

// CloseCodes are the close statuses the clients sent, in order.
func (f *FakeRelay) CloseCodes() []websocket.StatusCode {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]websocket.StatusCode(nil), f.closes...)
}

// Conns is how many WebSockets the relay accepted.
func (f *FakeRelay) Conns() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.conns
}

// SendFrame writes the control message typ with data as a text frame.
func SendFrame(ctx context.Context, ws *websocket.Conn, typ string, data any) {
	ws.Write(ctx, websocket.MessageText, wire.MustEncode(typ, data))
}

// AuthOK reads AUTHENTICATE and accepts it.
func AuthOK(ctx context.Context, ws *websocket.Conn) bool {
	_, p, err := ws.Read(ctx)
	if err != nil {
		return false
	}
	m, err := wire.Decode(p)
	if err != nil || m.Type != wire.TypeAuthenticate {
		return false
	}
	SendFrame(ctx, ws, wire.TypeAuthenticateResponse, wire.AuthenticateResponse{Success: true})
	return true
}
