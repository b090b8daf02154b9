package smtpc

import (
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/emersion/go-smtp"
)

// ErrUnsupported is a MAIL or RCPT parameter the caller asked for that the
// server does not offer (and that cannot be dropped silently), or that this
// client does not send.
var ErrUnsupported = errors.New("not supported")

// checkLine refuses what would end or split a command line.
func checkLine(s string) error {
	if strings.ContainsAny(s, "\r\n\x00") {
		return fmt.Errorf("%w: CR, LF or NUL in a command argument", ErrProtocol)
	}
	return nil
}

func isASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= 0x80 {
			return false
		}
	}
	return true
}

func isPrintableASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < '!' || s[i] > '~' {
			return false
		}
	}
	return true
}

// xtext encodes s per RFC 3461 §4: "+", "=" and what is not printable
// ASCII become "+XX".
func xtext(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < '!' || c > '~' || c == '+' || c == '=' {
			fmt.Fprintf(&b, "+%02X", c)
			continue
		}
		b.WriteByte(c)
	}
	return b.String()
}

// utf8AddrXtext and utf8AddrUnitext encode an ORCPT utf-8 address per
// RFC 6533 §3: without SMTPUTF8 non-ASCII runes become \x{HEX}; with it
// they pass as they are; in both, the characters xtext reserves are escaped.
func utf8Addr(s string, unitext bool) string {
	var b strings.Builder
	for _, r := range s {
		switch {
		case r == '\\' || r == '+' || r == '=' || r < '!' || r == 0x7f:
			fmt.Fprintf(&b, `\x{%X}`, r)
		case r >= 0x80 && !unitext:
			fmt.Fprintf(&b, `\x{%X}`, r)
		default:
			b.WriteRune(r)
		}
	}
	return b.String()
}

// MailCommand builds the MAIL command for from with the parameters of opts
// that the server offers, as go-smtp's Client does: BODY=8BITMIME whenever
// 8BITMIME is offered (unless opts.Body says otherwise), SIZE when offered
// and known, SMTPUTF8 and REQUIRETLS only when offered (else an error),
// DSN's RET and ENVID when DSN is offered, AUTH= when AUTH is offered.
// SMTPUTF8 is asked for by itself when an address is not ASCII.
func (c *Client) MailCommand(from string, opts *smtp.MailOptions, size int64, rcpts []string) (string, error) {
	if err := checkLine(from); err != nil {
		return "", err
	}
	var o smtp.MailOptions
	if opts != nil {
		o = *opts
	}
	if !o.UTF8 && !isASCII(from) {
		o.UTF8 = true
	}
	for _, r := range rcpts {
		if !o.UTF8 && !isASCII(r) {
			o.UTF8 = true
		}
	}
	var b strings.Builder
	b.Grow(64)
	b.WriteString("MAIL FROM:<")
	b.WriteString(from)
	b.WriteString(">")
	switch o.Body {
	case "":
		if c.Has("8BITMIME") {
			b.WriteString(" BODY=8BITMIME")
		}
	case smtp.Body7Bit:
		b.WriteString(" BODY=7BIT")
	case smtp.Body8BitMIME:
		if !c.Has("8BITMIME") {
			return "", fmt.Errorf("%w: BODY=8BITMIME: the server does not offer 8BITMIME", ErrUnsupported)
		}
		b.WriteString(" BODY=8BITMIME")
	case smtp.BodyBinaryMIME:
		if !c.Has("BINARYMIME") || !c.Has("CHUNKING") {
			return "", fmt.Errorf("%w: BODY=BINARYMIME: the server does not offer BINARYMIME and CHUNKING", ErrUnsupported)
		}
		b.WriteString(" BODY=BINARYMIME")
	default:
		return "", fmt.Errorf("%w: BODY=%s", ErrUnsupported, o.Body)
	}
	if size > 0 && c.Has("SIZE") {
		b.WriteString(" SIZE=")
		b.WriteString(strconv.FormatInt(size, 10))
	}
	if o.RequireTLS {
		if !c.Has("REQUIRETLS") {
			return "", fmt.Errorf("%w: REQUIRETLS: the server does not offer it", ErrUnsupported)
		}
		b.WriteString(" REQUIRETLS")
	}
	if o.UTF8 {
		if !c.Has("SMTPUTF8") {
			return "", fmt.Errorf("%w: SMTPUTF8 (needed for a non-ASCII address): the server does not offer it", ErrUnsupported)
		}
		b.WriteString(" SMTPUTF8")
	}
	if c.Has("DSN") {
		switch o.Return {
		case "":
		case smtp.DSNReturnFull, smtp.DSNReturnHeaders:
			b.WriteString(" RET=")
			b.WriteString(string(o.Return))
		default:
			return "", fmt.Errorf("%w: RET=%s", ErrUnsupported, o.Return)
		}
		if o.EnvelopeID != "" {
			if !isPrintableASCII(o.EnvelopeID) {
				return "", fmt.Errorf("%w: ENVID must be printable ASCII", ErrUnsupported)
			}
			b.WriteString(" ENVID=")
			b.WriteString(xtext(o.EnvelopeID))
		}
	}
	if o.Auth != nil && c.Has("AUTH") {
		b.WriteString(" AUTH=")
		b.WriteString(xtext(*o.Auth))
	}
	return b.String(), nil
}

