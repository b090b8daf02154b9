package mxrelay

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/emersion/go-sasl"

	"github.com/mxrelay/mxrelay/internal/smtpc"
	"github.com/mxrelay/mxrelay/internal/smtplog"
)

// smtpSession is one SMTP session over one relay channel: greeting, EHLO,
// STARTTLS and AUTH as configured, then one transaction per email, then
// QUIT. It is the one place where emails from the queue meet SMTP.
type smtpSession struct {
	w       *worker
	c       *Client
	id      string
	ch      stream
	sc      *smtpc.Client
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
	c.sessions.Add(1)
	defer func() {
		// With MaxConcurrentSessions > 1 the state is PROCESSING while any
		// session runs. A failed set-up leaves FAILED in place.
		if c.sessions.Add(-1) == 0 {
			c.sessState.CompareAndSwap(int32(SessionProcessing), int32(SessionIdle))
		}
	}()

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
	s.sc.Start()
	c.log.Debug("mxrelay: session started", "session", sid, "mode", s.sc.Mode())
	var broken error
	var taken []*email
	for n := 0; n < c.opts.MaxEmailsPerSession && ctx.Err() == nil && !s.aborted.Load() && s.sc.Err() == nil; {
		wake := c.wakeChan()
		em := w.take(s)
		if em == nil {
			if s.sc.Outstanding() == 0 {
				break
			}
			// Let the transactions in flight finish; emails queued
			// meanwhile join this session.
			if err := s.sc.Flush(); err != nil {
				break
			}
			select {
			case <-s.sc.Progress():
			case <-wake:
			case <-s.sc.Broken():
			case <-ctx.Done():
			}
			continue
		}
		n++
		taken = append(taken, em)
		if broken = s.send(em); broken != nil {
			break
		}
	}
	if broken == nil {
		if err := s.sc.Wait(); err != nil {
			broken = fmt.Errorf("mxrelay: session %s: %w", sid, s.explain(err))
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
	s.sc.Close(broken) // every email taken has its fate now
	var results []*Result
	seen := map[*email]bool{}
	for _, em := range taken {
		if res := em.handle.result(); res != nil && !seen[em] {
			seen[em] = true
			results = append(results, res)
		}
	}
	s.ch.Close()
	c.setConnState(StateChannelClosed)
	switch {
	case c.opts.RawTunnel:
		c.setConnState(StateDisconnected) // a tunnel lives for one session
	case w.conn != nil:
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
	if w.claim {
		w.claim = false
		c.claimed--
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
	var ch stream
	if c.opts.RawTunnel {
		c.setConnState(StateConnecting)
		c.events.emit(Event{Type: EventConnecting})
		t, err := c.dialTunnel(ctx)
		if err != nil {
			c.setConnState(StateDisconnected)
			return nil, err
		}
		c.events.emit(Event{Type: EventConnected})
		ch = t
	} else {
		if err := w.connect(ctx); err != nil {
			w.disconnect(err)
			return nil, err
		}
		c.setConnState(StateChannelOpening)
		rc, err := w.conn.OpenChannel(ctx)
		if err != nil {
			select {
			case <-w.conn.Done():
				w.disconnect(w.conn.Err())
			default:
			}
			return nil, relayErr(err)
		}
		ch = rc
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
		s.sc.Close(err)
		c.setConnState(StateChannelClosed)
		return nil, s.explain(err)
	}
	return s, nil
}

// handshake runs greeting, EHLO, STARTTLS and AUTH.
func (s *smtpSession) handshake(ctx context.Context) error {
	o := s.c.opts
	s.sc = smtpc.New(smtplog.Wrap(s.ch, s.c.log, "session", s.id), smtpc.Config{
		Timeout:      o.CommandTimeout,
		Window:       o.PipelineWindow,
		NoPipelining: o.DisablePipelining,
		Fix:          o.FixLineEndings,
		MaxLine:      o.maxLine(),
		Written:      s.ch.Written,
	})
	sc := s.sc
	if err := sc.Greet(); err != nil {
		return fmt.Errorf("mxrelay: SMTP %w", err)
	}
	if err := sc.Hello(o.LocalName); err != nil {
		return fmt.Errorf("mxrelay: SMTP %w", err)
	}
	secure := false
	switch {
	case o.StartTLS == StartTLSNever:
	case !s.ch.Binary() && o.StartTLS == StartTLSRequired:
		// TLS records are not UTF-8: they cannot travel in JSON strings.
		return fmt.Errorf("%w: STARTTLS needs binary frames and the relay only agreed to JSON text", errPermanentSetup)
	case !s.ch.Binary():
		s.c.log.Warn("mxrelay: STARTTLS skipped: the relay only agreed to JSON text frames, which cannot carry TLS", "session", s.id)
	case !sc.Has("STARTTLS") && o.StartTLS == StartTLSRequired:
		return fmt.Errorf("%w: the SMTP server does not offer STARTTLS", errPermanentSetup)
	case !sc.Has("STARTTLS"):
	default:
		cfg := o.TLSConfig.Clone()
		if cfg == nil {
			cfg = &tls.Config{}
		}
		if err := sc.StartTLS(ctx, cfg, o.LocalName); err != nil {
			return startTLSErr(err)
		}
		secure = true
	}
	if o.Username == "" {
		return nil
	}
	if !secure && !o.PasswordInClear {
		return fmt.Errorf("%w: STARTTLS did not run, and SMTP AUTH would send the password in clear (Options.PasswordInClear allows it)", errPermanentSetup)
	}
	mechs, _ := sc.Ext("AUTH")
	var a sasl.Client
	switch {
	case hasWord(mechs, sasl.Plain):
		a = sasl.NewPlainClient("", o.Username, o.Password)
	case hasWord(mechs, sasl.Login):
		a = sasl.NewLoginClient(o.Username, o.Password)
	default:
		return fmt.Errorf("%w: the SMTP server offers neither AUTH PLAIN nor AUTH LOGIN", errPermanentSetup)
	}
	if err := sc.Auth(a); err != nil {
		var se *SMTPError
		if errors.As(err, &se) && se.Code/100 == 5 {
			return fmt.Errorf("%w: SMTP %w", errPermanentSetup, err)
		}
		return fmt.Errorf("mxrelay: SMTP %w", err)
	}
	return nil
}

// startTLSErr classifies a failed STARTTLS: a certificate that does not
// verify, or a 5xx to STARTTLS, is permanent (it will not fix itself); a
// cut, a timeout, a 4xx or a broken handshake is temporary, as Postfix
// defers it.
func startTLSErr(err error) error {
	var cve *tls.CertificateVerificationError
	var se *SMTPError
	if errors.As(err, &cve) || errors.As(err, &se) && se.Code/100 == 5 {
		return fmt.Errorf("%w: %w", errPermanentSetup, err)
	}
	return fmt.Errorf("mxrelay: %w", err)
}

func hasWord(list, w string) bool {
	for _, f := range strings.Fields(list) {
		if strings.EqualFold(f, w) {
			return true
		}
	}
	return false
}

// send starts em's transaction. Its fate is decided by decide, when the
// replies are in. A non-nil error means the session cannot go on.
func (s *smtpSession) send(em *email) error {
	c := s.c
	start := time.Now()
	c.mu.Lock()
	rcpts := append([]string(nil), em.pending...)
	canceled := em.canceled
	if s.sc.Windowed() {
		// Nothing waits for a reply inside a pipelined BDAT transaction: a
		// cancel is seen before the next chunk and withdrawn with RSET,
		// and the channel stays open for the others in the window.
		em.abort = nil
	}
	c.mu.Unlock()
	if canceled != nil {
		c.fail(em, canceled)
		return nil
	}
	r, err := em.body.open()
	if err == nil && !s.ch.Binary() && !em.body.utf8 {
		err = ErrNotUTF8 // checked at Enqueue, with the line endings
	}
	var tx *smtpc.Tx
	if err == nil {
		tx, err = s.build(em, rcpts)
	}
	if err != nil {
		c.fail(em, err)
		return nil
	}
	tx.Body = r
	tx.Canceled = func() bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		return em.canceled != nil
	}
	tx.BeforeEnd = func() bool {
		c.mu.Lock()
		if em.canceled != nil {
			c.mu.Unlock()
			return false
		}
		em.state = stateReply
		em.abort = nil
		c.mu.Unlock()
		if em.file != "" {
			// On disk before the end of data is on the wire: a restart
			// after a crash knows the server may have the email.
			if err := c.spool.ended(em.file); err != nil {
				// Not sent: a restart could not tell that the server
				// may have it. Handed back like Close does.
				c.mu.Lock()
				em.state = stateEnvelope
				em.canceled = fmt.Errorf("%w: %w", ErrSpooled, err)
				c.mu.Unlock()
				return false
			}
			c.mu.Lock()
			em.ended = true
			c.mu.Unlock()
		}
		return true
	}
	tx.Done = func(res *smtpc.Result) { s.decide(em, rcpts, res, start) }
	if err := s.sc.Send(tx); err != nil {
		return fmt.Errorf("mxrelay: session %s: %w", s.id, s.explain(err))
	}
	return nil
}

// build makes em's MAIL and RCPT commands with the parameters the server
// offers; an error is the email's (a parameter the server cannot take).
func (s *smtpSession) build(em *email, rcpts []string) (*smtpc.Tx, error) {
	mail, err := s.sc.MailCommand(em.from, em.mailOpts, em.body.wire, rcpts)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalidEmail, err)
	}
	tx := &smtpc.Tx{Mail: mail, Rcpts: make([]string, len(rcpts))}
	for i, to := range rcpts {
		if tx.Rcpts[i], err = s.sc.RcptCommand(to, em.rcptOpts[to]); err != nil {
			return nil, fmt.Errorf("%w: recipient %s: %w", ErrInvalidEmail, to, err)
		}
	}
	return tx, nil
}

// decide gives em its fate from the result of its transaction: delivered
// only on a 2xx to its own end of data, and per recipient by the replies
// to its RCPTs.
func (s *smtpSession) decide(em *email, rcpts []string, res *smtpc.Result, start time.Time) {
	c := s.c
	var accepted []string
	var temp, perm []RecipientError
	var pending []string
	for i, to := range rcpts {
		var e *SMTPError
		if res.Mail == nil && i < res.RcptAnswered {
			e = res.Rcpt[i]
		}
		switch {
		case res.Mail != nil || i >= res.RcptAnswered:
			pending = append(pending, to) // not decided by this attempt
		case e == nil:
			accepted = append(accepted, to)
			pending = append(pending, to)
		case e.Code/100 == 5:
			perm = append(perm, RecipientError{Address: to, Err: e})
		default:
			temp = append(temp, RecipientError{Address: to, Err: e})
			pending = append(pending, to)
		}
	}
	// A 5xx to RCPT is final whatever happens to the rest of this
	// transaction; the others stay pending until the end of data decides.
	c.mu.Lock()
	em.rejected = append(em.rejected, perm...)
	em.pending = pending
	canceled := em.canceled
	c.mu.Unlock()

	delivered := res.Err == nil && res.Mail == nil && len(accepted) > 0 &&
		res.End != nil && res.End.Code/100 == 2
	switch {
	case res.Mail != nil && res.Mail.Code/100 == 5:
		// Refused at MAIL: final for this email, whatever happened to the
		// connection after.
		s.refused(em, res.Mail, canceled)
	case delivered:
		c.mu.Lock()
		em.accepted = append(em.accepted, accepted...)
		em.pending = addresses(temp)
		em.reply = Reply{Code: res.End.Code, EnhancedCode: res.End.Enhanced, Message: res.End.Message}
		em.txTime = time.Since(start)
		c.mu.Unlock()
		if len(temp) > 0 && s.w.retryOrFail(em, temp[0].Err, temp) {
			return // delivered to some; the others are retried
		}
		c.finish(em, nil)
	case res.Err != nil:
		s.incomplete(em, res, canceled)
	case len(pending) == 0 && len(perm) > 0:
		c.fail(em, perm[0].Err)
	case res.Mail != nil:
		s.refused(em, res.Mail, canceled)
	case len(accepted) == 0 && len(temp) > 0:
		s.w.retryOrFail(em, temp[0].Err, temp)
	case len(accepted) == 0:
		c.fail(em, &ProtocolError{Err: errors.New("SMTP: no reply to RCPT")})
	case res.DataCmd != nil:
		s.refused(em, res.DataCmd, canceled)
	case res.End != nil:
		s.refused(em, res.End.Err(), canceled)
	default:
		s.w.retryOrFail(em, &ProtocolError{Err: errors.New("SMTP: no reply to the end of data")}, nil)
	}
}

// refused decides em's fate after the server refused its transaction.
func (s *smtpSession) refused(em *email, se *SMTPError, canceled error) {
	switch {
	case canceled != nil:
		// The server answered after the cancel: show both.
		s.c.fail(em, fmt.Errorf("%w (last attempt: %w)", canceled, se))
	case se.Code/100 == 5:
		s.c.fail(em, se)
	default:
		s.w.retryOrFail(em, se, nil)
	}
}

// incomplete decides em's fate when its transaction did not run to its
// end: withdrawn, a bad body, an unknown outcome, or a broken connection.
func (s *smtpSession) incomplete(em *email, res *smtpc.Result, canceled error) {
	c := s.c
	c.mu.Lock()
	pending := em.pending
	var rejected error
	if len(em.rejected) > 0 {
		rejected = em.rejected[0].Err
	}
	c.mu.Unlock()
	var se *SMTPError
	switch {
	case errors.Is(res.Err, smtpc.ErrWithdrawn) && canceled != nil:
		c.fail(em, canceled)
	case res.Body != nil:
		c.fail(em, bodyErr(res.Body))
	case len(pending) == 0 && rejected != nil:
		c.fail(em, rejected)
	case res.Unknown:
		err := &UnknownOutcomeError{Err: s.explain(res.Err)}
		c.mu.Lock()
		em.unknown = true
		c.mu.Unlock()
		if c.opts.RetryUnknown {
			s.w.retryOrFail(em, err, nil)
		} else {
			c.fail(em, err)
		}
	case canceled != nil:
		c.fail(em, canceled) // the error is our own closing of the channel
	case errors.As(res.Err, &se):
		s.refused(em, se, nil)
	default:
		s.w.retryOrFail(em, s.explain(res.Err), nil)
	}
}

// recordProgress writes em's progress to the spool's journal before it
// goes back to the queue, if an end of data was written since the last
// record: a restart then resumes from it instead of taking that end of
// data for an unknown outcome. Nothing else touches em meanwhile: it is
// out of the queue.
func (w *worker) recordProgress(em *email) {
	c := w.c
	c.mu.Lock()
	if !em.ended || em.attempts > em.cfg.retries || em.canceled != nil {
		c.mu.Unlock()
		return // nothing new, or it is about to be finished
	}
	p := &spoolProgress{File: em.file, Attempts: em.attempts, Unknown: em.unknown,
		Accepted: slices.Clone(em.accepted), Pending: slices.Clone(em.pending),
		Rejected: rejectedText(em.rejected)}
	c.mu.Unlock()
	if err := c.spool.progressed(p); err != nil {
		// The marker stays unanswered: a restart takes the email for an
		// unknown outcome, which is safe.
		c.log.Error("mxrelay: spool journal", "email", em.id, "err", err)
		return
	}
	c.mu.Lock()
	em.ended = false
	c.mu.Unlock()
}

func addresses(rs []RecipientError) []string {
	out := make([]string, 0, len(rs))
	for _, r := range rs {
		out = append(out, r.Address)
	}
	return out
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

// retryOrFail puts em back in the queue for a retry after a temporary
// failure, or fails it when its retries are used up. It reports whether em
// was queued again. rejected are recipients refused temporarily: when the
// email is not retried they end in Result.Rejected.
func (w *worker) retryOrFail(em *email, cause error, rejected []RecipientError) bool {
	c := w.c
	if em.file != "" {
		w.recordProgress(em)
	}
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
	// Read before the email is back in the queue: another worker may take
	// it at once.
	attempt, session := em.attempts, em.session
	c.q.push(em, now)
	c.stats.EmailsRetried++
	c.mu.Unlock()
	c.kick()
	c.log.Warn("mxrelay: email will be retried", "email", em.id, "attempt", attempt, "delay", delay, "err", cause)
	c.events.emit(Event{Type: EventEmailRetrying, SessionID: session, EmailID: em.id, Attempt: attempt, Duration: delay, Err: cause})
	return true
}
