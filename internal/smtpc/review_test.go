package smtpc

import (
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// emptyResp is a SASL mechanism whose answer to the server's challenge is
// empty, as EXTERNAL's or a LOGIN with an empty password's.
type emptyResp struct{}

func (emptyResp) Start() (string, []byte, error) { return "X-EMPTY", nil, nil }
func (emptyResp) Next([]byte) ([]byte, error)    { return []byte{}, nil }

// An empty SASL response is an empty line (RFC 4954 §4): it must be sent,
// not skipped, or both ends wait for each other.
func TestAuthEmptyResponseIsSent(t *testing.T) {
	got := make(chan string, 1)
	nc := newFake(t, func(f *fake) {
		f.hello("AUTH X-EMPTY")
		f.line() // AUTH X-EMPTY
		f.say("334 ")
		got <- f.line()
		f.say("235 2.7.0 ok")
		f.drain()
	})
	c := startClient(t, nc, Config{})
	var err error
	if within(t, 2*time.Second, "Auth", func() { err = c.Auth(emptyResp{}) }) {
		assert.NoError(t, err)
	}
	c.Close(nil)
	select {
	case l := <-got:
		assert.Equal(t, "", l)
	default:
		t.Error("the server never got the empty response")
	}
}

func runTx(t *testing.T, c *Client, tx *Tx) chan *Result {
	t.Helper()
	out := make(chan *Result, 1)
	tx.Done = func(r *Result) { out <- r }
	if err := c.Send(tx); err != nil {
		t.Logf("Send: %v", err)
	}
	return out
}

// Lock-step BDAT: after a refused chunk no further chunk goes out; RSET.
func TestLockstepBDATStopsAfterRefusedChunk(t *testing.T) {
	var cmds []string
	nc := newFake(t, func(f *fake) {
		f.hello("CHUNKING")
		for {
			l := f.line()
			if l == "" {
				return
			}
			cmds = append(cmds, strings.Fields(l)[0])
			switch {
			case strings.HasPrefix(l, "BDAT"):
				f.chunk(l)
				f.say("552 5.3.4 too big")
			case l == "QUIT":
				f.say("221 bye")
				return
			default:
				f.say("250 ok")
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
	nc := newFake(t, func(f *fake) {
		f.hello("PIPELINING")
		f.line()
		f.line()
		f.line() // MAIL RCPT DATA
		f.say("250 ok")
		f.say("550 no")
		f.say("354 go")
		got = f.dataBody()
		f.say("554 no valid recipients")
		f.line()
		f.say("221 bye")
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
	nc := newFake(t, func(f *fake) {
		f.hello("PIPELINING", "CHUNKING")
		f.say("421 4.3.2 shutting down")
		close(said)
		f.drain()
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
