package test

import (
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mxrelay/mxrelay"
	"github.com/mxrelay/mxrelay/internal/testkit"
	"github.com/mxrelay/mxrelay/relaytest"
)

// wireTap is a TCP proxy between the relay and its upstream that records
// every byte the relay sends upstream: what an SMTP server really reads.
type wireTap struct {
	ln     net.Listener
	target string
	wg     sync.WaitGroup
	mu     sync.Mutex
	conns  []*testkit.LogBuffer // one per connection, in order
}

func newWireTap(t *testing.T, target string) *wireTap {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	w := &wireTap{ln: ln, target: target}
	w.wg.Add(1)
	go w.serve()
	t.Cleanup(func() {
		ln.Close()
		w.wg.Wait()
	})
	return w
}

func (w *wireTap) serve() {
	defer w.wg.Done()
	for {
		c, err := w.ln.Accept()
		if err != nil {
			return
		}
		rec := &testkit.LogBuffer{}
		w.mu.Lock()
		w.conns = append(w.conns, rec)
		w.mu.Unlock()
		w.wg.Add(1)
		go w.pipe(c, rec)
	}
}

func (w *wireTap) pipe(c net.Conn, rec *testkit.LogBuffer) {
	defer w.wg.Done()
	defer c.Close()
	up, err := net.Dial("tcp", w.target)
	if err != nil {
		return
	}
	defer up.Close()
	back := make(chan struct{})
	go func() {
		defer close(back)
		io.Copy(c, up)
		c.Close()
	}()
	io.Copy(io.MultiWriter(rec, up), c) // recorded before it can be answered
	up.Close()
	<-back
}

// sent returns what the relay sent upstream, connection after connection.
func (w *wireTap) sent() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	var b strings.Builder
	for _, c := range w.conns {
		b.WriteString(c.String())
	}
	return b.String()
}

// tappedRelay returns a relay configured by o whose upstream is an
// in-process server (upstream, whose Mailbox holds the messages) reached
// through a wireTap.
func tappedRelay(t *testing.T, o relaytest.Options) (relay, upstream *relaytest.Server, tap *wireTap) {
	t.Helper()
	upstream = testkit.NewRelay(t, nil)
	tap = newWireTap(t, upstream.SMTPAddr)
	o.UpstreamAddr = tap.ln.Addr().String()
	return testkit.NewRelay(t, &o), upstream, tap
}

// hasBareLineEnding reports a CR not followed by LF or an LF not preceded
// by CR.
func hasBareLineEnding(s string) bool {
	return strings.Count(s, "\r") != strings.Count(s, "\r\n") || strings.Count(s, "\n") != strings.Count(s, "\r\n")
}

// readSMTP reads what a client sent as an SMTP server does: command lines;
// after DATA, the lines up to the "." line, unstuffed; after BDAT, the
// chunk's octets. It returns the commands and each message's bytes.
func readSMTP(t *testing.T, stream string) (cmds, msgs []string) {
	t.Helper()
	var msg strings.Builder
	for stream != "" {
		cmd, rest, ok := strings.Cut(stream, "\r\n")
		require.True(t, ok, "a command without its CRLF: %.40q", stream)
		cmds, stream = append(cmds, cmd), rest
		switch verb, arg, _ := strings.Cut(cmd, " "); verb {
		case "DATA":
			for {
				line, rest, ok := strings.Cut(stream, "\r\n")
				require.True(t, ok, "DATA without its end")
				stream = rest
				if line == "." {
					break
				}
				msg.WriteString(strings.TrimPrefix(line, ".") + "\r\n")
			}
			msgs = append(msgs, msg.String())
			msg.Reset()
		case "BDAT":
			size, last, _ := strings.Cut(arg, " ")
			n, err := strconv.Atoi(size)
			require.NoError(t, err, cmd)
			require.GreaterOrEqual(t, len(stream), n, cmd)
			msg.WriteString(stream[:n])
			stream = stream[n:]
			if last == "LAST" {
				msgs = append(msgs, msg.String())
				msg.Reset()
			}
		}
	}
	return cmds, msgs
}

