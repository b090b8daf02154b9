package mxrelay

import (
	"context"
	"errors"
	"io"
	"slices"
)

// Sender sends messages that write themselves out, io.WriterTo values,
// through a Client. Its Send and Close methods are those of gomail's Sender
// and SendCloser interfaces (gopkg.in/mail.v2, github.com/go-gomail/gomail),
// so a Sender goes where gomail wants one (gomail.Send(s, m)), and any
// message type with a WriteTo method, such as wneessen/go-mail's Msg, can
// be sent with it. The package does not import gomail. A Sender is safe for
// concurrent use.
type Sender struct {
	c    *Client
	opts []SendOption
}

// NewSender returns a Sender that sends through c, applying opts (priority,
// retries, timeout) to every email.
func NewSender(c *Client, opts ...SendOption) *Sender {
	return &Sender{c: c, opts: opts}
}

// Send sends msg from from to the recipients in to and waits for the
// result, as Client.Send does with a context that never ends: the Client's
// Options.EmailTimeout, or a WithTimeout given to NewSender, bounds the wait.
//
// The message is written out once, by msg.WriteTo on a goroutine of Send's,
// through a pipe into the Client's copy of the body: a temporary file in
// Options.TempDir, read again at each attempt and removed with the result
// (see Email.Body). Send never holds the message whole in memory. A msg
// that is also an io.Reader (*bytes.Buffer, *bytes.Reader, ...) is used as
// Email.Body directly, without WriteTo.
//
// Addresses may come in angle brackets, "<user@example.com>", as
// wneessen/go-mail's GetSender and GetRecipients return them: one pair
// around an address is removed.
//
// Send returns nil when the email was delivered to every recipient, a
// *PartialError (who got it, who did not) when it reached some and not
// others, as gomail fails a send on a refused recipient. Otherwise it
// returns the error of Client.Send: an *EmailError, or an
// error of Enqueue, which wraps msg.WriteTo's error when writing the
// message failed (nothing is sent then).
func (s *Sender) Send(from string, to []string, msg io.WriterTo) error {
	from = unbracket(from)
	to = slices.Clone(to)
	for i := range to {
		to[i] = unbracket(to[i])
	}
	if r, ok := msg.(io.Reader); ok {
		return dropInErr(s.c.Send(context.Background(), Email{From: from, To: to, Body: r}, s.opts...))
	}
	pr, pw := io.Pipe()
	written := make(chan struct{})
	go func() {
		defer close(written)
		_, err := msg.WriteTo(pw)
		pw.CloseWithError(err) // nil: the reader sees io.EOF
	}()
	res, err := s.c.Send(context.Background(), Email{From: from, To: to, Body: pr}, s.opts...)
	// Enqueue reads the pipe to its end unless it refused the email first;
	// then WriteTo is still writing and must be stopped.
	pr.CloseWithError(errNotRead)
	<-written
	return dropInErr(res, err)
}

// unbracket removes one pair of angle brackets around an address.
func unbracket(addr string) string {
	if len(addr) >= 2 && addr[0] == '<' && addr[len(addr)-1] == '>' {
		return addr[1 : len(addr)-1]
	}
	return addr
}

// errNotRead ends a WriteTo whose message Send does not need any more.
var errNotRead = errors.New("mxrelay: the email was refused before its message was read")

// Close closes the Client, waiting for every email it has queued to get its
// result (Client.Close with a context that never ends). Do not call it when
// the Client is shared: close the Client where it was made instead.
func (s *Sender) Close() error {
	return s.c.Close(context.Background())
}
