package test

import (
	"bytes"
	"context"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mxrelay/mxrelay"
	"github.com/mxrelay/mxrelay/internal/testkit"
	"github.com/mxrelay/mxrelay/internal/wire"
)

// floodBound is what a peer that floods the client may get written before
// the client hangs up: the client's limits (a 4 KiB reply line, 256 reply
// lines, 1 MiB frames, 4 MiB buffered per channel) plus the relay's and the
// kernel's buffers. The floods themselves never end.
const floodBound = 32 << 20

// chunk64 is 64 KiB of s repeated.
func chunk64(s string) []byte { return bytes.Repeat([]byte(s), (64<<10)/len(s)) }

// repeat writes the text frame again and again until the connection
// breaks, counting the bytes written.
func repeat(ctx context.Context, ws *websocket.Conn, frame []byte, wrote *atomic.Int64) {
	for ws.Write(ctx, websocket.MessageText, frame) == nil {
		wrote.Add(int64(len(frame)))
	}
}

// TestRelayFloods: a relay that floods the client is cut off after a
// bounded number of bytes, with a *ProtocolError.
func TestRelayFloods(t *testing.T) {
	greeted := func(ctx context.Context, ws *websocket.Conn) bool {
		if !testkit.AuthOK(ctx, ws) {
			return false
		}
		if _, _, err := ws.Read(ctx); err != nil { // SMTP_CHANNEL_OPEN
			return false
		}
		testkit.SendFrame(ctx, ws, wire.TypeChannelReady, nil)
		return ws.Write(ctx, websocket.MessageText, wire.MustEncode(wire.TypeFromServer, "220 mx ESMTP\r\n")) == nil
	}
	// Built before the client waits: encoding 10 MiB takes a while under -race.
	big := []byte(`{"type":"X_PADDING","data":"` + strings.Repeat("x", 10<<20) + `"}`)
	for _, tc := range []struct {
		name  string
		flood func(ctx context.Context, ws *websocket.Conn, wrote *atomic.Int64)
	}{
		{"a control message that never ends", func(ctx context.Context, ws *websocket.Conn, wrote *atomic.Int64) {
			if !testkit.AuthOK(ctx, ws) {
				return
			}
			w, err := ws.Writer(ctx, websocket.MessageText) // fragmented: no length up front
			if err != nil {
				return
			}
			w.Write([]byte(`{"type":"X_PADDING","data":"`))
			for p := chunk64("x"); ; {
				n, err := w.Write(p)
				wrote.Add(int64(n))
				if err != nil {
					return
				}
			}
		}},
		{"control messages of 10 MiB, one after another", func(ctx context.Context, ws *websocket.Conn, wrote *atomic.Int64) {
			if !testkit.AuthOK(ctx, ws) {
				return
			}
			repeat(ctx, ws, big, wrote)
		}},
		{"SMTP data with no CRLF, the channel close ignored", func(ctx context.Context, ws *websocket.Conn, wrote *atomic.Int64) {
			if !greeted(ctx, ws) {
				return
			}
			frame := wire.MustEncode(wire.TypeFromServer, string(chunk64("x")))
			repeat(ctx, ws, frame, wrote)
		}},
		{"an endless multi-line reply, the channel close ignored", func(ctx context.Context, ws *websocket.Conn, wrote *atomic.Int64) {
			if !greeted(ctx, ws) {
				return
			}
			ws.Read(ctx) // EHLO
			frame := wire.MustEncode(wire.TypeFromServer, string(chunk64("250-PIPELINING\r\n")))
			repeat(ctx, ws, frame, wrote)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var wrote atomic.Int64
			done := make(chan struct{})
			f := testkit.NewFakeRelay(t, []string{wire.Subprotocol}, func(ctx context.Context, ws *websocket.Conn) {
				defer close(done)
				tc.flood(ctx, ws, &wrote)
			})
			// A long IdleTimeout: the flood must end for what it is, not
			// because the client went idle.
			c, err := mxrelay.New(f.WSURL(), "key", testkit.Fast(&mxrelay.Options{MaxReconnectAttempts: 1, DisableBinary: true, IdleTimeout: time.Minute}))
			require.NoError(t, err)
			defer c.Close(context.Background())
			_, err = c.Send(testkit.Ctx(t), testkit.Mail("x"))
			var pe *mxrelay.ProtocolError
			require.ErrorAs(t, err, &pe)
			select {
			case <-done: // the flood's write failed: the client hung up
			case <-testkit.Ctx(t).Done():
				t.Fatal("the client kept reading the flood")
			}
			t.Logf("the relay wrote %d bytes", wrote.Load())
			assert.Less(t, wrote.Load(), int64(floodBound))
		})
	}
}
