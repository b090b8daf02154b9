package mxrelay

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/textproto"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"

	"github.com/mxrelay/mxrelay/internal/relayconn"
	"github.com/mxrelay/mxrelay/internal/smtplog"
)

// smtpSession is one SMTP session over one relay channel: greeting, EHLO,
// STARTTLS and AUTH as configured, then one transaction per email, then
// QUIT. It is the one place where emails from the queue meet SMTP.
type smtpSession struct {
	w       *worker
	c       *Client
	id      string
	ch      *relayconn.Channel
	sc      *smtp.Client
	watch   *endWatch
	aborted atomic.Bool
	abort   func() // closes the channel: how a cancelled email is withdrawn
}

// session plans, opens and runs one session.
func (w *worker) session() {
	c := w.c
	sid := "s" + strconv.FormatUint(c.ids.Add(1), 10)
	start := time.Now()
	c.mu.Lock()
	c.stats.SessionsQueued++
	qsize := c.q.len()
	c.mu.Unlock()
	c.events.emit(Event{Type: EventSessionQueued, SessionID: sid, QueueSize: qsize})
	c.setSessionState(SessionProcessing)

	ctx, cancel := context.WithTimeout(c.stopCtx, c.opts.SessionTimeout)
	defer cancel()
	s, err := w.open(ctx, sid)
	if err != nil {
		c.mu.Lock()
		c.stats.SessionsFailed++
		c.mu.Unlock()
		c.events.emit(Event{Type: EventSessionFailed, SessionID: sid, Err: err, Duration: time.Since(start)})
		w.setupFailed(err)
		return
	}
	w.failures = 0
	stopAbort := context.AfterFunc(ctx, s.abort) // cancel by closing
	defer stopAbort()

	c.mu.Lock()
	ready := min(c.q.readyLen(), c.opts.MaxEmailsPerSession)
	c.mu.Unlock()
	c.events.emit(Event{Type: EventSessionStarted, SessionID: sid, EmailCount: ready})

	var results []*Result
	var broken error
	for n := 0; n < c.opts.MaxEmailsPerSession && ctx.Err() == nil && !s.aborted.Load(); n++ {
		em := w.take(s)
		if em == nil {
			break
		}
		broken = s.send(em)
		if res := em.handle.result(); res != nil {
			results = append(results, res)
		}
		if broken != nil {
			break
		}
	}
	if broken == nil && ctx.Err() != nil {
		broken = fmt.Errorf("mxrelay: session %s: %w", sid, context.Cause(ctx))
	}
	if broken == nil && s.aborted.Load() {
		broken = fmt.Errorf("mxrelay: session %s: channel closed to withdraw a cancelled email", sid)
	}
	if broken == nil {
		if err := s.sc.Quit(); err != nil {
			broken = err
		}
	}
	s.ch.Close()
	c.setConnState(StateChannelClosed)
	if w.conn != nil {
		select {
		case <-w.conn.Done():
			w.disconnect(w.conn.Err())
		default:
			c.setConnState(StateAuthenticated)
		}
	}
	d := time.Since(start)
	c.mu.Lock()
	if broken != nil {
		c.stats.SessionsFailed++
	} else {
		c.stats.SessionsProcessed++
		c.sumSess += d
	}
	c.mu.Unlock()
	c.setSessionState(SessionIdle)
	if broken != nil {
		c.log.Debug("mxrelay: session broke", "session", sid, "err", broken)
		c.events.emit(Event{Type: EventSessionFailed, SessionID: sid, Err: broken, Results: results, Duration: d})
	} else {
		c.events.emit(Event{Type: EventSessionCompleted, SessionID: sid, Results: results, Duration: d})
	}
}

// result is the email's result once it is out, else nil.
func (h *Handle) result() *Result {
	select {
	case <-h.done:
		return h.res
	default:
		return nil
	}
}

// take pops the next email for s and marks it in flight.
func (w *worker) take(s *smtpSession) *email {
	c := w.c
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.stopCtx.Err() != nil {
		return nil
	}
	c.q.promote(time.Now())
	em := c.q.pop()
	if em == nil {
		return nil
	}
	em.state = stateEnvelope
	em.attempts++
	em.session = s.id
	em.abort = s.abort
	c.inflight++
	return em
}

