package main

import (
	"bytes"
	"context"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/mxrelay/mxrelay"
	"github.com/mxrelay/mxrelay/internal/testkit"
	"github.com/mxrelay/mxrelay/internal/wire"
	"github.com/mxrelay/mxrelay/relaytest"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// syncBuffer is a buffer that run's goroutines and the test share.
type syncBuffer = testkit.LogBuffer

// waitFor waits (5 s at most) until re matches out, and returns the
// submatches.
func waitFor(t *testing.T, out *syncBuffer, re *regexp.Regexp) []string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var m []string
	if !out.Await(ctx, func(s string) bool { m = re.FindStringSubmatch(s); return m != nil }) {
		t.Fatalf("no %v in output:\n%s", re, out.String())
	}
	return m
}

func TestRun(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var stdout, stderr syncBuffer
	done := make(chan error, 1)
	go func() { done <- run(ctx, []string{"-key", "mock-key-123456", "-v"}, &stdout, &stderr) }()

	url := waitFor(t, &stdout, regexp.MustCompile(`relay URL: (\S+)`))[1]
	assert.Contains(t, stdout.String(), "API key:   mock-key-123456")

	wctx, wcancel := context.WithTimeout(ctx, 5*time.Second)
	defer wcancel()
	ws, _, err := websocket.Dial(wctx, url, nil)
	require.NoError(t, err)
	defer ws.CloseNow()
	send := func(typ string, data any) {
		require.NoError(t, ws.Write(wctx, websocket.MessageText, wire.MustEncode(typ, data)))
	}
	recv := func() string {
		_, p, err := ws.Read(wctx)
		require.NoError(t, err)
		return string(p)
	}
	send(wire.TypeAuthenticate, wire.Authenticate{APIKey: "mock-key-123456"})
	assert.Contains(t, recv(), `"success":true`)
	send(wire.TypeChannelOpen, wire.ChannelOpen{Binary: true})
	assert.Contains(t, recv(), `"binary":true`)
	const body = "Subject: =?UTF-8?Q?caf=C3=A9?=\r\n\r\nhi\r\n"
	require.NoError(t, ws.Write(wctx, websocket.MessageBinary, []byte(
		"EHLO x\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\nRCPT TO:<c@example.com>\r\n"+
			"BDAT "+strconv.Itoa(len(body))+" LAST\r\n"+body+"QUIT\r\n")))
	var got string
	for !strings.Contains(got, "\r\n221 ") {
		_, p, err := ws.Read(wctx)
		require.NoError(t, err)
		got += string(p)
	}
	assert.Equal(t, 5, strings.Count(got, "\r\n250 "), got) // EHLO, MAIL, 2 RCPT, BDAT
	line := waitFor(t, &stdout, regexp.MustCompile(`message .*`))[0]
	assert.Contains(t, line, "from=<a@example.com> to=<b@example.com>,<c@example.com> size=38 session=1 subject=\"café\"")
	assert.Contains(t, stderr.String(), "authenticated")
	assert.NotContains(t, stderr.String(), "mock-key-123456")

	cancel()
	require.NoError(t, <-done)
	assert.Contains(t, stdout.String(), "connections 1, authenticated 1, channels 1, messages 1")
	told := regexp.MustCompile(`(?m)message.* from=<?a@example\.com`)
	assert.Len(t, told.FindAllString(stdout.String()+stderr.String(), -1), 1, "the message is told once, -v or not")
}

func TestRefusesRemote(t *testing.T) {
	for _, addr := range []string{":0", "0.0.0.0:0", "192.0.2.1:25"} {
		err := run(context.Background(), []string{"-addr", addr}, &syncBuffer{}, &syncBuffer{})
		assert.ErrorContains(t, err, "not a loopback address", addr)
	}
	for _, addr := range []string{"127.0.0.1:0", "[::1]:0", "localhost:0"} {
		assert.NoError(t, checkLoopback(addr), addr)
	}
}

