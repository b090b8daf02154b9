package mxrelay

import (
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mxrelay/mxrelay/internal/fakesmtp"
	"github.com/mxrelay/mxrelay/internal/smtpc"
)

// This file is a harness for the SMTP engine and the verdict together,
// with no relay in between: a scripted SMTP server on loopback TCP (so
// that replies arrive as a real network delivers them, sometimes in one
// read, sometimes not) misbehaves in one way per case, and the engine
// sends three transactions to it in each of the four modes. The server
// knows what it did with each message; the verdicts must agree with it:
//
//   - delivered (a recipient accepted) only if the server kept the message;
//   - not delivered and not unknown only if the server did not keep it.
//
// An unknown outcome may go either way: that is what it says.

// hostile is one misbehaviour. Each hook returns the writes to make, as
// fakesmtp's Play takes them (a line or lines without the final CRLF;
// "AWAIT" waits for the client's next command, "CUT" closes the
// connection, "STALL" stops reading and writing until the test ends). A
// nil hook does what an honest server does.
type hostile struct {
	name string
	// greeting replaces "220 ...".
	greeting []string
	// ehlo replaces the EHLO reply; it gets the honest one.
	ehlo func(honest string) []string
	// reply replaces the reply to a command other than the end of data;
	// tx counts MAIL commands from 1.
	reply func(tx int, verb, honest string) []string
	// end answers the end of data of transaction tx: the writes, and
	// whether the server keeps the message.
	end func(tx int) ([]string, bool)
	// bodyStall stops reading in the middle of the body of transaction 1
	// (a server that stops reading); the body is then large.
	bodyStall bool
	// want, if set, checks what the client made of it.
	want func(t *testing.T, run *engineRun)
}

// engineRun is what one run gave: each transaction's verdict (nil when it
// was never sent) and what the server did.
type engineRun struct {
	mode     string
	verdicts []*verdict
	results  []*smtpc.Result
	setupErr error
	kept     map[int]bool // transaction → the server kept the message
	ended    map[int]bool // transaction → its end of data reached the server
}

const engineTxs = 3

func runEngine(t *testing.T, ext []string, h hostile) *engineRun {
	t.Helper()
	run := &engineRun{kept: map[int]bool{}, ended: map[int]bool{}, verdicts: make([]*verdict, engineTxs), results: make([]*smtpc.Result, engineTxs)}
	var mu sync.Mutex
	srv := fakesmtp.Listen(t, h.session(ext, func(tx int, kept bool) {
		mu.Lock()
		run.ended[tx] = true
		run.kept[tx] = run.kept[tx] || kept
		mu.Unlock()
	}).Serve)
	defer srv.Close()

	nc, err := net.Dial("tcp", srv.Addr)
	require.NoError(t, err)
	sc := smtpc.New(nc, smtpc.Config{Timeout: 500 * time.Millisecond, Window: 8, MaxLine: smtpc.MaxLineLength})
	if err := sc.Greet(); err != nil {
		run.setupErr = err
		nc.Close()
		return run
	}
	if err := sc.Hello("client.test"); err != nil {
		run.setupErr = err
		nc.Close()
		return run
	}
	sc.Start()
	done := make(chan struct{}, engineTxs)
	sent := 0
	for i := range engineTxs {
		body := fmt.Sprintf("Subject: m%d\r\n\r\nbody %d\r\n", i+1, i+1)
		if h.bodyStall && i == 0 {
			body = "Subject: m1\r\n\r\n" + strings.Repeat(strings.Repeat("x", 78)+"\r\n", 200_000) // 16 MB: more than the socket buffers
		}
		rcpts := []string{"r@example.com"}
		mail, err := sc.MailCommand("s@example.com", nil, 0, rcpts)
		require.NoError(t, err)
		rcpt, err := sc.RcptCommand(rcpts[0], nil)
		require.NoError(t, err)
		tx := &smtpc.Tx{Mail: mail, Rcpts: []string{rcpt}, Body: strings.NewReader(body)}
		tx.Done = func(res *smtpc.Result) {
			a := attempt{rcpts: rcpts, res: res}
			if res.Err != nil {
				a.broke = res.Err
			}
			v := decide(a)
			mu.Lock()
			if run.verdicts[i] != nil {
				t.Errorf("transaction %d: a second result", i+1)
			}
			run.verdicts[i], run.results[i] = &v, res
			mu.Unlock()
			done <- struct{}{}
		}
		sent++
		if sc.Send(tx) != nil {
			break
		}
	}
	if sc.Wait() == nil {
		sc.Quit()
	}
	sc.Close(nil)
	for range sent {
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Fatal("a transaction sent never got its result")
		}
	}
	return run
}