// open makes sure the relay connection is up, opens a channel and runs the
// SMTP greeting, EHLO, STARTTLS and AUTH.
func (w *worker) open(ctx context.Context, sid string) (*smtpSession, error) {
	c := w.c
	if w.conn == nil && w.lost {
		// The relay ended the last connection: reconnect with backoff.
		w.lost = false
		delay := c.reconnect.Delay(max(w.failures, 1))
		c.setConnState(StateReconnecting)
		c.events.emit(Event{Type: EventReconnecting, Attempt: w.failures + 1, Duration: delay})
		t := time.NewTimer(delay)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return nil, context.Cause(ctx)
		}
	}
	if err := w.connect(ctx); err != nil {
		w.disconnect(err)
		return nil, err
	}
	c.setConnState(StateChannelOpening)
	ch, err := w.conn.OpenChannel(ctx)
	if err != nil {
		select {
		case <-w.conn.Done():
			w.disconnect(w.conn.Err())
		default:
		}
		return nil, relayErr(err)
	}
	c.setConnState(StateChannelReady)
	s := &smtpSession{w: w, c: c, id: sid, ch: ch}
	s.abort = func() {
		s.aborted.Store(true)
		ch.Close()
	}
	stop := context.AfterFunc(ctx, s.abort)
	defer stop()
	if err := s.handshake(ctx); err != nil {
		ch.Close()
		c.setConnState(StateChannelClosed)
		return nil, s.explain(err)
	}
	return s, nil
}

// handshake runs greeting, EHLO, STARTTLS and AUTH.
func (s *smtpSession) handshake(ctx context.Context) error {
	o := s.c.opts
	var nc net.Conn = smtplog.Wrap(s.ch, s.c.log, "session", s.id)
	switch {
	case o.StartTLS == StartTLSNever:
	case !s.ch.Binary() && o.StartTLS == StartTLSRequired:
		// TLS records are not UTF-8: they cannot travel in JSON strings.
		return fmt.Errorf("%w: STARTTLS needs binary frames and the relay only agreed to JSON text", errPermanentSetup)
	case !s.ch.Binary():
		s.c.log.Warn("mxrelay: STARTTLS skipped: the relay only agreed to JSON text frames, which cannot carry TLS", "session", s.id)
	default:
		tc, err := s.startTLS(ctx, nc)
		if err != nil {
			return err
		}
		nc = tc
	}
	s.watch = &endWatch{Conn: nc, written: s.ch.Written}
	sc := smtp.NewClient(s.watch)
	sc.CommandTimeout = o.CommandTimeout
	sc.SubmissionTimeout = o.CommandTimeout
	if err := sc.Hello(o.LocalName); err != nil {
		return fmt.Errorf("mxrelay: SMTP greeting: %w", err)
	}
	s.sc = sc
	if o.Username == "" {
		return nil
	}
	var a sasl.Client
	switch {
	case sc.SupportsAuth(sasl.Plain):
		a = sasl.NewPlainClient("", o.Username, o.Password)
	case sc.SupportsAuth(sasl.Login):
		a = sasl.NewLoginClient(o.Username, o.Password)
	default:
		return fmt.Errorf("%w: the SMTP server offers neither AUTH PLAIN nor AUTH LOGIN", errPermanentSetup)
	}
	if err := sc.Auth(a); err != nil {
		var se *SMTPError
		if errors.As(err, &se) && se.Code/100 == 5 {
			return fmt.Errorf("%w: SMTP AUTH: %w", errPermanentSetup, err)
		}
		return fmt.Errorf("mxrelay: SMTP AUTH: %w", err)
	}
	return nil
}

