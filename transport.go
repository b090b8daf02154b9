package mxrelay

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/smtp"
	"net/url"
	"strconv"
	"strings"

	"github.com/mxrelay/mxrelay/internal/wire"
)

// TransportOptions locates a relay by host, port and scheme, as the original
// client's createTransport(apiKey, {host, port, secure}) does, and carries
// the client's Options. There is no default relay: Host is required.
type TransportOptions struct {
	// Host is the relay's host name or IP address. Required.
	Host string
	// Port is the relay's port. Zero: 443, or 80 with Insecure.
	Port int
	// Insecure selects ws:// instead of wss:// (the original client's
	// secure:false). Use it only on loopback or in tests: the SMTP dialogue
	// and the API key then cross the network in clear text.
	Insecure bool
	// Path is the URL path. Zero: "/smtp".
	Path string
	// Options configures the underlying Client.
	Options Options
}

// RelayURL builds the WebSocket URL of a relay from its parts.
func RelayURL(host string, port int, secure bool, path string) (string, error) {
	if host == "" {
		return "", errors.New("mxrelay: relay host is empty")
	}
	if strings.ContainsAny(host, "/?#@ ") {
		return "", fmt.Errorf("mxrelay: relay host %q is not a host name", host)
	}
	scheme := "wss"
	if !secure {
		scheme = "ws"
	}
	if port == 0 {
		port = 443
		if !secure {
			port = 80
		}
	}
	if port < 0 || port > 65535 {
		return "", fmt.Errorf("mxrelay: relay port %d out of range", port)
	}
	if path == "" {
		path = wire.DefaultPath
	}
	if !strings.HasPrefix(path, "/") {
		path = "/" + path
	}
	u := url.URL{Scheme: scheme, Host: net.JoinHostPort(strings.Trim(host, "[]"), strconv.Itoa(port)), Path: path}
	return u.String(), nil
}

// Transport is a Client with the shape of code written for net/smtp: one
// call per message, the message as bytes. It is safe for concurrent use.
type Transport struct {
	*Client
}

// NewTransport returns a Transport for the relay that opts locate,
// authenticating with apiKey. It does no I/O.
func NewTransport(apiKey string, opts TransportOptions) (*Transport, error) {
	u, err := RelayURL(opts.Host, opts.Port, !opts.Insecure, opts.Path)
	if err != nil {
		return nil, err
	}
	c, err := New(u, apiKey, &opts.Options)
	if err != nil {
		return nil, err
	}
	return &Transport{Client: c}, nil
}

// SendMail sends msg from from to the recipients in to and waits for the
// result. It has the arguments of net/smtp's SendMail, so that code written
// for net/smtp changes one line (and a variable of net/smtp's SendMail's
// type can hold t.SendMail). The relay decides which SMTP server the
// session reaches, and the Transport's Options say how to talk to it
// (STARTTLS, TLSConfig, Username and Password), so:
//
//   - addr is not dialled. When a is not nil, addr's host is the server
//     name a is shown, so that smtp.PlainAuth's check that it talks to the
//     host it was made for still applies.
//   - a may be nil: the Transport's Options.Username and Password are used,
//     if set. Otherwise a must be smtp.PlainAuth, or an Auth that answers
//     LOGIN's "Username:" and "Password:" challenges, holding the
//     Transport's own credentials; a is told the connection is encrypted
//     only when Options.StartTLS is StartTLSRequired, so smtp.PlainAuth
//     refuses, as with net/smtp, to hand a password to a clear connection
//     to any host but localhost. Another mechanism, other credentials or a
//     refusal by a fail before anything is sent.
//
// msg is an RFC 5322 message; see SendMailContext. SendMail returns what
// SendMailContext returns (nil when the email was delivered to every
// recipient, a *PartialError when it reached some and not others, an
// *EmailError otherwise), or the error of a.
func (t *Transport) SendMail(addr string, a smtp.Auth, from string, to []string, msg []byte) error {
	if err := t.checkAuth(addr, a); err != nil {
		return err
	}
	return t.SendMailContext(context.Background(), from, to, msg)
}

// SendMailContext sends msg from from to the recipients in to and waits for
// the result or the end of ctx (see Client.Send for what that does). msg is
// an RFC 5322 message; bare LF line ends are turned into CRLF, as net/smtp
// does. A message that has none is not copied, so it must not change until
// SendMailContext returns. It returns nil when the email was delivered to
// every recipient, a *PartialError when it reached some and not others,
// and otherwise an *EmailError.
func (t *Transport) SendMailContext(ctx context.Context, from string, to []string, msg []byte) error {
	return dropInErr(t.Send(ctx, Email{From: from, To: to, Body: bytes.NewReader(crlf(msg))}))
}

// Close closes the Transport's Client, waiting for queued emails until ctx
// ends (see Client.Close).
func (t *Transport) Close(ctx context.Context) error { return t.Client.Close(ctx) }
