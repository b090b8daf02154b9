package smtpc

import (
	"context"
	"crypto/tls"
	"errors"
	"strings"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
)

// TLSPolicy says whether Handshake runs STARTTLS.
type TLSPolicy int

const (
	// TLSNever does not run STARTTLS.
	TLSNever TLSPolicy = iota
	// TLSIfOffered runs STARTTLS when the server offers it and the stream
	// can carry TLS records (not Config.UTF8Only); otherwise the session
	// goes on in clear.
	TLSIfOffered
	// TLSRequired runs STARTTLS, or fails the handshake before anything
	// else is sent.
	TLSRequired
)

// Policy is what Handshake does after the greeting.
type Policy struct {
	// LocalName is the name sent with EHLO (and HELO).
	LocalName string
	// StartTLS is the STARTTLS policy.
	StartTLS TLSPolicy
	// TLSConfig configures STARTTLS; Handshake uses a clone. Nil: an
	// empty config, which checks the certificate against the system roots
	// and no name.
	TLSConfig *tls.Config
	// Username and Password are the AUTH credentials: PLAIN, or LOGIN
	// when the server does not offer PLAIN. An empty Username: no AUTH.
	Username, Password string
	// PasswordInClear lets AUTH run when STARTTLS did not.
	PasswordInClear bool
	// TLSSkipped, if set, is called when TLSIfOffered does not run
	// STARTTLS because the stream carries UTF-8 text only, before the
	// session goes on in clear.
	TLSSkipped func()
}

// ErrPermanent is matched by a Handshake error that trying again cannot
// fix: STARTTLS required and the server does not offer it or the stream
// cannot carry it, a 5xx to STARTTLS, a server certificate that does not
// verify, AUTH that would send the password in clear, no AUTH mechanism
// this client speaks, a 5xx to AUTH. Every other Handshake error (a cut,
// a timeout, a 4xx, a TLS handshake that broke off, a reply out of
// grammar) is temporary.
var ErrPermanent = errors.New("permanent set-up failure")

// permanentError marks err as matching ErrPermanent; its message is err's.
type permanentError struct{ error }

func (e permanentError) Unwrap() error        { return e.error }
func (e permanentError) Is(target error) bool { return target == ErrPermanent }

func permanent(err error) error { return permanentError{err} }

// Handshake reads the greeting, sends EHLO, and runs STARTTLS and AUTH as
// p says, in lock-step; ctx bounds the TLS handshake. With AUTH it runs
// only under TLS, unless p.PasswordInClear. It ends with Quiet: a reply
// nobody asked for fails it. Errors name the step ("greeting: ...",
// "STARTTLS: ...", "AUTH: ..."); those retrying cannot fix match
// ErrPermanent, and an *smtp.SMTPError or ErrProtocol stays matchable
// under it.
func (c *Client) Handshake(ctx context.Context, p Policy) error {
	if err := c.Greet(); err != nil {
		return err
	}
	if err := c.Hello(p.LocalName); err != nil {
		return err
	}
	secure, err := c.startTLSAsPolicy(ctx, p)
	if err != nil {
		return err
	}
	if p.Username == "" {
		return c.Quiet()
	}
	if !secure && !p.PasswordInClear {
		return permanent(errors.New("AUTH: STARTTLS did not run, and AUTH would send the password in clear (PasswordInClear allows it)"))
	}
	mechs, _ := c.Ext("AUTH")
	var a sasl.Client
	switch {
	case hasWord(mechs, sasl.Plain):
		a = sasl.NewPlainClient("", p.Username, p.Password)
	case hasWord(mechs, sasl.Login):
		a = sasl.NewLoginClient(p.Username, p.Password)
	default:
		return permanent(errors.New("AUTH: the server offers neither PLAIN nor LOGIN"))
	}
	if err := c.Auth(a); err != nil {
		if replyClass(err) == 5 {
			return permanent(err)
		}
		return err
	}
	return c.Quiet()
}

// startTLSAsPolicy runs STARTTLS if p asks for it and it can run, and
// reports whether it did. A certificate that does not verify, or a 5xx
// to STARTTLS, is permanent (it will not fix itself); a cut, a timeout,
// a 4xx or a broken handshake is temporary, as Postfix defers it.
func (c *Client) startTLSAsPolicy(ctx context.Context, p Policy) (bool, error) {
	switch {
	case p.StartTLS == TLSNever:
		return false, nil
	case c.cfg.UTF8Only && p.StartTLS == TLSRequired:
		return false, permanent(errors.New("STARTTLS: required, and the stream carries UTF-8 text only, which cannot carry TLS records"))
	case c.cfg.UTF8Only:
		if p.TLSSkipped != nil {
			p.TLSSkipped()
		}
		return false, nil
	case !c.Has("STARTTLS") && p.StartTLS == TLSRequired:
		return false, permanent(errors.New("STARTTLS: required, and the server does not offer it"))
	case !c.Has("STARTTLS"):
		return false, nil
	}
	cfg := p.TLSConfig.Clone()
	if cfg == nil {
		cfg = &tls.Config{}
	}
	if err := c.StartTLS(ctx, cfg, p.LocalName); err != nil {
		var cve *tls.CertificateVerificationError
		if errors.As(err, &cve) || replyClass(err) == 5 {
			return false, permanent(err)
		}
		return false, err
	}
	return true, nil
}

// replyClass is the class (2 to 5) of the SMTP reply err carries, 0 for
// none.
func replyClass(err error) int {
	var se *smtp.SMTPError
	if errors.As(err, &se) {
		return se.Code / 100
	}
	return 0
}

func hasWord(list, w string) bool {
	for _, f := range strings.Fields(list) {
		if strings.EqualFold(f, w) {
			return true
		}
	}
	return false
}
