package relaytest

import (
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/stretchr/testify/require"

	"github.com/mxrelay/mxrelay/internal/fakesmtp"
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
	deaf := fakesmtp.Listen(t, func(c *fakesmtp.Conn) {
		c.Raw("220 deaf.test ESMTP\r\n")
		c.Stall()
	})

	s := NewServer(&Options{UpstreamAddr: deaf.Addr})
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

// TestEndOfDataFaultsFollowPipelinedMessages: two whole BDAT transactions
// in one frame; each end-of-data fault lands on its own message and the
// mailbox agrees with what the client is told.
func TestEndOfDataFaultsFollowPipelinedMessages(t *testing.T) {
	s := NewServer(nil)
	defer s.Close()
	s.Inject(Fault{Kind: ReplaceReply, Command: ".", Reply: "250 2.0.0 first ok"})
	s.Inject(Fault{Kind: ReplaceReply, Command: ".", Reply: "550 5.7.1 second no"})
	c := dial(t, s)
	c.auth(s.APIKey)
	c.open(true)
	c.cmd("EHLO x")
	c.write("MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\nBDAT 5 LAST\r\nfirst" +
		"MAIL FROM:<a@example.com>\r\nRCPT TO:<c@example.com>\r\nBDAT 6 LAST\r\nsecond")
	var got []string
	for range 6 {
		got = append(got, c.reply())
	}
	require.Equal(t, "250 2.0.0 first ok\r\n", got[2])
	require.Equal(t, "550 5.7.1 second no\r\n", got[5])
	box := s.Mailbox()
	require.Len(t, box, 1)
	require.Equal(t, []string{"b@example.com"}, box[0].To)
	require.Equal(t, "first", string(box[0].Data))
}

// TestRefusedEndOfDataLeavesTheNextMessageAlone: a BDAT LAST the upstream
// refuses (no transaction) takes the armed fault, whose refusal then
// changes nothing; the next message is stored and answered 250.
func TestRefusedEndOfDataLeavesTheNextMessageAlone(t *testing.T) {
	s := NewServer(nil)
	defer s.Close()
	s.Inject(Fault{Kind: ReplaceReply, Command: ".", Reply: "550 5.7.1 no"})
	c := dial(t, s)
	c.auth(s.APIKey)
	c.open(true)
	c.cmd("EHLO x")
	c.write("BDAT 4 LAST\r\nlost")
	require.NotEqual(t, "2", c.reply()[:1])
	c.write("MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\nBDAT 4 LAST\r\nkept")
	var last string
	for range 3 {
		last = c.reply()
	}
	require.Equal(t, "2", last[:1], last)
	require.Len(t, s.Mailbox(), 1)
}
