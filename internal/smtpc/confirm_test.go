package smtpc

import (
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mxrelay/mxrelay/internal/fakesmtp"
)

// honestBDAT is an honest pipelined BDAT server that answers RSET with
// rset and QUIT with quit.
func honestBDAT(rset, quit string) *fakesmtp.Session {
	return &fakesmtp.Session{Ext: []string{"PIPELINING", "CHUNKING"}, Enhanced: true,
		Answer: func(cmd fakesmtp.Cmd) ([]string, bool) {
			switch cmd.Verb {
			case "RSET":
				return []string{rset}, true
			case "QUIT":
				return []string{quit}, true
			}
			return nil, false
		}}
}

// twoTx runs two transactions against honestBDAT(rset, quit) and waits
// until both are answered.
func twoTx(t *testing.T, rset, quit string) (*Client, []chan *Result) {
	nc, _ := fakesmtp.Pipe(t, honestBDAT(rset, quit).Serve)
	c := startClient(t, nc, Config{Timeout: time.Second, Window: 8})
	c.Start()
	var outs []chan *Result
	for range 2 {
		outs = append(outs, runTx(t, c, &Tx{Mail: "MAIL FROM:<a@x>", Rcpts: []string{"RCPT TO:<b@x>"}, Body: strings.NewReader("Subject: x\r\n\r\nbody\r\n")}))
	}
	require.NoError(t, c.Wait())
	return c, outs
}

// A server that answers RSET with an address status (Gmail's "250 2.1.5
// Flushed") is not out of step, but its RSET confirms nothing: MAIL's
// or RCPT's reply reads the same. QUIT's 221 confirms both.
func TestAddressStatusToRSETConfirmsNothing(t *testing.T) {
	c, outs := twoTx(t, "250 2.1.5 Flushed", "221 2.0.0 bye")
	p := &c.p
	p.mu.Lock()
	unconfirmed := len(p.unconfirmed)
	p.mu.Unlock()
	assert.Equal(t, 2, unconfirmed, "the RSET's 2.1.5 confirmed the first transaction")
	require.NoError(t, c.Quit())
	c.Close(nil)
	for _, out := range outs {
		r := <-out
		assert.True(t, r.Confirmed, "QUIT's 221 confirms it")
		assert.False(t, r.Untrusted)
		require.NotNil(t, r.End)
		assert.Equal(t, 250, r.End.Code)
	}
}

// A 421 may answer any command, an end of data included: to QUIT it
// confirms nothing (a stray 250 before it would otherwise pass for the
// end of data's answer).
func Test421ToQUITConfirmsNothing(t *testing.T) {
	c, outs := twoTx(t, "250 2.0.0 ok", "421 4.3.2 shutting down")
	assert.Error(t, c.Quit())
	c.Close(nil)
	first, second := <-outs[0], <-outs[1]
	assert.True(t, first.Confirmed, "the second transaction's RSET confirms the first")
	assert.False(t, second.Confirmed, "a 421 to QUIT confirmed the transaction before it")
	assert.True(t, second.EndSent)
}

// Once a reply shows the stream out of step, nothing not yet confirmed is
// trusted: here the QUIT gets a 250, so the two 2xx before it and the
// refusal are anyone's.
func TestOutOfStepUntrustsTheUnconfirmed(t *testing.T) {
	c, outs := twoTx(t, "250 2.1.5 Flushed", "250 2.0.0 ok")
	assert.ErrorIs(t, c.Quit(), ErrProtocol)
	c.Close(nil)
	for _, out := range outs {
		r := <-out
		assert.False(t, r.Confirmed)
		assert.True(t, r.Untrusted, "a transaction answered before the shift was found is still trusted")
		assert.True(t, r.EndSent)
	}
}

// A server words each kind of reply the same way all session: a RCPT
// answered 2.1.5 and then 2.0.0 got another command's reply (a stray
// line after MAIL, say), so nothing after the shift is trusted.
func TestChangeOfStyleIsAShift(t *testing.T) {
	nc, _ := fakesmtp.Pipe(t, func(srv *fakesmtp.Conn) {
		srv.Hello("PIPELINING", "CHUNKING", "ENHANCEDSTATUSCODES")
		srv.Line() // MAIL
		srv.Say("250 2.1.0 sender ok")
		srv.Line()
		srv.Say("250 2.1.5 recipient ok")
		srv.Line()
		srv.Say("250 2.0.0 ok") // another command's reply
		srv.Drain()
	})
	c := startClient(t, nc, Config{Timeout: time.Second, Window: 8})
	c.Start()
	out := runTx(t, c, &Tx{Mail: "MAIL FROM:<a@x>", Rcpts: []string{"RCPT TO:<b@x>", "RCPT TO:<c@x>"}, Body: strings.NewReader("Subject: x\r\n\r\nbody\r\n")})
	assert.ErrorIs(t, c.Wait(), ErrProtocol)
	c.Close(nil)
	r := <-out
	assert.True(t, r.Untrusted)
}
