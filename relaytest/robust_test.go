package relaytest

import (
	"net"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/stretchr/testify/require"
)

func TestInvalidUTF8TextFrameIsRefused(t *testing.T) {
	s := NewServer(nil)
	defer s.Close()
	c := dial(t, s)
	c.auth(s.APIKey)
	c.open(false)
	c.cmd("EHLO x")
	c.sendRaw(websocket.MessageText, []byte(`{"type":"SMTP_TO_SERVER","data":"NOOP caf`+"\xe9"+`\r\n"}`))
	c.expectClose(websocket.StatusInvalidFramePayloadData)
}

// TestCloseWithADeafUpstream: an external upstream that greets and then
// never reads fills the TCP buffers; Close must still return.
func TestCloseWithADeafUpstream(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	var wg sync.WaitGroup
	stop := make(chan struct{})
	wg.Add(1)
	go func() {
		defer wg.Done()
		conn, err := ln.Accept()
		if err != nil {
			return
		}
		defer conn.Close()
		conn.Write([]byte("220 deaf.test ESMTP\r\n"))
		<-stop
	}()
	defer func() {
		close(stop)
		ln.Close()
		wg.Wait()
	}()

	s := NewServer(&Options{UpstreamAddr: ln.Addr().String()})
	c := dial(t, s)
	c.auth(s.APIKey)
	c.open(true)
	chunk := make([]byte, 1<<20)
	for i := range chunk {
		chunk[i] = 'x'
	}
	// Write until the relay stops taking frames (its upstream is full).
	done := make(chan struct{})
	go func() {
		defer close(done)
		for range 64 {
			ctx := t.Context()
			if err := c.ws.Write(ctx, websocket.MessageBinary, chunk); err != nil {
				return
			}
		}
	}()
	select {
	case <-done:
	case <-time.After(2 * time.Second):
	}
	closed := make(chan struct{})
	go func() {
		s.Close()
		close(closed)
	}()
	select {
	case <-closed:
	case <-time.After(10 * time.Second):
		t.Fatal("Close hung behind an upstream that does not read")
	}
	<-done
}