// startTLS reads the greeting, says EHLO and runs STARTTLS when the server
// offers it, and returns the connection for go-smtp (whose STARTTLS is not
// exported) with the greeting put back in front, since go-smtp reads one.
func (s *smtpSession) startTLS(ctx context.Context, nc net.Conn) (net.Conn, error) {
	o := s.c.opts
	tp := textproto.NewConn(nc)
	step := func(expect int, cmd string) (string, error) {
		nc.SetDeadline(time.Now().Add(o.CommandTimeout))
		defer nc.SetDeadline(time.Time{})
		if cmd != "" {
			if err := tp.PrintfLine("%s", cmd); err != nil {
				return "", err
			}
		}
		_, msg, err := tp.ReadResponse(expect)
		var te *textproto.Error
		if errors.As(err, &te) {
			return msg, &SMTPError{Code: te.Code, Message: te.Msg}
		}
		return msg, err
	}
	greeting, err := step(220, "")
	if err != nil {
		return nil, fmt.Errorf("mxrelay: SMTP greeting: %w", err)
	}
	ehlo, err := step(250, "EHLO "+o.LocalName)
	if err != nil {
		return nil, fmt.Errorf("mxrelay: SMTP EHLO: %w", err)
	}
	offered := false
	for _, line := range strings.Split(ehlo, "\n")[1:] {
		if f := strings.Fields(line); len(f) > 0 && strings.EqualFold(f[0], "STARTTLS") {
			offered = true
		}
	}
	// Put the greeting back as the server sent it, multi-line included
	// (textproto joined its lines with "\n").
	lines := strings.Split(greeting, "\n")
	var replay string
	for i, l := range lines {
		sep := "-"
		if i == len(lines)-1 {
			sep = " "
		}
		replay += "220" + sep + l + "\r\n"
	}
	if !offered {
		if o.StartTLS == StartTLSRequired {
			return nil, fmt.Errorf("%w: the SMTP server does not offer STARTTLS", errPermanentSetup)
		}
		return &prefixConn{Conn: nc, prefix: []byte(replay)}, nil
	}
	if _, err := step(220, "STARTTLS"); err != nil {
		return nil, fmt.Errorf("mxrelay: STARTTLS: %w", err)
	}
	cfg := o.TLSConfig.Clone()
	if cfg == nil {
		cfg = &tls.Config{}
	}
	if cfg.ServerName == "" {
		// Without a name from the caller, check the certificate against the
		// name the server gave in its greeting.
		cfg.ServerName, _, _ = strings.Cut(lines[0], " ")
	}
	tc := tls.Client(nc, cfg)
	hctx, cancel := context.WithTimeout(ctx, o.CommandTimeout)
	defer cancel()
	if err := tc.HandshakeContext(hctx); err != nil {
		tc.Close()
		if o.StartTLS == StartTLSRequired {
			return nil, fmt.Errorf("%w: STARTTLS handshake: %w", errPermanentSetup, err)
		}
		return nil, fmt.Errorf("mxrelay: STARTTLS handshake: %w", err)
	}
	return &prefixConn{Conn: tc, prefix: []byte(replay)}, nil
}

// prefixConn returns prefix before the bytes of Conn.
type prefixConn struct {
	net.Conn
	prefix []byte
}

func (p *prefixConn) Read(b []byte) (int, error) {
	if len(p.prefix) > 0 {
		n := copy(b, p.prefix)
		p.prefix = p.prefix[n:]
		return n, nil
	}
	return p.Conn.Read(b)
}

// endWatch sits right under go-smtp and remembers the last bytes handed
// on: the outcome of an email is unknown when its end of data, the line
// "." after a CRLF, went out and no reply came. A write counts as handed
// on when it succeeded, or when the channel counted bytes of it as written
// before it failed (with STARTTLS: any ciphertext of it).
type endWatch struct {
	net.Conn
	written func() int64 // bytes the channel has handed to the WebSocket
	tail    [5]byte
	n       int
}

func (w *endWatch) Write(p []byte) (int, error) {
	before := w.written()
	n, err := w.Conn.Write(p)
	sent := p[:n]
	if err != nil && w.written() > before {
		sent = p
	}
	// Only the last five bytes matter: shift the old tail by as many as
	// arrived (at most five) and append the newest, so a large body costs
	// nothing per byte.
	k := min(len(sent), len(w.tail))
	copy(w.tail[:], w.tail[k:])
	copy(w.tail[len(w.tail)-k:], sent[len(sent)-k:])
	w.n += len(sent)
	return n, err
}