// RcptCommand builds the RCPT command for to with DSN's NOTIFY and ORCPT
// when the server offers DSN, as go-smtp's Client does. Parameters this
// client does not send (RRVS, DELIVERBY, MT-PRIORITY) are refused rather
// than dropped.
func (c *Client) RcptCommand(to string, opts *smtp.RcptOptions) (string, error) {
	if err := checkLine(to); err != nil {
		return "", err
	}
	if opts == nil {
		return "RCPT TO:<" + to + ">", nil
	}
	if !opts.RequireRecipientValidSince.IsZero() || opts.DeliverBy != nil || opts.MTPriority != nil {
		return "", fmt.Errorf("%w: RRVS, DELIVERBY and MT-PRIORITY are not sent by this client", ErrUnsupported)
	}
	var b strings.Builder
	b.WriteString("RCPT TO:<")
	b.WriteString(to)
	b.WriteString(">")
	if !c.Has("DSN") {
		return b.String(), nil
	}
	if len(opts.Notify) > 0 {
		seen := map[smtp.DSNNotify]bool{}
		for i, n := range opts.Notify {
			switch n {
			case smtp.DSNNotifyNever, smtp.DSNNotifySuccess, smtp.DSNNotifyFailure, smtp.DSNNotifyDelayed:
			default:
				return "", fmt.Errorf("%w: NOTIFY=%s", ErrUnsupported, n)
			}
			if seen[n] {
				return "", fmt.Errorf("%w: NOTIFY=%s twice", ErrUnsupported, n)
			}
			seen[n] = true
			if i == 0 {
				b.WriteString(" NOTIFY=")
			} else {
				b.WriteString(",")
			}
			b.WriteString(string(n))
		}
		if seen[smtp.DSNNotifyNever] && len(opts.Notify) > 1 {
			return "", fmt.Errorf("%w: NOTIFY=NEVER with other values", ErrUnsupported)
		}
	}
	if opts.OriginalRecipient != "" {
		var enc string
		switch opts.OriginalRecipientType {
		case smtp.DSNAddressTypeRFC822:
			if !isPrintableASCII(opts.OriginalRecipient) {
				return "", fmt.Errorf("%w: an rfc822 ORCPT must be printable ASCII", ErrUnsupported)
			}
			enc = xtext(opts.OriginalRecipient)
		case smtp.DSNAddressTypeUTF8:
			enc = utf8Addr(opts.OriginalRecipient, c.Has("SMTPUTF8"))
		default:
			return "", fmt.Errorf("%w: ORCPT address type %q", ErrUnsupported, opts.OriginalRecipientType)
		}
		b.WriteString(" ORCPT=")
		b.WriteString(string(opts.OriginalRecipientType))
		b.WriteString(";")
		b.WriteString(enc)
	}
	return b.String(), nil
}
