// Command mockrelay runs a relaytest.Server on its own: an mxrelay
// WebSocket relay (docs/protocol.md) in front of an in-memory SMTP server, or of
// an SMTP server you name, for trying a client by hand.
//
//	go run ./cmd/mockrelay [-addr 127.0.0.1:0] [-key KEY] [-upstream host:port]
//	                       [-binary=true] [-latency 0] [-v] [-allow-remote]
//	                       [-fault [N@]KIND[:ARG[:ARG]]]... [-throttle N/PER[:REPLY]]
//
// -fault arms one of relaytest's faults, to try a failure path by hand;
// it may be repeated, and fires once unless N@ says how often (-1@:
// forever). KIND is a relaytest.FaultKind name; its arguments:
//
//	ReplaceReply:COMMAND:REPLY   -fault 'ReplaceReply:RCPT:550 5.1.1 no such user'
//	StallReply:COMMAND           -fault StallReply:.   (the end of data)
//	CloseWebSocket:COMMAND[:CODE]
//	DropAfterBytes:N[:from-server]
//	DropAfterRcpt, DropAfterFinalDot, RejectAuth, IgnoreAuth,
//	DropAfterAuthenticate, FailChannel, IgnoreChannel
//
// -throttle makes the relay answer as an upstream with a sending limit:
// past N transactions per PER, MAIL gets 451 4.7.0 (or REPLY).
//
// It prints the relay URL and the API key, logs connections,
// authentications and channels (-v: the SMTP dialogue too, never
// credentials or bodies), prints every message the in-memory server
// accepts, and runs until SIGINT or SIGTERM, when it closes cleanly.
//
// It listens only on loopback addresses unless -allow-remote is given: it
// is a test tool with a well-known default key, which -allow-remote
// refuses: it needs a -key of your own.
package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"mime"
	"net"
	"net/mail"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/coder/websocket"

	"github.com/mxrelay/mxrelay/relaytest"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			os.Exit(2)
		}
		fmt.Fprintln(os.Stderr, "mockrelay:", err)
		os.Exit(1)
	}
}

// run runs the relay until ctx ends.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("mockrelay", flag.ContinueOnError)
	fs.SetOutput(stderr)
	addr := fs.String("addr", relaytest.DefaultAddr, "`host:port` to listen on")
	key := fs.String("key", relaytest.DefaultAPIKey, "API key to accept")
	upstream := fs.String("upstream", "", "forward to this SMTP `host:port` instead of the in-memory server")
	binary := fs.Bool("binary", true, "grant binary data frames when a client asks")
	latency := fs.Duration("latency", 0, "delay added to every frame, in each direction")
	verbose := fs.Bool("v", false, "log the SMTP dialogue (debug level)")
	allowRemote := fs.Bool("allow-remote", false, "allow listening on a non-loopback address")
	var faults []relaytest.Fault
	fs.Func("fault", "arm a fault: `[N@]KIND[:ARG[:ARG]]` (repeatable; see the package doc)", func(v string) error {
		f, err := parseFault(v)
		faults = append(faults, f)
		return err
	})
	var throttle *relaytest.Throttle
	fs.Func("throttle", "upstream sending limit: `N/PER[:REPLY]`, e.g. 100/1s", func(v string) (err error) {
		throttle, err = parseThrottle(v)
		return err
	})
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments: %q", fs.Args())
	}
	if *key == "" {
		return errors.New("-key must not be empty")
	}
	if !*allowRemote {
		if err := checkLoopback(*addr); err != nil {
			return err
		}
	}
	keySet := false
	fs.Visit(func(f *flag.Flag) { keySet = keySet || f.Name == "key" })
	if *allowRemote && (!keySet || *key == relaytest.DefaultAPIKey) {
		return errors.New("-allow-remote needs -key with a key of your own: the default key is published, and anyone could use the relay (with -upstream, to send mail through your SMTP server)")
	}

	level := slog.LevelInfo
	if *verbose {
		level = slog.LevelDebug
	}
	logger := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))

	srv, err := newServer(&relaytest.Options{
		Addr:          *addr,
		APIKeys:       []string{*key},
		UpstreamAddr:  *upstream,
		DisableBinary: !*binary,
		Latency:       relaytest.Latency{ToServer: *latency, ToClient: *latency},
		Logger:        logger,
		Throttle:      throttle,
		OnMessage:     func(m relaytest.Message) { printMessage(stdout, m) },
	})
	if err != nil {
		return err
	}
	for _, f := range faults {
		if err := inject(srv, f); err != nil {
			srv.Close()
			return err
		}
	}
	fmt.Fprintf(stdout, "relay URL: %s\nAPI key:   %s\nupstream:  %s\n", srv.URL, srv.APIKey, srv.SMTPAddr)

	<-ctx.Done()
	fmt.Fprintln(stdout, "shutting down")
	srv.Close()
	st := srv.Stats()
	fmt.Fprintf(stdout, "connections %d, authenticated %d, channels %d, messages %d\n",
		st.Connections, st.Authenticated, st.Channels, st.Messages)
	return nil
}

