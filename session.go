package mxrelay

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mxrelay/mxrelay/internal/relayconn"
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
	ctx     context.Context // ends at SessionTimeout, or when Close gives up
	ch      relayconn.Stream
	sc      *smtpc.Client
	aborted atomic.Bool
	abort   func() // ends the channel now: SessionTimeout, or Close giving up
	// draining is set past SessionTimeout or Close's deadline: no end of
	// data is written any more (the email goes in the next session, or is
	// handed back), only the replies of those already out are awaited.
	draining atomic.Bool
	// hurried is set when a caller waits for an email of the session past
	// its end of data (its Send was cancelled): the session takes no more
	// and ends with QUIT, whose 221 confirms it.
	hurried atomic.Bool
	// withdraw closes the channel for a cancelled email the session waits
	// on; its other transactions are classified as for a lost connection.
	withdraw func()
	// idleEnd is set when the far end ended a session that may linger
	// while every email it took had its result: as it lingered, or just
	// before it could (see linger).
	idleEnd bool
}

// linger keeps a session whose emails all have their results open for
// the next email, until Options.Linger has passed since the last one was
// taken, or SessionTimeout is less than CommandTimeout away (then false:
// the session ends with QUIT). It returns true when the queue changed or
// a retry came due, to look for an email. Meanwhile the worker counts as
// starting a session, so that other workers leave the next email to it. A
// session ended by the far end meanwhile (a 421 at the upstream's idle
// timeout, a cut) returns false (see idleEnd).
func (s *smtpSession) linger(ctx context.Context, wake <-chan struct{}, last time.Time) bool {
	c, w := s.c, s.w
	left := c.opts.Linger - time.Since(last)
	if dl, ok := ctx.Deadline(); ok {
		// Over in time for QUIT and its reply: at SessionTimeout a session
		// with nothing in flight is cut, and counted failed.
		left = min(left, time.Until(dl)-c.opts.CommandTimeout)
	}
	if left <= 0 || s.sc.Err() != nil {
		return false
	}
	w.claimNext()
	t := time.NewTimer(left)
	defer t.Stop()
	due, stop := w.due()
	defer stop()
	select {
	case <-wake:
		return true
	case <-due:
		return true
	case <-s.sc.Broken():
	case <-t.C:
	case <-ctx.Done():
	case <-c.draining:
	}
	return false
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
	w.emit(Event{Type: EventSessionQueued, SessionID: sid, QueueSize: qsize})
	w.setSession(SessionProcessing)
	defer func() {
		// A failed set-up leaves FAILED in place.
		if w.sessionState() == SessionProcessing {
			w.setSession(SessionIdle)
		}
	}()

	ctx, cancel := context.WithTimeoutCause(c.stopCtx, c.opts.SessionTimeout,
		fmt.Errorf("session timeout of %v: %w", c.opts.SessionTimeout, context.DeadlineExceeded))
	defer cancel()
	s, err := w.open(ctx, sid)
	if err != nil {
		c.mu.Lock()
		c.stats.SessionsFailed++
		c.mu.Unlock()
		w.emit(Event{Type: EventSessionFailed, SessionID: sid, Err: err, Duration: time.Since(start)})
		w.setupFailed(err)
		return
	}
	// At SessionTimeout or when Close gives up, the session takes no more
	// emails and writes no more ends of data (draining). When emails whose
	// end of data is out have no result yet, their replies may still come
	// (each within CommandTimeout; past Close's deadline, closeGrace in
	// all) before QUIT, whose 221 confirms a 250 from a server that words
	// all its replies alike; cut, each would be unknown. With none, the
	// channel is closed at once (a stalled server).
	var graceMu sync.Mutex
	var grace *time.Timer
	over := false // the session is done: a grace started now would outlive it
	closeGrace := func() {
		// Close gave up: a second in all, whatever the drain had.
		graceMu.Lock()
		defer graceMu.Unlock()
		switch {
		case over:
		case grace == nil:
			grace = time.AfterFunc(c.closeGrace(), s.abort)
		default:
			grace.Reset(c.closeGrace())
		}
	}
	stopAbort := context.AfterFunc(ctx, func() {
		s.draining.Store(true)
		if s.sc.Err() != nil || s.sc.Settling() == 0 {
			s.abort()
			return
		}
		// Past SessionTimeout each reply still has CommandTimeout, the
		// engine's own bound; past Close's deadline, closeGrace.
		if c.stopCtx.Err() != nil {
			closeGrace()
		}
	})
	stopShorten := context.AfterFunc(c.stopCtx, closeGrace)
	defer func() {
		stopAbort()
		stopShorten()
		graceMu.Lock()
		over = true
		if grace != nil {
			grace.Stop()
		}
		graceMu.Unlock()
	}()

	c.mu.Lock()
	ready := min(c.q.readyLen(), c.opts.MaxEmailsPerSession)
	c.mu.Unlock()
	w.emit(Event{Type: EventSessionStarted, SessionID: sid, EmailCount: ready})
	s.sc.Start()
	c.log.Debug("mxrelay: session started", "session", sid, "mode", s.sc.Mode())
	var broken error
	var taken []*email
	var ahead []*email // taken with the window's others, not sent yet
	lastTaken := time.Now()
	var firstTaken time.Time
	n := 0
	for n < c.opts.MaxEmailsPerSession && ctx.Err() == nil && !s.aborted.Load() && !s.hurried.Load() && s.sc.Err() == nil {
		wake := c.wakeChan()
		var em *email
		if len(ahead) == 0 {
			if w.n > c.fb.sessions() {
				break // throttle feedback allows fewer sessions now
			}
			if c.fb.limited() && w.ready() && !w.pace(ctx, s.sc.Flush) {
				break // the rate limit: the next session goes on
			}
			ahead = w.take(s, s.room(c.opts.MaxEmailsPerSession-n))
			if len(ahead) > 1 {
				c.endings(ahead)
			}
		}
		if len(ahead) > 0 {
			em, ahead = ahead[0], ahead[1:]
		}
		if em == nil {
			lingers := c.opts.Linger > 0 && s.sc.SyncConfirms()
			if lingers {
				// This session takes the next email: other workers leave
				// it to it (a result may reach its Send, and the next
				// Send come, before this session is back here).
				w.claimNext()
			}
			if s.sc.Unanswered() == 0 {
				if s.sc.Settling() == 0 {
					if s.linger(ctx, wake, lastTaken) {
						continue
					}
					break
				}
				if !lingers || s.sc.Owed() == 0 {
					break // QUIT confirms what is answered
				}
				// The NOOP's reply is on the way: it may confirm them.
			}
			// Let the transactions in flight finish; emails queued
			// meanwhile join this session. A session that may linger asks
			// for a NOOP after the last end of data, in the same write:
			// its 250, when worded unlike MAIL's and RCPT's, confirms them
			// without QUIT.
			flush := s.sc.Flush
			if lingers {
				flush = s.sc.Sync
			}
			if err := flush(); err != nil {
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
		lastTaken = time.Now()
		if firstTaken.IsZero() {
			firstTaken = lastTaken
		}
		w.win.Store(int32(s.sc.Window()))
		n++
		taken = append(taken, em)
		w.failures = 0 // a session that works ends the failures in a row
		if broken = s.send(em); broken != nil {
			break
		}
	}
	for _, em := range ahead {
		// Taken already: the engine decides them as it can (a broken
		// session, or one that drains, writes no end of data).
		n++
		taken = append(taken, em)
		if err := s.send(em); broken == nil {
			broken = err
		}
	}
	ended := time.Now()
	if w.claim {
		// The session takes no more emails: one that came meanwhile, left
		// to it, is another worker's to start now, not after this
		// session's Wait and QUIT.
		w.unclaim()
		c.kick()
	}
	if broken == nil && c.opts.Linger > 0 && s.sc.Err() != nil && s.sc.Outstanding() == 0 {
		// Decided here, not where linger saw the channel break: a 421
		// right behind the NOOP's 250, or a cut as the last result went
		// out, is read before the session is back in linger.
		s.idleEnd = true
	}
	if broken == nil && s.idleEnd {
		// The upstream (a 421, its idle timeout) or the relay ended the
		// session while it lingered with nothing in flight: every email
		// taken has its result. Not a failure: the next email opens
		// another, without backoff.
		c.log.Debug("mxrelay: lingering session ended by the far end", "session", sid, "err", s.sc.Err())
	} else if broken == nil {
		if err := s.sc.Wait(); err != nil {
			broken = fmt.Errorf("mxrelay: session %s: %w", sid, s.explain(err))
		}
	}
	if broken == nil && s.aborted.Load() {
		broken = fmt.Errorf("mxrelay: session %s: %w", sid, s.explain(errors.New("channel closed (a cancelled email, or the session's end)")))
	}
	// Past SessionTimeout or Close's deadline QUIT still goes out: its 221
	// confirms what waits, and the session ended with QUIT, as it should.
	if broken == nil && !s.idleEnd {
		if err := s.sc.Quit(); err != nil {
			broken = fmt.Errorf("mxrelay: session %s: QUIT: %w", sid, s.explain(err))
			if errors.Is(err, smtpc.ErrProtocol) {
				// Every reply before QUIT's was taken as in step; QUIT's
				// says they were not. Nothing delivered can be taken back:
				// say so where an operator looks.
				c.log.Error("mxrelay: the server's reply to QUIT was out of step with the commands: results of this session may be wrong", "session", sid, "err", err)
				w.emit(Event{Type: EventError, SessionID: sid, Err: broken})
			}
		}
	}
	s.sc.Close(broken) // every email taken has its fate now
	if broken == nil {
		w.window = s.sc.WindowState() // the next session on this link starts there
		if !firstTaken.IsZero() && !s.idleEnd {
			// Its set-up and its end, when it sent nothing: a throttled
			// limiter keeps the tokens of that time for the next session
			// (feedback.setup).
			c.fb.setup(firstTaken.Sub(start) + time.Since(ended))
		}
	}
	var results []*Result
	seen := map[*email]bool{}
	for _, em := range taken {
		if res := em.handle.result(); res != nil && !seen[em] {
			seen[em] = true
			results = append(results, res)
		}
	}
	s.ch.Close()
	w.setConn(StateChannelClosed)
	// The connection goes on, unless it ended meanwhile or none is kept
	// (a tunnel lives for one session).
	w.reap()
	if s.idleEnd {
		w.lost = false // no email waited on it: reconnect at once
	}
	if w.d.Done() != nil {
		w.setConn(StateAuthenticated)
	} else {
		w.setConn(StateDisconnected)
	}
	d := time.Since(start)
	c.mu.Lock()
	if broken != nil {
		c.stats.SessionsFailed++
	} else {
		c.stats.SessionsCompleted++
		c.sumSess += d
	}
	c.mu.Unlock()
	if broken != nil {
		c.log.Debug("mxrelay: session broke", "session", sid, "err", broken)
		w.emit(Event{Type: EventSessionFailed, SessionID: sid, Err: broken, Results: results, Duration: d})
	} else {
		w.emit(Event{Type: EventSessionCompleted, SessionID: sid, Results: results, Duration: d})
	}
	if broken != nil && len(taken) == 0 && c.stopCtx.Err() == nil {
		// It broke before it could take an email (a stray reply after the
		// handshake, a relay that ends every channel at once): a set-up
		// that failed, with backoff, not a loop of sessions.
		w.setupFailed(broken)
	}
}

// room is how many emails the session takes at once, at most most: the
// free places of a pipelined window, whose ends of data the store then
// records in one call (Client.endings); one otherwise, or under a rate
// limit, which paces each email, and at least one (Send waits for a
// free place itself).
func (s *smtpSession) room(most int) int {
	if !s.sc.Windowed() || s.c.fb.limited() {
		return 1
	}
	return max(1, min(most, s.sc.Window()-s.sc.Outstanding()))
}

// hurry asks the session to end with QUIT (see hurried).
func (s *smtpSession) hurry() {
	s.hurried.Store(true)
	s.c.kick()
}

// closeGrace is how long a session past Close's deadline still waits for
// the replies of the ends of data already out, and QUIT's, in all.
func (c *Client) closeGrace() time.Duration { return min(c.opts.CommandTimeout, time.Second) }

// handshake runs greeting, EHLO, STARTTLS and AUTH as the options say
// (smtpc.Client.Handshake), and gives a failure the package's words: one
// that retrying cannot fix is a permanent set-up failure.
func (s *smtpSession) handshake(ctx context.Context) error {
	o := s.c.opts
	s.sc = smtpc.New(smtplog.Wrap(s.ch, s.c.log, "session", s.id), smtpc.Config{
		Timeout:      o.CommandTimeout,
		Window:       o.PipelineWindow,
		FixedWindow:  o.FixedWindow,
		StartWindow:  s.w.window,
		NoPipelining: o.DisablePipelining,
		Fix:          o.FixLineEndings,
		MaxLine:      o.maxLine(),
		UTF8Only:     !s.ch.Binary(),
		Written:      s.ch.Written,
	})
	err := s.sc.Handshake(ctx, smtpc.Policy{
		LocalName:       o.LocalName,
		StartTLS:        tlsPolicy[o.StartTLS],
		TLSConfig:       o.TLSConfig,
		Username:        o.Username,
		Password:        o.Password,
		PasswordInClear: o.PasswordInClear,
		TLSSkipped: func() {
			s.c.log.Warn("mxrelay: STARTTLS skipped: the relay only agreed to JSON text frames, which cannot carry TLS", "session", s.id)
		},
	})
	switch {
	case err == nil:
		return nil
	case errors.Is(err, smtpc.ErrPermanent):
		return fmt.Errorf("%w: SMTP %w", errPermanentSetup, err)
	}
	return fmt.Errorf("mxrelay: SMTP %w", err)
}

// tlsPolicy is the engine's name for each StartTLS policy.
var tlsPolicy = map[StartTLS]smtpc.TLSPolicy{
	StartTLSNever:         smtpc.TLSNever,
	StartTLSOpportunistic: smtpc.TLSIfOffered,
	StartTLSRequired:      smtpc.TLSRequired,
}

// send starts em's transaction. Its fate is decided when its replies are
// in (apply). A non-nil error means the session cannot go on.
func (s *smtpSession) send(em *email) error {
	c := s.c
	start := time.Now()
	c.mu.Lock()
	rcpts := slices.Clone(em.pending)
	canceled := em.canceled
	c.mu.Unlock()
	if canceled != nil {
		c.settle(em, verdict{outcome: outFail, err: canceled, left: pending(rcpts, nil), attempt: true}, 0)
		return nil
	}
	c.fb.sent(start)
	r, err := c.st.Body(context.Background(), em.sid)
	if err != nil {
		err = fmt.Errorf("%w: %w", errBody, err)
	} else {
		c.mu.Lock()
		em.rd = r // closed by settle, when the engine is done with it
		c.mu.Unlock()
	}
	if err == nil && !s.ch.Binary() && !em.body.utf8 {
		err = ErrNotUTF8 // checked at Enqueue, with the line endings
	}
	var tx *smtpc.Tx
	if err == nil {
		tx, err = s.build(em, rcpts)
	}
	if err != nil {
		c.settle(em, verdict{outcome: outFail, err: err, left: pending(rcpts, nil), attempt: true}, 0)
		return nil
	}
	tx.Body = r
	tx.Raw = em.body.raw
	tx.Canceled = func() bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		return em.canceled != nil
	}
	tx.BeforeEnd = func() bool {
		// A draining session writes no new end of data: the email goes in
		// the next session, or is handed back. (With DATA the engine can
		// only stop it by closing; the replies before it are all in by
		// then, the 354 having confirmed them, so the cut loses none.)
		return !s.draining.Load() && c.endHandedOn(em)
	}
	tx.Done = func(res *smtpc.Result) { s.apply(em, rcpts, res, start) }
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

// apply decides em's attempt from the engine's result (decide, a pure
// function) and applies the verdict (Client.settle). It runs once per
// attempt, on the engine's reader or the session's goroutine.
func (s *smtpSession) apply(em *email, rcpts []string, res *smtpc.Result, start time.Time) {
	c := s.c
	th := &c.opts.Throttle
	slow := !th.Disable && slowed(res, th.Texts)
	c.mu.Lock()
	a := attempt{
		rcpts:        rcpts,
		res:          res,
		canceled:     em.canceled,
		closing:      c.stopCtx.Err() != nil,
		draining:     s.draining.Load(),
		lastTry:      em.attempts-em.freeTries > em.cfg.retries,
		retryUnknown: c.opts.RetryUnknown,
		slow:         slow,
	}
	if !th.Disable {
		a.throttleTexts = th.Texts
	}
	a.freeTry = slow && em.freeTries < maxFreeTries
	c.mu.Unlock()
	if res.Err != nil {
		a.broke = s.explain(res.Err)
	}
	now := time.Now()
	switch {
	case slow:
		c.fb.cut(now, start)
	case res.End != nil:
		c.fb.clean(now)
	}
	c.settle(em, decide(a), now.Sub(start))
}

func addresses(rs []RecipientError) []string {
	out := make([]string, 0, len(rs))
	for _, r := range rs {
		out = append(out, r.Address)
	}
	return out
}

// explain gives a failure of the channel its package type (RelayError,
// ProtocolError, ErrAuthFailed, ErrTimeout) and says why the channel
// ended: the session cut it at SessionTimeout, or the relay ended it.
func (s *smtpSession) explain(err error) error {
	if cause := context.Cause(s.ctx); s.aborted.Load() && errors.Is(cause, context.DeadlineExceeded) && !errors.Is(err, cause) {
		err = fmt.Errorf("%w (%w)", err, cause)
	}
	err = classify(err)
	if cause := s.ch.Cause(); cause != nil && !errors.Is(err, cause) {
		err = fmt.Errorf("%w (%v)", err, cause)
	}
	return err
}
