package test

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/mxrelay/mxrelay"
	"github.com/mxrelay/mxrelay/internal/fakesmtp"
	"github.com/mxrelay/mxrelay/internal/testkit"
	"github.com/mxrelay/mxrelay/relaytest"
)

// Send's context cancelled, and Close given a short context, at phases
// where the client waits on the relay (no READY) or on the upstream (a
// stalled MAIL, RCPT, DATA, end of data), in lock-step and pipelined
// modes: Send and Close return promptly, the email ends once, and no
// goroutine is left after Close. Held at the time of writing. Each case
// runs in a bubble (testkit.Bubble), so that how long Send and Close took
// is measured on its clock, not on a loaded machine's.
func TestRedTeamCancelAndCloseAtEveryStall(t *testing.T) {
	for _, tc := range []struct {
		name  string
		fault relaytest.Fault
		opts  mxrelay.Options
	}{
		{"no READY", relaytest.Fault{Kind: relaytest.IgnoreChannel, Times: -1}, mxrelay.Options{}},
		{"stalled MAIL, lock-step", relaytest.Fault{Kind: relaytest.StallReply, Command: "MAIL"}, mxrelay.Options{DisablePipelining: true}},
		{"stalled RCPT, pipelined", relaytest.Fault{Kind: relaytest.StallReply, Command: "RCPT"}, mxrelay.Options{}},
		{"stalled BDAT, lock-step", relaytest.Fault{Kind: relaytest.StallReply, Command: "BDAT"}, mxrelay.Options{DisablePipelining: true}},
		{"stalled end of data, pipelined", relaytest.Fault{Kind: relaytest.StallReply, Command: "."}, mxrelay.Options{}},
		{"stalled end of data, lock-step", relaytest.Fault{Kind: relaytest.StallReply, Command: "."}, mxrelay.Options{DisablePipelining: true}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			testkit.Bubble(t, func(t *testing.T) {
				leaks := goleak.IgnoreCurrent()
				t.Cleanup(func() { goleak.VerifyNone(t, leaks) }) // the last cleanup: after the relay's
				s := testkit.NewRelay(t, nil)
				s.Inject(tc.fault)
				o := tc.opts
				o.CommandTimeout, o.ChannelTimeout = 2*time.Second, 30*time.Second
				c, err := mxrelay.New(s.URL, s.APIKey, testkit.ClientOptions(s, &o))
				require.NoError(t, err)
				ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
				defer cancel()
				start := time.Now()
				res, err := c.Send(ctx, testkit.Mail("stalled"))
				took := time.Since(start)
				require.Error(t, err)
				require.NotNil(t, res)
				assert.Less(t, took, 300*time.Millisecond+2*time.Second+time.Second, "Send waited %v past a 300 ms context and CommandTimeout", took)
				if !errors.Is(err, mxrelay.ErrCanceled) {
					// Only an email whose end of data was sent may wait for it.
					assert.True(t, res.MaybeDelivered, "%v", err)
				}
				h, err := c.Enqueue(testkit.Mail("queued behind"))
				require.NoError(t, err)
				cctx, ccancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
				defer ccancel()
				start = time.Now()
				c.Close(cctx)
				assert.Less(t, time.Since(start), 5*time.Second, "Close waited past its context")
				res2, err := h.Wait(testkit.Ctx(t))
				require.NotNil(t, res2)
				// Close drains what it can in its time: delivered once, or
				// handed back unsent.
				if err == nil {
					assert.Equal(t, 1, testkit.CountSubject(s, "queued behind"))
				} else {
					assert.ErrorIs(t, err, mxrelay.ErrClosed)
					assert.Equal(t, 0, testkit.CountSubject(s, "queued behind"))
				}
				st := c.Stats()
				assert.Equal(t, st.EmailsQueued, st.EmailsDelivered+st.EmailsFailed)
			})
		})
	}
}

// answer is a transaction's end of data answered, and when.
type answer struct {
	tx int
	at time.Time
}