// endWritten reports whether the last bytes handed on were "\r\n.\r\n".
func (w *endWatch) endWritten() bool {
	return w.n >= 5 && string(w.tail[:]) == "\r\n.\r\n"
}

// errRead marks an error of the email's body reader.
type errRead struct{ err error }

func (e *errRead) Error() string { return e.err.Error() }
func (e *errRead) Unwrap() error { return e.err }

type bodyReader struct{ r io.Reader }

func (b bodyReader) Read(p []byte) (int, error) {
	n, err := b.r.Read(p)
	if err != nil && err != io.EOF {
		err = &errRead{err}
	}
	return n, err
}

// send runs em's transaction. A non-nil error means the session cannot go
// on (the connection broke, a 421, a failed RSET); em's own fate is decided
// here in every case.
func (s *smtpSession) send(em *email) error {
	c := s.c
	start := time.Now()
	c.mu.Lock()
	pending := em.pending
	canceled := em.canceled
	c.mu.Unlock()
	if canceled != nil {
		c.fail(em, canceled)
		return nil
	}
	r, err := em.body.open()
	if err != nil {
		c.fail(em, err)
		return nil
	}
	if !s.ch.Binary() {
		ok, err := validUTF8(r)
		if err == nil && !ok {
			err = ErrNotUTF8
		}
		if err == nil {
			r, err = em.body.open()
		}
		if err != nil {
			c.fail(em, err)
			return nil
		}
	}
	if err := s.sc.Mail(em.from, &smtp.MailOptions{Size: em.body.size}); err != nil {
		return s.txFailed(em, err)
	}
	var accepted []string
	var temp, perm []RecipientError
	for _, to := range pending {
		err := s.sc.Rcpt(to, nil)
		if err == nil {
			accepted = append(accepted, to)
			continue
		}
		var se *SMTPError
		if !errors.As(err, &se) || se.Code == 421 {
			return s.txFailed(em, err)
		}
		if se.Code/100 == 5 {
			perm = append(perm, RecipientError{Address: to, Err: se})
		} else {
			temp = append(temp, RecipientError{Address: to, Err: se})
		}
	}
	// A 5xx to RCPT is final whatever happens to the rest of this
	// transaction; the others stay pending until the end of data decides.
	c.mu.Lock()
	em.rejected = append(em.rejected, perm...)
	em.pending = append(append([]string(nil), accepted...), addresses(temp)...)
	c.mu.Unlock()
	if len(accepted) == 0 {
		brk := s.reset()
		if len(temp) > 0 {
			s.w.retryOrFail(em, temp[0].Err, temp)
		} else {
			c.fail(em, perm[0].Err)
		}
		return brk
	}
	wc, err := s.sc.Data()
	if err != nil {
		return s.txFailed(em, err)
	}
	if _, err := io.Copy(wc, bodyReader{r}); err != nil {
		// The end of data must never follow a partial body: drop the channel.
		s.ch.Close()
		var re *errRead
		if errors.As(err, &re) {
			c.fail(em, fmt.Errorf("%w: %w", errBody, re.err))
			return fmt.Errorf("mxrelay: session %s: body of %s unreadable", s.id, em.id)
		}
		return s.txFailed(em, err)
	}
	c.mu.Lock()
	canceled = em.canceled
	em.state = stateReply
	em.abort = nil
	c.mu.Unlock()
	if canceled != nil {
		// Cancel came after the body and before the end of data: the channel
		// is closed and the end of data will not be written.
		s.ch.Close()
	}
	resp, err := wc.CloseWithResponse()
	if err != nil {
		var se *SMTPError
		if !errors.As(err, &se) && s.watch.endWritten() {
			err = &UnknownOutcomeError{Err: err}
		}
		return s.txFailed(em, err)
	}
	c.mu.Lock()
	em.accepted = append(em.accepted, accepted...)
	em.pending = addresses(temp)
	em.reply = parseReply(resp.StatusText)
	em.txTime = time.Since(start)
	c.mu.Unlock()
	if len(temp) > 0 && s.w.retryOrFail(em, temp[0].Err, temp) {
		return nil // delivered to some; the others are retried
	}
	c.finish(em, nil)
	return nil
}

func addresses(rs []RecipientError) []string {
	out := make([]string, 0, len(rs))
	for _, r := range rs {
		out = append(out, r.Address)
	}
	return out
}