// smuggling are bodies shaped like SMTP smuggling attempts and other
// hostile line structures, and what the upstream must receive of each with
// FixLineEndings: every bare CR and LF a CRLF, a final CRLF added, the
// "." lines text.
var smuggling = []struct{ name, body, want string }{
	{"LF dot LF", "a\n.\nMAIL FROM:<evil@example.com>\nRCPT TO:<victim@example.com>\nDATA\nsmuggled\n.\n",
		"a\r\n.\r\nMAIL FROM:<evil@example.com>\r\nRCPT TO:<victim@example.com>\r\nDATA\r\nsmuggled\r\n.\r\n"},
	{"CR dot CR", "a\r.\rRSET\rb", "a\r\n.\r\nRSET\r\nb\r\n"},
	{"CRLF dot LF", "a\r\n.\nb\r\n", "a\r\n.\r\nb\r\n"},
	{"LF dot CRLF", "a\n.\r\nb\r\n", "a\r\n.\r\nb\r\n"},
	{"CR dot CRLF", "a\r.\r\nb", "a\r\n.\r\nb\r\n"},
	{"lone dot lines", ".\r\n..\r\n.\r\n", ".\r\n..\r\n.\r\n"},
	{"no final CRLF", "the end", "the end\r\n"},
	{"ends with a dot", "x\r\n.", "x\r\n.\r\n"},
	{"ends with CR", "x\r", "x\r\n"},
	{"998-octet line after a dot", "." + strings.Repeat("y", 997) + "\r\n.", "." + strings.Repeat("y", 997) + "\r\n.\r\n"},
}

// What goes on the wire, for each way a session can send: only one end of
// data per email with DATA, whatever the body; with BDAT, one LAST chunk
// per email and no DATA; never a bare CR or LF; and the upstream receives
// the intended message.
func TestHostileBodiesOnTheWire(t *testing.T) {
	for _, binary := range []bool{true, false} {
		for _, mode := range []struct {
			name string
			hide []string
		}{
			{name: "BDAT"},
			{name: "DATA pipelined", hide: []string{"CHUNKING"}},
			{name: "DATA lock-step", hide: []string{"CHUNKING", "PIPELINING"}},
		} {
			t.Run(fmt.Sprintf("binary=%v/%s", binary, mode.name), func(t *testing.T) {
				relay, upstream, tap := tappedRelay(t, relaytest.Options{DisableBinary: !binary, HideExtensions: mode.hide})
				c := testkit.NewClient(t, relay, &mxrelay.Options{FixLineEndings: true, MaxEmailsPerSession: len(smuggling)})
				var hs []*mxrelay.Handle
				for _, tc := range smuggling {
					h, err := c.Enqueue(mxrelay.Email{From: "a@example.com", To: []string{"b@example.com"},
						Body: strings.NewReader("Subject: " + tc.name + "\r\n\r\n" + tc.body)})
					require.NoError(t, err, tc.name)
					hs = append(hs, h)
				}
				for _, h := range hs {
					_, err := h.Wait(testkit.Ctx(t))
					require.NoError(t, err)
				}
				got := map[string]string{}
				for _, m := range upstream.Mailbox() {
					head, body, ok := strings.Cut(string(m.Data), "\r\n\r\n")
					require.True(t, ok)
					got[strings.TrimPrefix(head, "Subject: ")] = body
				}
				require.Len(t, got, len(smuggling), "one message per email, none smuggled in")
				for _, tc := range smuggling {
					assert.Equal(t, tc.want, got[tc.name], tc.name)
				}

				sent := tap.sent()
				assert.False(t, hasBareLineEnding(sent), "no bare CR or LF on the wire")
				cmds, msgs := readSMTP(t, sent)
				verb := "BDAT"
				if mode.hide != nil {
					verb = "DATA"
				}
				for _, cmd := range cmds {
					assert.NotContains(t, cmd, "evil", "nothing of a body was read as a command")
					if v, _, _ := strings.Cut(cmd, " "); v == "BDAT" || v == "DATA" {
						assert.Equal(t, verb, v, cmd)
					}
				}
				require.Len(t, msgs, len(smuggling), "one end of data per email, at the end of each")
				for i, tc := range smuggling {
					assert.Equal(t, "Subject: "+tc.name+"\r\n\r\n"+tc.want, msgs[i], "as the server read it")
				}
			})
		}
	}
}

