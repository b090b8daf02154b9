// Command mockrelay runs a relaytest.Server on its own: an mxrelay
// WebSocket relay (docs/protocol.md) in front of an in-memory SMTP server, or of
// an SMTP server you name, for trying a client by hand.
//
//	go run ./cmd/mockrelay [-addr 127.0.0.1:0] [-key KEY] [-upstream host:port]
//	                       [-binary=true] [-latency 0] [-v] [-allow-remote]
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
	"strings"
	"syscall"
	"time"

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
		OnMessage:     func(m relaytest.Message) { printMessage(stdout, m) },
	})
	if err != nil {
		return err
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

// newServer turns relaytest's panic on a listen failure into an error.
func newServer(opts *relaytest.Options) (srv *relaytest.Server, err error) {
	defer func() {
		if v := recover(); v != nil {
			err = fmt.Errorf("%v", v)
		}
	}()
	return relaytest.NewServer(opts), nil
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