// parseReply splits go-smtp's status text ("2.0.0 Ok: queued") into a Reply.
func parseReply(text string) Reply {
	r := Reply{Code: 250, Message: text}
	code, rest, ok := strings.Cut(text, " ")
	if !ok {
		return r
	}
	parts := strings.Split(code, ".")
	if len(parts) != 3 {
		return r
	}
	var ec [3]int
	for i, p := range parts {
		n, err := strconv.Atoi(p)
		if err != nil {
			return r
		}
		ec[i] = n
	}
	r.EnhancedCode, r.Message = ec, rest
	return r
}

// explain gives a failure of the channel its package type (RelayError,
// ProtocolError, ErrAuthFailed) and, when the relay ended the channel, why.
func (s *smtpSession) explain(err error) error {
	err = relayErr(err)
	if cause := s.ch.Cause(); cause != nil && !errors.Is(err, cause) {
		err = fmt.Errorf("%w (%v)", err, cause)
	}
	return err
}

// reset sends RSET after a failed transaction; an error means the session
// cannot go on.
func (s *smtpSession) reset() error {
	if err := s.sc.Reset(); err != nil {
		return fmt.Errorf("mxrelay: session %s: RSET: %w", s.id, err)
	}
	return nil
}

// txFailed decides em's fate after its transaction failed with err, and
// says whether the session can go on.
func (s *smtpSession) txFailed(em *email, err error) error {
	c := s.c
	c.mu.Lock()
	canceled := em.canceled
	c.mu.Unlock()
	var se *SMTPError
	isSMTP := errors.As(err, &se)
	var unknown *UnknownOutcomeError
	isUnknown := errors.As(err, &unknown)

	var brk error
	switch {
	case isSMTP && se.Code != 421:
		brk = s.reset()
	case isSMTP:
		brk = fmt.Errorf("mxrelay: session %s: server closing: %w", s.id, err)
	default:
		err = s.explain(err)
		brk = fmt.Errorf("mxrelay: session %s: %w", s.id, err)
		if isUnknown {
			err = &UnknownOutcomeError{Err: unknown.Err}
		}
	}
	switch {
	case isUnknown:
		c.mu.Lock()
		em.unknown = true
		c.mu.Unlock()
		if c.opts.RetryUnknown {
			s.w.retryOrFail(em, err, nil)
		} else {
			c.fail(em, err)
		}
	case canceled != nil && isSMTP:
		// The server answered after the cancel: show both.
		c.fail(em, fmt.Errorf("%w (last attempt: %w)", canceled, err))
	case canceled != nil:
		c.fail(em, canceled) // the error is our own closing of the channel
	case isSMTP && se.Code/100 == 5:
		c.fail(em, err)
	default:
		s.w.retryOrFail(em, err, nil)
	}
	return brk
}

// retryOrFail puts em back in the queue for a retry after a temporary
// failure, or fails it when its retries are used up. It reports whether em
// was queued again. rejected are recipients refused temporarily: when the
// email is not retried they end in Result.Rejected.
func (w *worker) retryOrFail(em *email, cause error, rejected []RecipientError) bool {
	c := w.c
	c.mu.Lock()
	if em.attempts > em.cfg.retries || em.canceled != nil {
		em.rejected = append(em.rejected, rejected...)
		if em.canceled != nil {
			cause = fmt.Errorf("%w (last attempt: %w)", em.canceled, cause)
		}
		c.mu.Unlock()
		c.finish(em, cause) // delivered if some recipient already has it
		return false
	}
	delay := c.retry.Delay(em.attempts)
	now := time.Now()
	em.notBefore = now.Add(delay)
	em.abort = nil
	c.inflight--
	c.q.push(em, now)
	c.stats.EmailsRetried++
	c.mu.Unlock()
	c.kick()
	c.log.Warn("mxrelay: email will be retried", "email", em.id, "attempt", em.attempts, "delay", delay, "err", cause)
	c.events.emit(Event{Type: EventEmailRetrying, SessionID: em.session, EmailID: em.id, Attempt: em.attempts, Duration: delay, Err: cause})
	return true
}