// Without FixLineEndings a bare CR or LF, and without AllowLongLines a line
// over 998 octets, is refused by Enqueue: the relay never hears of it.
func TestHostileBodiesAreRefusedBeforeConnecting(t *testing.T) {
	relay, upstream, tap := tappedRelay(t, relaytest.Options{})
	strict := testkit.NewClient(t, relay, nil)
	fix := testkit.NewClient(t, relay, &mxrelay.Options{FixLineEndings: true})
	long := strings.Repeat("x", 999)
	for _, tc := range []struct {
		name string
		c    *mxrelay.Client
		body string
		err  error
	}{
		{"LF dot LF", strict, "a\n.\nb\r\n", mxrelay.ErrBareLineEnding},
		{"CR dot CR", strict, "a\r.\rb\r\n", mxrelay.ErrBareLineEnding},
		{"CRLF dot LF", strict, "a\r\n.\nb\r\n", mxrelay.ErrBareLineEnding},
		{"ends with CR", strict, "a\r", mxrelay.ErrBareLineEnding},
		{"999 octets", strict, "Subject: x\r\n\r\n" + long + "\r\n", mxrelay.ErrLineTooLong},
		{"999 octets, no final CRLF", strict, "Subject: x\r\n\r\n" + long, mxrelay.ErrLineTooLong},
		{"999 octets in a header", strict, "Subject: " + long + "\r\n\r\nx\r\n", mxrelay.ErrLineTooLong},
		{"999 octets, line ends fixed", fix, "Subject: x\n\n" + long + "\n", mxrelay.ErrLineTooLong},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := mxrelay.Email{From: "a@example.com", To: []string{"b@example.com"}, Body: strings.NewReader(tc.body)}
			_, err := tc.c.Enqueue(e)
			require.ErrorIs(t, err, tc.err)
			require.ErrorIs(t, err, mxrelay.ErrInvalidEmail)
			// A body that can only be read once is refused the same way.
			e.Body = io.MultiReader(strings.NewReader(tc.body))
			res, err := tc.c.Send(testkit.Ctx(t), e)
			require.ErrorIs(t, err, tc.err)
			assert.Nil(t, res)
		})
	}
	assert.Zero(t, relay.Stats().Connections, "nothing refused made a client connect")
	assert.Empty(t, upstream.Mailbox())
	assert.Empty(t, tap.sent())
}

// With AllowLongLines a long line goes as it is, by DATA and by BDAT.
func TestAllowLongLines(t *testing.T) {
	body := "Subject: long\r\n\r\n" + strings.Repeat("z", 1500) + "\r\n." + strings.Repeat("z", 1200) + "\r\n"
	for _, hide := range [][]string{nil, {"CHUNKING"}} {
		t.Run(fmt.Sprint("hide=", hide), func(t *testing.T) {
			relay, upstream, tap := tappedRelay(t, relaytest.Options{HideExtensions: hide})
			c := testkit.NewClient(t, relay, &mxrelay.Options{AllowLongLines: true})
			_, err := c.Send(testkit.Ctx(t), mxrelay.Email{From: "a@example.com", To: []string{"b@example.com"}, Body: strings.NewReader(body)})
			require.NoError(t, err)
			box := upstream.Mailbox()
			require.Len(t, box, 1)
			assert.Equal(t, body, string(box[0].Data))
			if hide != nil {
				assert.Contains(t, tap.sent(), "\r\n.."+strings.Repeat("z", 1200)+"\r\n.\r\n", "stuffed, then one end of data")
			}
		})
	}
}

// hostileAddresses cannot be put in MAIL FROM or RCPT TO as they are: each
// would end the command, add a parameter or a command of its own
// (golang/go#21159), or is longer than a path may be.
var hostileAddresses = []struct{ name, addr string }{
	{"CRLF and a command", "a@example.com>\r\nRCPT TO:<evil@example.com"},
	{"a whole message", "b@example.com>\r\nDATA\r\nSubject: injected\r\n\r\nhi\r\n.\r\nMAIL FROM:<a@example.com"},
	{"CR", "a@example.com\rx"},
	{"LF", "a@example.com\nDATA"},
	{"NUL", "a@exa\x00mple.com"},
	{"angle bracket", "a@example.com>"},
	{"SIZE parameter", "a@b.c> SIZE=1"},
	{"NOTIFY parameter", "a@b.c NOTIFY=NEVER"},
	{"space", "a b@example.com"},
	{"tab", "a@example.com\tSIZE=1"},
	{"brackets twice", "<<a@example.com>>"},
	{"path of 257 octets", strings.Repeat("a", 255-len("@example.com")) + "@example.com"},
}