// newServer turns relaytest's panic on a listen failure or a bad option
// into an error.
func newServer(opts *relaytest.Options) (srv *relaytest.Server, err error) {
	defer recovered(&err)
	return relaytest.NewServer(opts), nil
}

// inject arms f, turning relaytest's panic on a malformed fault into an
// error.
func inject(srv *relaytest.Server, f relaytest.Fault) (err error) {
	defer recovered(&err)
	srv.Inject(f)
	return nil
}

func recovered(err *error) {
	if v := recover(); v != nil {
		*err = fmt.Errorf("%v", v)
	}
}

// parseFault reads -fault's [N@]KIND[:ARG[:ARG]].
func parseFault(v string) (relaytest.Fault, error) {
	var f relaytest.Fault
	if n, rest, ok := strings.Cut(v, "@"); ok && !strings.Contains(n, ":") {
		times, err := strconv.Atoi(n)
		if err != nil || times < -1 {
			return f, fmt.Errorf("%q: N@ wants a count, or -1 for forever", v)
		}
		f.Times, v = times, rest
	}
	parts := strings.SplitN(v, ":", 3)
	for k := relaytest.RejectAuth; k <= relaytest.CloseWebSocket; k++ {
		if strings.EqualFold(k.String(), parts[0]) {
			f.Kind = k
		}
	}
	if f.Kind == 0 {
		return f, fmt.Errorf("%q: unknown fault kind %q", v, parts[0])
	}
	arg := func(i int) string {
		if i < len(parts) {
			return parts[i]
		}
		return ""
	}
	switch f.Kind {
	case relaytest.DropAfterBytes:
		n, err := strconv.ParseInt(arg(1), 10, 64)
		if err != nil || n < 0 {
			return f, fmt.Errorf("%q: DropAfterBytes:N wants a byte count", v)
		}
		f.Bytes, f.FromServer = n, arg(2) == "from-server"
		if arg(2) != "" && !f.FromServer {
			return f, fmt.Errorf("%q: the direction is from-server, or none", v)
		}
	case relaytest.CloseWebSocket:
		f.Command = arg(1)
		if arg(2) != "" {
			code, err := strconv.Atoi(arg(2))
			if err != nil {
				return f, fmt.Errorf("%q: CODE wants a close status", v)
			}
			f.Code = websocket.StatusCode(code)
		}
	case relaytest.ReplaceReply:
		f.Command, f.Reply = arg(1), arg(2)
	default:
		f.Command = arg(1)
	}
	return f, nil
}

// parseThrottle reads -throttle's N/PER[:REPLY].
func parseThrottle(v string) (*relaytest.Throttle, error) {
	rate, reply, _ := strings.Cut(v, ":")
	n, per, ok := strings.Cut(rate, "/")
	limit, err := strconv.Atoi(n)
	d, err2 := time.ParseDuration(per)
	if !ok || err != nil || err2 != nil || limit < 0 || d <= 0 {
		return nil, fmt.Errorf("%q: want N/PER, e.g. 100/1s", v)
	}
	return &relaytest.Throttle{Limit: limit, Per: d, Reply: reply}, nil
}

// checkLoopback refuses an address that is not on a loopback interface.
// An empty host (":8080") means every interface.
func checkLoopback(addr string) error {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("-addr %q: %v", addr, err)
	}
	if host == "localhost" {
		return nil
	}
	if ip := net.ParseIP(host); ip != nil && ip.IsLoopback() {
		return nil
	}
	return fmt.Errorf("-addr %q is not a loopback address (use -allow-remote to listen on it anyway)", addr)
}

// printMessage prints a line per message: envelope, size, Subject.
func printMessage(w io.Writer, m relaytest.Message) {
	subject := "(no subject)"
	if msg, err := mail.ReadMessage(bytes.NewReader(m.Data)); err == nil {
		if s := msg.Header.Get("Subject"); s != "" {
			if dec, err := new(mime.WordDecoder).DecodeHeader(s); err == nil {
				s = dec
			}
			subject = fmt.Sprintf("%q", s)
		}
	}
	user := ""
	if m.User != "" {
		user = " user=" + m.User
	}
	fmt.Fprintf(w, "%s message from=<%s> to=<%s> size=%d session=%d%s subject=%s\n",
		m.Received.Format(time.TimeOnly), m.From, strings.Join(m.To, ">,<"), len(m.Data), m.Session, user, subject)
}
