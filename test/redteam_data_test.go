package test

import (
	"bytes"
	"context"
	"testing"

	"github.com/coder/websocket"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mxrelay/mxrelay"
	"github.com/mxrelay/mxrelay/internal/testkit"
	"github.com/mxrelay/mxrelay/internal/wire"
)

// Red team, round 7: a relay that hands on the end of data's reply with a
// lone surrogate escape, which encoding/json would read as U+FFFD. The
// client cannot read that reply exactly: it closes with 1002, and the
// email, its end of data out, is an unknown outcome, never delivered.
func TestRT7LoneSurrogateInTheEndOfDataReply(t *testing.T) {
	conns := make(chan struct{}, 8)
	closed := make(chan websocket.StatusCode, 1)
	f := testkit.NewFakeRelay(t, []string{wire.Subprotocol}, func(ctx context.Context, ws *websocket.Conn) {
		conns <- struct{}{}
		if len(conns) > 1 || !testkit.AuthOK(ctx, ws) {
			return
		}
		ws.Read(ctx) // SMTP_CHANNEL_OPEN
		testkit.SendFrame(ctx, ws, wire.TypeChannelReady, nil)
		var in []byte
		// upTo reads the client's SMTP bytes until they hold end; the
		// client's close status goes to closed.
		upTo := func(end string) (string, bool) {
			for !bytes.Contains(in, []byte(end)) {
				_, p, err := ws.Read(ctx)
				if err != nil {
					closed <- websocket.CloseStatus(err)
					return "", false
				}
				m, err := wire.Decode(p)
				if err != nil {
					return "", false
				}
				d, err := wire.DecodeData(m)
				if err != nil {
					return "", false
				}
				in = append(in, d...)
			}
			got, rest, _ := bytes.Cut(in, []byte(end))
			in = rest
			return string(got), true
		}
		testkit.SendFrame(ctx, ws, wire.TypeFromServer, "220 mx ESMTP\r\n")
		for _, reply := range []string{"250 mx\r\n", "250 2.1.0 ok\r\n", "250 2.1.5 ok\r\n", "354 go ahead\r\n"} {
			if _, ok := upTo("\r\n"); !ok {
				return
			}
			testkit.SendFrame(ctx, ws, wire.TypeFromServer, reply)
		}
		if _, ok := upTo("\r\n.\r\n"); !ok {
			return
		}
		ws.Write(ctx, websocket.MessageText, []byte(`{"type":"SMTP_FROM_SERVER","data":"250 2.0.0 queued \ud800\r\n"}`))
		// A client that took the reply for a 250 would go on (a NOOP,
		// QUIT), and the 221 would confirm it.
		for {
			cmd, ok := upTo("\r\n")
			switch {
			case !ok:
				return
			case cmd == "QUIT":
				testkit.SendFrame(ctx, ws, wire.TypeFromServer, "221 2.0.0 bye\r\n")
			default:
				testkit.SendFrame(ctx, ws, wire.TypeFromServer, "250 2.0.0 ok\r\n")
			}
		}
	})
	c, err := mxrelay.New(f.WSURL(), "key", testkit.Fast(&mxrelay.Options{DisableBinary: true}))
	require.NoError(t, err)
	defer c.Close(testkit.Ctx(t))
	res, err := c.Send(testkit.Ctx(t), testkit.Mail("mangled"))
	require.Error(t, err, "delivered on a reply read with a replacement")
	assert.True(t, res.MaybeDelivered)
	var pe *mxrelay.ProtocolError
	assert.ErrorAs(t, err, &pe, "%v", err)
	select {
	case code := <-closed:
		assert.Equal(t, websocket.StatusProtocolError, code)
	case <-testkit.Ctx(t).Done():
		t.Error("the relay never saw the client close")
	}
	require.NoError(t, c.Close(testkit.Ctx(t)))
}