// Hostile addresses are refused before connecting, by Send and Enqueue and
// by every drop-in, as sender and as recipient.
func TestHostileAddressesAreRefusedBeforeConnecting(t *testing.T) {
	relay := testkit.NewRelay(t, nil)
	c := testkit.NewClient(t, relay, nil)
	tr := testkit.NewTransport(t, relay, nil)
	sender := mxrelay.NewSender(c)
	t.Setenv("MXRELAY_URL", relay.URL)
	t.Setenv("MXRELAY_API_KEY", relay.APIKey)
	t.Setenv("MXRELAY_API_KEY_FILE", "")
	const good = "a@example.com"
	body := testkit.Msg("hostile")
	for _, tc := range hostileAddresses {
		for _, role := range []string{"sender", "recipient"} {
			from, to := tc.addr, good
			if role == "recipient" {
				from, to = good, tc.addr
			}
			t.Run(tc.name+"/"+role, func(t *testing.T) {
				e := mxrelay.Email{From: from, To: []string{to}, Body: strings.NewReader(body)}
				_, err := c.Enqueue(e)
				assert.ErrorIs(t, err, mxrelay.ErrInvalidEmail, "Enqueue")
				_, err = c.Send(testkit.Ctx(t), e)
				assert.ErrorIs(t, err, mxrelay.ErrInvalidEmail, "Send")
				err = mxrelay.SendMail("smtp.example.com:587", nil, from, []string{to}, []byte(body))
				assert.ErrorIs(t, err, mxrelay.ErrInvalidEmail, "SendMail")
				err = tr.SendMail("smtp.example.com:587", nil, from, []string{to}, []byte(body))
				assert.ErrorIs(t, err, mxrelay.ErrInvalidEmail, "Transport.SendMail")
				err = sender.Send(from, []string{to}, strings.NewReader(body))
				assert.ErrorIs(t, err, mxrelay.ErrInvalidEmail, "Sender.Send")
			})
		}
	}
	assert.Zero(t, relay.Stats().Connections, "nothing refused made a client connect")
	assert.Empty(t, relay.Mailbox())

	// The longest path, 256 octets with its brackets, goes.
	longest := strings.Repeat("a", 254-len("@example.com")) + "@example.com"
	_, err := c.Send(testkit.Ctx(t), mxrelay.Email{From: longest, To: []string{longest}, Body: strings.NewReader(body)})
	require.NoError(t, err)
	box := relay.Mailbox()
	require.Len(t, box, 1)
	assert.Equal(t, longest, box[0].From)
	assert.Equal(t, []string{longest}, box[0].To)
}

// The drop-ins follow the same body rules: SendMail and Transport.SendMail
// make bare LFs CRLF, as net/smtp does, but refuse a bare CR and a line
// over 998 octets before connecting.
func TestDropInsRefuseHostileBodies(t *testing.T) {
	relay := testkit.NewRelay(t, nil)
	tr := testkit.NewTransport(t, relay, nil)
	sender := mxrelay.NewSender(testkit.NewClient(t, relay, nil))
	t.Setenv("MXRELAY_URL", relay.URL)
	t.Setenv("MXRELAY_API_KEY", relay.APIKey)
	t.Setenv("MXRELAY_API_KEY_FILE", "")
	for _, tc := range []struct {
		name string
		body string
		err  error
	}{
		{"CR dot CR", "Subject: x\r\n\r\na\r.\rb\r\n", mxrelay.ErrBareLineEnding},
		{"999 octets", "Subject: x\r\n\r\n" + strings.Repeat("x", 999) + "\r\n", mxrelay.ErrLineTooLong},
	} {
		t.Run(tc.name, func(t *testing.T) {
			to := []string{"b@example.com"}
			err := mxrelay.SendMail("smtp.example.com:587", nil, "a@example.com", to, []byte(tc.body))
			assert.ErrorIs(t, err, tc.err, "SendMail")
			err = tr.SendMail("smtp.example.com:587", nil, "a@example.com", to, []byte(tc.body))
			assert.ErrorIs(t, err, tc.err, "Transport.SendMail")
			err = sender.Send("a@example.com", to, strings.NewReader(tc.body))
			assert.ErrorIs(t, err, tc.err, "Sender.Send")
		})
	}
	assert.Zero(t, relay.Stats().Connections)
	assert.Empty(t, relay.Mailbox())
}
