package mxrelay

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/smtp"
	"os"
	"strings"
)

// SendMail sends msg from from to the recipients in to through the relay
// that the environment names (MXRELAY_URL, and MXRELAY_API_KEY or
// MXRELAY_API_KEY_FILE: see RelayFromEnv). It takes the arguments of
// net/smtp's SendMail, so code written for net/smtp changes its package
// name and nothing else. Like net/smtp's, it is one connection per call:
// it dials the relay, runs one SMTP session, waits for the reply to the end
// of data and disconnects, with no retry and no queue. To send more than an
// occasional message, or to retry, keep a Transport or a Client.
//
// What it does with addr and a:
//
//   - addr ("host:port") is not dialled: the relay decides which SMTP server
//     the session reaches. Its host is the name that server's certificate is
//     checked against when STARTTLS runs, as with net/smtp; its port is not
//     used.
//   - STARTTLS runs when the server offers it and the relay carries binary
//     frames, as net/smtp runs it when offered; over a relay that only
//     speaks JSON text frames the session goes on in clear (see
//     StartTLSOpportunistic).
//   - a may be nil: no SMTP AUTH. Otherwise it must be smtp.PlainAuth, or an
//     Auth that answers LOGIN's "Username:" and "Password:" challenges: its
//     credentials are taken from it and the client authenticates with PLAIN
//     or LOGIN, whichever the server offers. With a, STARTTLS is required:
//     a is told the connection is encrypted, and the email fails, before
//     any credential is sent, if the server does not offer STARTTLS, its
//     certificate does not verify, or the relay only speaks JSON text
//     frames (TLS needs binary frames). smtp.PlainAuth checks, as with net/smtp,
//     that addr's host is the host it was made for. Other mechanisms
//     (CRAM-MD5) fail before anything is sent.
//
// msg is an RFC 5322 message. Bare LF line ends are turned into CRLF, as
// net/smtp does; a message that has none is sent in place, not copied.
// SendMail returns nil when the email was delivered to every recipient; a
// *PartialError when it reached some and not others (net/smtp fails the
// send on a refused recipient, so code written for it checks the error;
// the error says who got it); otherwise the error of the configuration,
// of a, or of Client.Send (an *EmailError).
func SendMail(addr string, a smtp.Auth, from string, to []string, msg []byte) error {
	return sendMail(os.Getenv, nil, addr, a, from, to, msg)
}

// sendMail is SendMail with the environment and the base TLS configuration
// (nil: the system roots) given, for tests.
func sendMail(getenv func(string) string, base *tls.Config, addr string, a smtp.Auth, from string, to []string, msg []byte) error {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("mxrelay: SendMail: %w", err)
	}
	relayURL, apiKey, err := RelayFromEnv(getenv)
	if err != nil {
		return err
	}
	tc := &tls.Config{}
	if base != nil {
		tc = base.Clone()
	}
	tc.ServerName = host
	opts := Options{
		StartTLS:             StartTLSOpportunistic,
		TLSConfig:            tc,
		Retries:              -1,
		MaxReconnectAttempts: 1,
		IdleTimeout:          -1,
		// One email per call, as net/smtp: pipelining gains nothing, and
		// lock-step leaves fewer outcomes unknown after a failure.
		DisablePipelining: true,
	}
	if a != nil {
		opts.StartTLS = StartTLSRequired
		if opts.Username, opts.Password, err = authCredentials(a, addr, true); err != nil {
			return err
		}
	}
	c, err := New(relayURL, apiKey, &opts)
	if err != nil {
		return err
	}
	ctx := context.Background()
	res, err := c.Send(ctx, Email{From: from, To: to, Body: bytes.NewReader(crlf(msg))})
	c.Close(ctx) // nothing is queued: Close only ends the session
	return dropInErr(res, err)
}

// checkAuth refuses an Auth (of Transport.SendMail) that is not made of the
// Transport's own credentials.
func (t *Transport) checkAuth(addr string, a smtp.Auth) error {
	if a == nil {
		return nil
	}
	user, pass, err := authCredentials(a, addr, t.opts.StartTLS == StartTLSRequired)
	if err != nil {
		return err
	}
	if user != t.opts.Username || pass != t.opts.Password {
		return errors.New("mxrelay: SendMail: the Auth's credentials are not the Transport's Options.Username and Password")
	}
	return nil
}

// authCredentials runs the start of a net/smtp Auth against a server named
// by addr's host that offers PLAIN and LOGIN, over a connection that is
// encrypted when tls is true, and returns the username and password it
// would send.
func authCredentials(a smtp.Auth, addr string, tls bool) (username, password string, err error) {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return "", "", fmt.Errorf("mxrelay: SMTP auth: %w", err)
	}
	proto, resp, err := a.Start(&smtp.ServerInfo{Name: host, TLS: tls, Auth: []string{"PLAIN", "LOGIN"}})
	if err != nil {
		return "", "", fmt.Errorf("mxrelay: SMTP auth: %w", err)
	}
	switch strings.ToUpper(proto) {
	case "PLAIN":
		// authorization identity NUL username NUL password (RFC 4616)
		f := strings.Split(string(resp), "\x00")
		if len(f) != 3 {
			return "", "", errors.New("mxrelay: SMTP auth: malformed PLAIN response")
		}
		if f[0] != "" && f[0] != f[1] {
			return "", "", errors.New("mxrelay: SMTP auth: an authorization identity other than the username is not supported")
		}
		return f[1], f[2], nil
	case "LOGIN":
		user, err := a.Next([]byte("Username:"), true)
		if err != nil {
			return "", "", fmt.Errorf("mxrelay: SMTP auth: %w", err)
		}
		pass, err := a.Next([]byte("Password:"), true)
		if err != nil {
			return "", "", fmt.Errorf("mxrelay: SMTP auth: %w", err)
		}
		return string(user), string(pass), nil
	}
	return "", "", fmt.Errorf("mxrelay: SMTP auth: the %s mechanism is not supported: use smtp.PlainAuth", proto)
}

// crlf returns msg with every bare LF turned into CRLF; msg itself when it
// has none.
func crlf(msg []byte) []byte {
	bare := 0
	for i, c := range msg {
		if c == '\n' && (i == 0 || msg[i-1] != '\r') {
			bare++
		}
	}
	if bare == 0 {
		return msg
	}
	out := make([]byte, 0, len(msg)+bare)
	for i, c := range msg {
		if c == '\n' && (i == 0 || msg[i-1] != '\r') {
			out = append(out, '\r')
		}
		out = append(out, c)
	}
	return out
}
