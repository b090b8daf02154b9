package smtpc

import (
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mxrelay/mxrelay/internal/fakesmtp"
)

// Lock-step BDAT: after a refused chunk no further chunk goes out; RSET.
func TestLockstepBDATStopsAfterRefusedChunk(t *testing.T) {
	var cmds []string
	nc, _ := fakesmtp.Pipe(t, func(srv *fakesmtp.Conn) {
		srv.Hello("CHUNKING")
		for {
			l, ok := srv.Line()
			if !ok {
				return
			}
			cmds = append(cmds, strings.Fields(l)[0])
			switch {
			case strings.HasPrefix(l, "BDAT"):
				srv.Chunk(l)
				srv.Say("552 5.3.4 too big")
			case l == "QUIT":
				srv.Say("221 bye")
				return
			default:
				srv.Say("250 ok")
			}
		}
	})
	c := startClient(t, nc, Config{Timeout: time.Second})
	c.Start()
	body := strings.Repeat(strings.Repeat("x", 70)+"\r\n", 10000)
	out := runTx(t, c, &Tx{Mail: "MAIL FROM:<a@x>", Rcpts: []string{"RCPT TO:<b@x>"}, Body: strings.NewReader(body)})
	assert.NoError(t, c.Wait())
	assert.NoError(t, c.Quit())
	c.Close(nil)
	r := <-out
	assert.NotNil(t, r.DataCmd)
	assert.Nil(t, r.End)
	assert.Equal(t, []string{"MAIL", "RCPT", "BDAT", "RSET", "QUIT"}, cmds)
}

// Pipelined DATA: a 354 after every RCPT was refused gets an empty message
// (just the end), never the body.
func TestPipelinedData354AfterAllRefused(t *testing.T) {
	var got string
	nc, _ := fakesmtp.Pipe(t, func(srv *fakesmtp.Conn) {
		srv.Hello("PIPELINING")
		srv.Line()
		srv.Line()
		srv.Line() // MAIL RCPT DATA
		srv.Say("250 ok")
		srv.Say("550 no")
		srv.Say("354 go")
		got, _ = srv.Body()
		srv.Say("554 no valid recipients")
		srv.Line()
		srv.Say("221 bye")
	})
	c := startClient(t, nc, Config{Timeout: time.Second})
	c.Start()
	out := runTx(t, c, &Tx{Mail: "MAIL FROM:<a@x>", Rcpts: []string{"RCPT TO:<b@x>"}, Body: strings.NewReader("Subject: x\r\n\r\nbody\r\n")})
	assert.NoError(t, c.Wait())
	assert.NoError(t, c.Quit())
	c.Close(nil)
	r := <-out
	assert.Equal(t, "", got)
	assert.NotNil(t, r.Rcpt[0])
	require.NotNil(t, r.End)
	assert.Equal(t, 554, r.End.Code, "refused: its end of data was answered")
	assert.True(t, r.Confirmed, "QUIT's 221 confirms it")
}

// A 421 that comes with no command waiting: what is written after it is
// not processed by the server, so it is "not sent", never unknown.
func TestUnsolicited421MeansNotProcessed(t *testing.T) {
	said := make(chan struct{})
	nc, _ := fakesmtp.Pipe(t, func(srv *fakesmtp.Conn) {
		srv.Hello("PIPELINING", "CHUNKING")
		srv.Say("421 4.3.2 shutting down")
		close(said)
		srv.Drain()
	})
	c := startClient(t, nc, Config{Timeout: time.Second, Window: 8})
	c.Start()
	<-said
	// Whether the reader has taken the 421 before the writer pushes or
	// after, the transaction must not be reported unknown.
	out := runTx(t, c, &Tx{Mail: "MAIL FROM:<a@x>", Rcpts: []string{"RCPT TO:<b@x>"}, Body: strings.NewReader("Subject: x\r\n\r\nbody\r\n")})
	c.Wait()
	c.Close(nil)
	r := <-out
	require.Error(t, r.Err)
	assert.False(t, r.EndSent, "after a 421 nothing is processed")
}
