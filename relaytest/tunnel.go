package relaytest

import (
	"context"
	"io"
	"net/http"
	"slices"
	"strings"
	"sync"

	"github.com/coder/websocket"
)

// serveTunnel is Options.RawTunnel: the WebSocket carries the SMTP byte
// stream in binary frames from the first byte, as Debian's websockify
// carries a TCP connection, with the key (if any is required) in
// "Authorization: Bearer <key>". One WebSocket is one SMTP session.
// Faults, latency and JSON frames do not apply.
func (s *Server) serveTunnel(w http.ResponseWriter, r *http.Request, restarts int) {
	key, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if !ok || !slices.Contains(s.opts.APIKeys, key) {
		http.Error(w, "unauthorized", http.StatusUnauthorized)
		return
	}
	ws, err := websocket.Accept(w, r, &websocket.AcceptOptions{Subprotocols: []string{"binary"}})
	if err != nil {
		s.log.Info("relaytest: tunnel upgrade refused", "remote", r.RemoteAddr, "err", err)
		return
	}
	ws.SetReadLimit(-1) // a raw tunnel: frames of any size, streamed
	up, err := s.dialUpstream(r.Context())
	if err != nil {
		ws.Close(websocket.StatusTryAgainLater, "upstream unreachable")
		return
	}
	ctx, cancel := context.WithCancel(context.Background())
	nc := websocket.NetConn(ctx, ws, websocket.MessageBinary)
	s.mu.Lock()
	if s.closed || s.restarts != restarts {
		s.mu.Unlock()
		cancel()
		up.Close()
		ws.Close(websocket.StatusServiceRestart, "service restart")
		return
	}
	s.stats.Connections++
	s.stats.Channels++
	s.tunnels[nc] = cancel
	s.mu.Unlock()
	s.log.Info("relaytest: tunnel open", "remote", r.RemoteAddr, "upstream", s.SMTPAddr)

	var wg sync.WaitGroup
	wg.Go(func() { io.Copy(up, nc); up.Close() })
	io.Copy(nc, up)
	nc.Close()
	up.Close()
	wg.Wait()
	cancel()
	s.mu.Lock()
	delete(s.tunnels, nc)
	s.mu.Unlock()
}

// closeTunnels ends every open tunnel.
func (s *Server) closeTunnels() {
	s.mu.Lock()
	var ends []context.CancelFunc
	for _, cancel := range s.tunnels {
		ends = append(ends, cancel)
	}
	s.mu.Unlock()
	for _, end := range ends {
		end() // NetConn closes its WebSocket when its context ends
	}
}
