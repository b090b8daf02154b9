package test

import (
	"context"
	"fmt"
	"net"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mxrelay/mxrelay"
	"github.com/mxrelay/mxrelay/internal/interop"
	"github.com/mxrelay/mxrelay/internal/testkit"
)

// freePort returns a loopback address nobody listens on (for a moment).
func freePort(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

// Our client in raw tunnel mode through Debian's websockify, in front of
// relaytest's in-process SMTP server: a gateway we did not write.
func TestInteropWebsockify(t *testing.T) {
	up := testkit.NewRelay(t, nil) // its in-process SMTP server is the target
	listen := startWebsockify(t, up.SMTPAddr)

	// websockify checks no key: none is sent.
	c, err := mxrelay.New("ws://"+listen+"/", "", testkit.Fast(&mxrelay.Options{RawTunnel: true, MaxEmailsPerSession: 50, BatchWait: time.Second}))
	require.NoError(t, err)
	defer c.Close(context.Background())
	res := testkit.EnqueueBatch(t, c, 30)
	for i, r := range res {
		require.NoError(t, r.Err, "email %d", i)
		assert.Equal(t, 1, testkit.CountSubject(up, fmt.Sprint("p", i)))
	}
	_, err = c.Send(testkit.Ctx(t), mxrelay.Email{From: "a@example.com", To: []string{"b@example.com"},
		Body: strings.NewReader("Subject: big\r\n\r\n" + bigLines(300<<10))})
	require.NoError(t, err, "a message over a BDAT chunk")
}

// startWebsockify runs Debian's websockify on a loopback port in front of
// target, until the test ends, and returns its address.
func startWebsockify(t *testing.T, target string) string {
	t.Helper()
	bin, err := exec.LookPath("websockify")
	if err != nil {
		interop.Skip(t, "websockify is not installed (apt-get install websockify)")
	}
	listen := freePort(t)
	ctx, cancel := context.WithCancel(context.Background())
	cmd := exec.CommandContext(ctx, bin, listen, target)
	out := &testkit.LogBuffer{}
	cmd.Stdout, cmd.Stderr = out, out
	require.NoError(t, cmd.Start())
	t.Cleanup(func() {
		cancel()
		cmd.Wait()
		if t.Failed() {
			t.Logf("websockify said:\n%s", out.String())
		}
	})
	waitListening(t, listen, 10*time.Second, "websockify")
	return listen
}

// waitListening waits until something accepts connections on addr.
func waitListening(t *testing.T, addr string, d time.Duration, what string) {
	t.Helper()
	require.Eventually(t, func() bool {
		c, err := net.Dial("tcp", addr)
		if err == nil {
			c.Close()
		}
		return err == nil
	}, d, 20*time.Millisecond, what+" listens on "+addr)
}

func bigLines(n int) string {
	b := make([]byte, 0, n+80)
	for len(b) < n {
		b = append(b, "0123456789abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnopqrstuvwxyz\r\n"...)
	}
	return string(b)
}