// session is the honest server with h's misbehaviour, telling ended of
// each end of data it read and whether it kept the message.
func (h hostile) session(ext []string, ended func(tx int, kept bool)) *fakesmtp.Session {
	return &fakesmtp.Session{Greeting: h.greeting, Ext: ext, Enhanced: true,
		Answer: func(cmd fakesmtp.Cmd) ([]string, bool) {
			switch cmd.Verb {
			case "EHLO":
				if h.ehlo != nil {
					return h.ehlo(cmd.Honest), true
				}
			case "BDAT":
				if h.bodyStall && cmd.Tx == 1 {
					return []string{"STALL"}, true
				}
			case "DATA":
				if h.bodyStall && cmd.Tx == 1 {
					return []string{cmd.Honest, "STALL"}, true
				}
				if h.reply != nil {
					return h.reply(cmd.Tx, cmd.Verb, cmd.Honest), true
				}
			case "CHUNK":
				if h.reply != nil {
					return h.reply(cmd.Tx, "BDAT", cmd.Honest), true
				}
			case "END":
				ws, kept := []string{cmd.Honest}, true
				if h.end != nil {
					ws, kept = h.end(cmd.Tx)
				}
				ended(cmd.Tx, kept)
				return ws, true
			default:
				if h.reply != nil {
					return h.reply(cmd.Tx, cmd.Verb, cmd.Honest), true
				}
			}
			return nil, false
		}}
}

// stray returns a reply hook that writes extra before the honest reply
// to verb in transaction tx, and the honest reply only once the client
// has sent its next command: it crosses the commands already written.
func stray(atTx int, atVerb string, extra ...string) func(int, string, string) []string {
	return func(tx int, verb, honest string) []string {
		if tx == atTx && verb == atVerb {
			return append(append([]string(nil), extra...), "AWAIT", honest)
		}
		return []string{honest}
	}
}