// dripUpstream reads every command at once, and answers them honestly in
// order, one reply per gap: a slow server that is never silent for as long
// as the client's CommandTimeout. endRead receives the number of each
// transaction whose end of data it has read; answered receives it, with
// the time, once that end of data's reply is written.
func dripUpstream(t *testing.T, gap time.Duration, endRead chan<- int, answered chan<- answer) string {
	t.Helper()
	stop := make(chan struct{})
	u := fakesmtp.Listen(t, func(c *fakesmtp.Conn) {
		replies := make(chan string, 4096)
		wdone := make(chan struct{})
		go func() { // the slow writer
			defer close(wdone)
			for r := range replies {
				if !strings.HasPrefix(r, "220") && !strings.HasPrefix(r, "250-") {
					select {
					case <-time.After(gap):
					case <-stop:
						return
					}
				}
				if !c.Say(r) {
					return
				}
				if n, ok := strings.CutPrefix(r, "250 2.0.0 queued "); ok {
					i, _ := strconv.Atoi(n)
					select {
					case answered <- answer{i, time.Now()}:
					default:
					}
				}
			}
		}()
		// Every reply written before the connection closes.
		defer func() { close(replies); <-wdone }()
		replies <- "220 mx.test ESMTP"
		tx := 0
		for {
			l, ok := c.Line()
			if !ok {
				return
			}
			f := strings.Fields(l + " x")
			switch strings.ToUpper(f[0]) {
			case "EHLO":
				replies <- "250-mx.test\r\n250-PIPELINING\r\n250-CHUNKING\r\n250 ENHANCEDSTATUSCODES"
			case "MAIL":
				tx++
				replies <- "250 2.1.0 ok"
			case "RCPT":
				replies <- "250 2.1.5 ok"
			case "BDAT":
				if _, ok := c.Chunk(l); !ok {
					return
				}
				if len(f) > 3 { // BDAT n LAST x
					select {
					case endRead <- tx:
					default:
					}
					replies <- fmt.Sprint("250 2.0.0 queued ", tx)
				} else {
					replies <- "250 2.0.0 chunk"
				}
			case "QUIT":
				replies <- "221 2.0.0 bye"
				return
			default:
				replies <- "250 2.0.0 ok"
			}
		}
	})
	t.Cleanup(func() { close(stop) }) // runs before the upstream's own
	return u.Addr
}

// Send's documented promise: when its ctx ends after the email's end of
// data was sent, the reply decides, and Send returns when it comes. The
// red team found the old wording ("at most CommandTimeout later") false:
// the reply timeout is re-armed by every reply of the window, so a server
// answering a full window slowly (one reply each 150 ms, never silent for
// CommandTimeout = 600 ms) keeps a cancelled Send waiting for the window
// ahead of it, many times CommandTimeout. The doc now says so; this holds
// the rest: the cancel does not lose the verdict (delivered, on its own
// 250), and Send does not wait past that reply.
func TestCancelledSendAfterEndOfDataTakesItsReply(t *testing.T) {
	endRead, answered := make(chan int, 64), make(chan answer, 64)
	addr := dripUpstream(t, 150*time.Millisecond, endRead, answered)
	s := testkit.NewRelay(t, &relaytest.Options{UpstreamAddr: addr})
	const commandTimeout = 600 * time.Millisecond
	c := testkit.NewClient(t, s, &mxrelay.Options{MaxEmailsPerSession: 8, BatchWait: 300 * time.Millisecond, CommandTimeout: commandTimeout})
	for i := range 7 {
		_, err := c.Enqueue(testkit.Mail(fmt.Sprint("before", i)))
		require.NoError(t, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	type sent struct {
		res *mxrelay.Result
		err error
		at  time.Time
	}
	done := make(chan sent, 1)
	go func() {
		res, err := c.Send(ctx, testkit.Mail("last"))
		done <- sent{res, err, time.Now()}
	}()
	// Wait until the server has read the 8th end of data: it is on the wire.
	deadline := time.After(15 * time.Second)
	for n := 0; n != 8; {
		select {
		case n = <-endRead:
		case <-deadline:
			t.Fatal("the 8th end of data never reached the server")
		}
	}
	cancel()
	var got sent
	select {
	case got = <-done:
	case <-time.After(20 * time.Second):
		t.Fatal("Send never returned")
	}
	// The 8th reply was written before Send returned, and Send did not
	// wait for anything after it (the session's QUIT is later).
	var answeredAt time.Time
	for answeredAt.IsZero() {
		select {
		case a := <-answered:
			if a.tx == 8 {
				answeredAt = a.at
			}
		default:
			t.Fatal("Send returned before the server answered its end of data")
		}
	}
	require.NoError(t, got.err, "the end of data was sent: its 250 decides, not the cancel")
	assert.False(t, got.res.MaybeDelivered)
	assert.Less(t, got.at.Sub(answeredAt), commandTimeout, "Send waited past its own reply")
}