func TestAllowRemoteNeedsItsOwnKey(t *testing.T) {
	for _, args := range [][]string{
		{"-allow-remote", "-addr", "127.0.0.1:0"},
		{"-allow-remote", "-addr", "127.0.0.1:0", "-upstream", "127.0.0.1:25"},
		{"-allow-remote", "-addr", "127.0.0.1:0", "-key", relaytest.DefaultAPIKey},
	} {
		ctx, cancel := context.WithCancel(context.Background())
		cancel() // a relay that starts stops at once
		var stdout syncBuffer
		err := run(ctx, args, &stdout, &syncBuffer{})
		assert.ErrorContains(t, err, "-allow-remote needs -key", "%q", args)
		assert.NotContains(t, stdout.String(), "relay URL", "%q: it never listened", args)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	assert.NoError(t, run(ctx, []string{"-allow-remote", "-addr", "127.0.0.1:0", "-key", "a-key-of-my-own-0123"}, &syncBuffer{}, &syncBuffer{}))
}

func TestBadFlags(t *testing.T) {
	assert.Error(t, run(context.Background(), []string{"-nope"}, &syncBuffer{}, &syncBuffer{}))
	assert.Error(t, run(context.Background(), []string{"extra"}, &syncBuffer{}, &syncBuffer{}))
	assert.Error(t, run(context.Background(), []string{"-key", ""}, &syncBuffer{}, &syncBuffer{}))
}

func TestPrintMessage(t *testing.T) {
	var b bytes.Buffer
	printMessage(&b, relaytest.Message{From: "a@x", To: []string{"b@x"}, Data: []byte("no header line"), Session: 2, User: "u"})
	assert.Contains(t, b.String(), "from=<a@x> to=<b@x> size=14 session=2 user=u subject=(no subject)")
}

func TestParseFault(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want relaytest.Fault
	}{
		{"ReplaceReply:RCPT:550 5.1.1 <b@x>: no such user", relaytest.Fault{Kind: relaytest.ReplaceReply, Command: "RCPT", Reply: "550 5.1.1 <b@x>: no such user"}},
		{"-1@StallReply:.", relaytest.Fault{Kind: relaytest.StallReply, Command: ".", Times: -1}},
		{"3@dropafterfinaldot", relaytest.Fault{Kind: relaytest.DropAfterFinalDot, Times: 3}},
		{"DropAfterBytes:1000:from-server", relaytest.Fault{Kind: relaytest.DropAfterBytes, Bytes: 1000, FromServer: true}},
		{"CloseWebSocket:MAIL:4003", relaytest.Fault{Kind: relaytest.CloseWebSocket, Command: "MAIL", Code: 4003}},
	} {
		got, err := parseFault(tc.in)
		require.NoError(t, err, tc.in)
		assert.Equal(t, tc.want, got, tc.in)
	}
	for _, bad := range []string{"Nope", "x@StallReply", "DropAfterBytes:lots", "DropAfterBytes:1:sideways", "CloseWebSocket:MAIL:loud", "-2@RejectAuth"} {
		_, err := parseFault(bad)
		assert.Error(t, err, bad)
	}
	th, err := parseThrottle("100/1s:421 4.7.0 slow down")
	require.NoError(t, err)
	assert.Equal(t, &relaytest.Throttle{Limit: 100, Per: time.Second, Reply: "421 4.7.0 slow down"}, th)
	for _, bad := range []string{"100", "x/1s", "100/soon", "100/0s"} {
		_, err := parseThrottle(bad)
		assert.Error(t, err, bad)
	}
}

// -fault arms the fault on the running relay; a malformed one is refused
// before the relay starts; a QUIT is not reported as a failure.
func TestRunWithFault(t *testing.T) {
	var out, errOut syncBuffer
	err := run(context.Background(), []string{"-fault", "ReplaceReply:RCPT:354 go ahead"}, &out, &errOut)
	require.Error(t, err, "a 3xx ReplaceReply is malformed for relaytest")

	var stdout, stderr syncBuffer

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, []string{"-key", "mock-key-123456", "-fault", "ReplaceReply:RCPT:550 5.1.1 no such user"}, &stdout, &stderr)
	}()
	url := waitFor(t, &stdout, regexp.MustCompile(`relay URL: (\S+)`))[1]
	c, err := mxrelay.New(url, "mock-key-123456", nil)
	require.NoError(t, err)
	sctx, scancel := context.WithTimeout(ctx, 10*time.Second)
	defer scancel()
	_, err = c.Send(sctx, mxrelay.Email{From: "a@example.com", To: []string{"b@example.com"}, Body: strings.NewReader("Subject: x\r\n\r\nx\r\n")})
	var se *mxrelay.SMTPError
	require.ErrorAs(t, err, &se)
	assert.Equal(t, 550, se.Code)
	require.NoError(t, c.Close(sctx))
	// The relay logs the session's end on its own goroutine, which may
	// come after Close: wait for the line before stopping the relay.
	waitFor(t, &stderr, regexp.MustCompile(`session ended with QUIT`))
	cancel()
	require.NoError(t, <-done)
	assert.NotContains(t, stderr.String(), "upstream closed the connection", "a QUIT read as a failure")
}