func hostileCorpus() []hostile {
	refuseEnd := func(int) ([]string, bool) { return []string{"554 5.6.0 refused"}, false }
	return []hostile{
		{name: "honest (control)", want: func(t *testing.T, run *engineRun) {
			for i, v := range run.verdicts {
				require.NotNil(t, v, "transaction %d", i+1)
				assert.Equal(t, []string{"r@example.com"}, v.accepted, "transaction %d: %v", i+1, v.err)
			}
		}},
		{name: "the last EHLO line twice, end of data refused",
			ehlo: func(honest string) []string { return []string{honest, "250 ENHANCEDSTATUSCODES"} },
			end:  refuseEnd, want: protocolErrorBeforeAnything},
		{name: "a 250 before any command",
			greeting: []string{"220 mx.hostile.test ESMTP", "250 2.0.0 what"},
			end:      refuseEnd, want: protocolErrorBeforeAnything},
		{name: "a 250 after the EHLO reply, once the client sent its next command",
			ehlo: func(honest string) []string { return []string{honest, "AWAIT", "250 2.0.0 late"} },
			end:  refuseEnd},
		{name: "a stray 250 crossing MAIL, end of data refused",
			reply: stray(1, "MAIL", "250 2.0.0 stray"), end: refuseEnd},
		{name: "two stray 250s crossing MAIL, end of data refused",
			reply: stray(1, "MAIL", "250 2.0.0 stray", "250 2.0.0 stray again"), end: refuseEnd},
		{name: "a stray 250 crossing MAIL, end of data 4xx",
			reply: stray(1, "MAIL", "250 2.0.0 stray"),
			end:   func(int) ([]string, bool) { return []string{"451 4.3.0 try later"}, false }},
		{name: "a stray 250 crossing RCPT, every end refused",
			reply: stray(2, "RCPT", "250 2.0.0 stray"), end: refuseEnd},
		{name: "RCPT answered twice",
			reply: func(tx int, verb, honest string) []string {
				if verb == "RCPT" && tx == 1 {
					return []string{honest, honest}
				}
				return []string{honest}
			}, end: refuseEnd},
		{name: "the end of data answered twice",
			end: func(tx int) ([]string, bool) { return []string{"250 2.0.0 queued", "250 2.0.0 queued"}, true }},
		{name: "a reply to a command not sent yet",
			end: func(tx int) ([]string, bool) {
				return []string{"250 2.0.0 queued", "250 2.0.0 for the next command"}, true
			}},
		{name: "354 to the end of data, message kept",
			end: func(int) ([]string, bool) { return []string{"354 queued"}, true },
			want: func(t *testing.T, run *engineRun) {
				v := run.verdicts[0]
				require.NotNil(t, v)
				assert.True(t, v.unknown, "kept, and answered out of grammar: unknown, never 'not sent'")
			}},
		{name: "250 with a 5.x.x enhanced code to the end of data",
			end: func(int) ([]string, bool) { return []string{"250 5.6.0 rejected, or not"}, true },
			want: func(t *testing.T, run *engineRun) {
				for i, v := range run.verdicts {
					if v != nil && run.results[i].End != nil {
						assert.True(t, v.unknown, "transaction %d: a reply that contradicts itself decides nothing", i+1)
					}
				}
			}},
		{name: "550 with a 2.x.x enhanced code to the end of data",
			end: func(int) ([]string, bool) { return []string{"550 2.0.0 queued, or not"}, true }},
		{name: "250 with a 5.x.x enhanced code to RCPT (the code wins)",
			reply: func(tx int, verb, honest string) []string {
				if verb == "RCPT" {
					return []string{"250 5.1.1 ok, or not"}
				}
				return []string{honest}
			}},
		{name: "354 to MAIL",
			reply: func(tx int, verb, honest string) []string {
				if verb == "MAIL" && tx == 2 {
					return []string{"354 go ahead"}
				}
				return []string{honest}
			}},
		{name: "an unsolicited 421 in the middle",
			reply: func(tx int, verb, honest string) []string {
				if verb == "RCPT" && tx == 2 {
					return []string{"421 4.3.2 shutting down", "CUT"}
				}
				return []string{honest}
			}},
		{name: "cut after the end of data, message kept",
			end: func(tx int) ([]string, bool) {
				if tx == 2 {
					return []string{"CUT"}, true
				}
				return []string{"250 2.0.0 queued"}, true
			}},
		{name: "cut right after a 250 to the end of data",
			end: func(tx int) ([]string, bool) {
				if tx == 1 {
					return []string{"250 2.0.0 queued", "CUT"}, true
				}
				return []string{"250 2.0.0 queued"}, true
			}},
		{name: "a server that stops reading in the middle of a body", bodyStall: true,
			want: func(t *testing.T, run *engineRun) {
				if v := run.verdicts[0]; v != nil {
					assert.Empty(t, v.accepted)
				}
			}},
	}
}

// protocolErrorBeforeAnything: the stray bytes were waiting when the
// session started, so no transaction was delivered, and none was
// written.
func protocolErrorBeforeAnything(t *testing.T, run *engineRun) {
	if run.setupErr != nil {
		assert.ErrorIs(t, run.setupErr, smtpc.ErrProtocol)
		return
	}
	for i, v := range run.verdicts {
		if v == nil {
			continue
		}
		assert.Empty(t, v.accepted, "transaction %d", i+1)
		assert.False(t, v.unknown, "transaction %d: nothing was written", i+1)
		assert.True(t, errors.Is(run.results[i].Err, smtpc.ErrProtocol), "transaction %d: %v", i+1, run.results[i].Err)
	}
	assert.Empty(t, run.ended, "no end of data reached the server")
}

func TestHostileUpstreamEngine(t *testing.T) {
	for _, h := range hostileCorpus() {
		for _, m := range fakesmtp.EngineModes {
			t.Run(h.name+"/"+m.Name, func(t *testing.T) {
				t.Parallel()
				run := runEngine(t, m.Ext, h)
				checkAgainstServer(t, run)
				if h.want != nil {
					h.want(t, run)
				}
			})
		}
	}
}

// checkAgainstServer is the rule: delivered only what the server kept;
// "not delivered" without "unknown" only for what it did not keep.
func checkAgainstServer(t *testing.T, run *engineRun) {
	t.Helper()
	for i, v := range run.verdicts {
		tx := i + 1
		if v == nil {
			assert.False(t, run.kept[tx], "transaction %d was never sent, yet the server kept it", tx)
			continue
		}
		if len(v.accepted) > 0 {
			assert.True(t, run.kept[tx], "transaction %d: a false delivered (reply %v)", tx, run.results[i].End)
		}
		if len(v.accepted) == 0 && !v.unknown {
			assert.False(t, run.kept[tx], "transaction %d: the server kept it, the client says %v without 'unknown': a silent duplicate if retried (%v)", tx, v.outcome, v.err)
		}
	}
}
