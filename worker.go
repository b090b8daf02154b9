package mxrelay

import (
	"context"
	"errors"
	mrand "math/rand/v2"
	"sync"
	"time"

	"github.com/coder/websocket"
	"github.com/mxrelay/mxrelay/internal/relayconn"
	"github.com/mxrelay/mxrelay/internal/wire"
)

// worker is the state of one session worker's goroutine: it owns a relay
// connection and runs SMTP sessions on it, one at a time.
type worker struct {
	c        *Client
	conn     *relayconn.Conn
	failures int  // set-up failures in a row
	lost     bool // the last connection was lost, not closed by us
	claim    bool // counted in Client.claimed
}

// run starts the session workers, MaxConcurrentSessions of them, and
// returns when all have returned.
func (c *Client) run() {
	defer close(c.done)
	var wg sync.WaitGroup
	for range c.opts.MaxConcurrentSessions {
		wg.Add(1)
		go func() {
			defer wg.Done()
			w := &worker{c: c}
			defer w.disconnect(nil)
			for w.waitForWork() {
				w.batchWait()
				w.session()
				w.unclaim()
			}
		}()
	}
	wg.Wait()
}

// unclaim ends the worker's claim on a ready email, once its session holds
// one (or ended without).
func (w *worker) unclaim() {
	if w.claim {
		w.claim = false
		w.c.mu.Lock()
		w.c.claimed--
		w.c.mu.Unlock()
	}
}

// claimNext counts the worker, whose session waits for the next email, as
// starting a session (see unclaim).
func (w *worker) claimNext() {
	if !w.claim {
		w.c.mu.Lock()
		w.c.claimed++
		w.claim = true
		w.c.mu.Unlock()
	}
}

// testHookIdle, when set by a test, runs each time waitForWork has looked
// at the queue and found nothing to start.
var testHookIdle func()

// waitForWork returns true when an email is ready to go, false when the
// client is closing and nothing is left, or Close gave up. While it waits
// it keeps an idle connection for IdleTimeout.
func (w *worker) waitForWork() bool {
	c := w.c
	var idle <-chan time.Time
	if w.conn != nil {
		if c.opts.IdleTimeout < 0 {
			ch := make(chan time.Time)
			close(ch)
			idle = ch
		} else {
			t := time.NewTimer(c.opts.IdleTimeout)
			defer t.Stop()
			idle = t.C
		}
	}
	draining := c.draining // nil once seen closed, so it stops firing
	due := time.NewTimer(time.Hour)
	defer due.Stop()
	for {
		wake := c.wakeChan()
		c.mu.Lock()
		now := time.Now()
		c.q.promote(now)
		// Other workers already starting a session will take the first
		// ready emails: start one more only for emails beyond those.
		ready := c.q.readyLen() > c.claimed
		if ready {
			c.claimed++
			w.claim = true
		}
		next, hasNext := c.q.nextDue()
		c.mu.Unlock()
		if testHookIdle != nil {
			testHookIdle()
		}
		if c.stopCtx.Err() != nil {
			w.unclaim()
			return false
		}
		if ready {
			return true
		}
		select {
		case <-c.draining:
			// Look again: emails accepted since empty was read (before
			// Close, which refuses any more) must still go.
			c.mu.Lock()
			empty := c.q.len() == 0
			c.mu.Unlock()
			if empty {
				return false
			}
			draining = nil
		default:
		}
		var dueC <-chan time.Time
		if hasNext {
			due.Reset(next.Sub(now))
			dueC = due.C
		}
		var dead <-chan struct{}
		if w.conn != nil {
			dead = w.conn.Done()
		}
		select {
		case <-wake:
		case <-draining:
		case <-c.stopCtx.Done():
		case <-dueC:
		case <-idle:
			if ready := w.readyNow(); !ready {
				w.disconnect(nil)
				idle = nil
			}
		case <-dead:
			w.disconnect(w.conn.Err())
			idle = nil
		}
	}
}

func (w *worker) readyNow() bool {
	w.c.mu.Lock()
	defer w.c.mu.Unlock()
	w.c.q.promote(time.Now())
	return w.c.q.readyLen() > 0
}

// due fires when the first email waiting for a retry comes due; stop
// ends it. No kick comes then: a session that waits with the worker's
// claim (see claimNext) looks for it at that time, as the other workers
// leave it to that session.
func (w *worker) due() (due <-chan time.Time, stop func() bool) {
	c := w.c
	c.mu.Lock()
	next, ok := c.q.nextDue()
	c.mu.Unlock()
	if !ok {
		return nil, func() bool { return false }
	}
	t := time.NewTimer(time.Until(next))
	return t.C, t.Stop
}

// batchWait holds a new session back for Options.BatchWait, until enough
// emails wait or one of them is urgent.
func (w *worker) batchWait() {
	c := w.c
	if c.opts.BatchWait <= 0 {
		return
	}
	t := time.NewTimer(c.opts.BatchWait)
	defer t.Stop()
	for {
		wake := c.wakeChan()
		c.mu.Lock()
		c.q.promote(time.Now())
		enough := c.q.readyLen() >= c.opts.MaxEmailsPerSession || c.q.urgent > 0
		c.mu.Unlock()
		if enough {
			return
		}
		select {
		case <-wake:
		case <-t.C:
			return
		case <-c.draining:
			return
		case <-c.stopCtx.Done():
			return
		}
	}
}

// ready reports whether an email is ready to be taken.
func (w *worker) ready() bool {
	c := w.c
	c.mu.Lock()
	defer c.mu.Unlock()
	c.q.promote(time.Now())
	return c.q.readyLen() > 0
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
	c.freed()
	if w.claim {
		w.claim = false
		c.claimed--
	}
	var withdraw func()
	if !s.sc.Windowed() {
		// Lock-step, or DATA: the session would wait for a reply to a
		// transaction nobody wants any more. In a window, the engine
		// withdraws it with RSET before its next chunk.
		withdraw = s.withdraw
	}
	c.taken(em, s.id, withdraw, s.hurry)
	return em
}

// pace waits until the rate limit lets one more email go, for a session
// whose context is ctx, after flush (what is written goes out now, not
// in a burst with the next). It reports false when the session should
// end rather than wait: its context would run out first, or ended. The
// token is taken only when it returns true.
func (w *worker) pace(ctx context.Context, flush func() error) bool {
	l := w.c.limiter
	if l == nil {
		return true
	}
	r := l.Reserve()
	d := r.Delay()
	if d == 0 {
		return true
	}
	if dl, ok := ctx.Deadline(); ok && time.Until(dl) < d+w.c.opts.CommandTimeout {
		// Not worth holding the session: the next one waits instead.
		r.Cancel()
		return false
	}
	if flush() != nil {
		r.Cancel()
		return false
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		r.Cancel()
		return false
	}
}

// open makes sure the relay connection is up, opens a channel and runs the
// SMTP greeting, EHLO, STARTTLS and AUTH.
func (w *worker) open(ctx context.Context, sid string) (*smtpSession, error) {
	c := w.c
	if w.conn == nil && w.lost {
		// The relay ended the last connection: reconnect with backoff.
		w.lost = false
		delay := w.retryDelay(w.failures + 1)
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
		ch.Abort()
	}
	s.withdraw = func() {
		if s.sc.Settling() > 0 {
			// Closing would leave the emails whose end of data is out
			// unknown: the engine withdraws this one at its next step.
			return
		}
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

// connect makes sure an authenticated WebSocket is open.
func (w *worker) connect(ctx context.Context) error {
	c := w.c
	if w.conn != nil {
		select {
		case <-w.conn.Done():
			w.disconnect(w.conn.Err())
		default:
			return nil
		}
	}
	c.setConnState(StateConnecting)
	c.events.emit(Event{Type: EventConnecting})
	dctx, cancel := context.WithTimeout(ctx, c.opts.DialTimeout)
	defer cancel()
	conn, err := relayconn.Dial(dctx, relayconn.Config{
		URL:               c.url,
		APIKey:            c.apiKey,
		HTTPClient:        c.opts.HTTPClient,
		Header:            c.opts.Header,
		Binary:            !c.opts.DisableBinary,
		AuthTimeout:       c.opts.AuthTimeout,
		ChannelTimeout:    c.opts.ChannelTimeout,
		HeartbeatInterval: max(c.opts.HeartbeatInterval, 0),
		HeartbeatTimeout:  c.opts.HeartbeatTimeout,
		Logger:            c.log,
	})
	if err != nil {
		if cerr := certErr(err); cerr != nil {
			return cerr
		}
		return relayErr(err)
	}
	w.conn = conn
	c.setConnState(StateConnected)
	c.events.emit(Event{Type: EventConnected})
	c.setConnState(StateAuthenticating)
	if err := conn.Authenticate(ctx); err != nil {
		return relayErr(err)
	}
	c.setConnState(StateAuthenticated)
	c.events.emit(Event{Type: EventAuthenticated})
	c.log.Debug("mxrelay: authenticated", "relay", c.url, "key", wire.MaskKey(c.apiKey))
	return nil
}

// disconnect closes the WebSocket, if any. cause is why it ended when the
// relay or the network ended it; nil when the client chose to.
func (w *worker) disconnect(cause error) {
	if w.conn == nil {
		return
	}
	w.conn.Close(websocket.StatusNormalClosure, "")
	w.conn = nil
	c := w.c
	if cause != nil {
		cause = relayErr(cause)
		// A relay that closed normally (1000) is reconnected to when there
		// is work, without waiting; any other end calls for backoff.
		var re *RelayError
		w.lost = !errors.As(cause, &re) || wire.RetryFor(websocket.StatusCode(re.Code)) != wire.RetryIfWork
	}
	if ConnState(c.connState.Load()) != StateFailed {
		c.setConnState(StateDisconnected)
	}
	c.events.emit(Event{Type: EventDisconnected, Err: cause})
}

// setupFailed handles a session that could not start: a permanent cause
// fails every waiting email at once; a temporary one is retried with
// backoff until MaxReconnectAttempts, then fails them with a *ConnectError.
func (w *worker) setupFailed(err error) {
	c := w.c
	w.failures++
	if permanentConnErr(err) {
		w.disconnect(nil)
		c.setConnState(StateFailed)
		c.setSessionState(SessionIdle)
		if errors.Is(err, ErrAuthFailed) {
			c.mu.Lock()
			c.authErr = err
			c.mu.Unlock()
		}
		c.log.Error("mxrelay: session set-up failed permanently", "err", err)
		c.events.emit(Event{Type: EventError, Err: err})
		w.failWaiting(err)
		w.failures = 0
		return
	}
	if w.failures >= c.opts.MaxReconnectAttempts {
		cerr := &ConnectError{Attempts: w.failures, URL: c.url, Err: err}
		w.disconnect(nil)
		c.setConnState(StateFailed)
		c.setSessionState(SessionIdle)
		c.log.Error("mxrelay: giving up on the relay", "attempts", w.failures, "err", err)
		c.events.emit(Event{Type: EventError, Err: cerr})
		w.failWaiting(cerr)
		w.failures = 0
		return
	}
	delay := w.retryDelay(w.failures)
	w.lost = false // this wait is the backoff: open must not wait again
	c.setSessionState(SessionFailed)
	c.setConnState(StateReconnecting)
	c.log.Warn("mxrelay: session set-up failed, retrying", "attempt", w.failures, "delay", delay, "err", err)
	c.events.emit(Event{Type: EventReconnecting, Attempt: w.failures, Duration: delay, Err: err})
	t := time.NewTimer(delay)
	defer t.Stop()
	select {
	case <-t.C:
	case <-c.stopCtx.Done():
	}
}

// retryDelay is the wait before set-up attempt n+1 after n failures in a
// row: backoff is for failures in a row, so the first retry (after a
// connection or a channel that worked, or a first failure) goes at once,
// spread by a jitter of up to a tenth of ReconnectInterval so that many
// clients of a relay that restarted do not all come back in the same
// instant; the next ones back off from ReconnectInterval.
func (w *worker) retryDelay(n int) time.Duration {
	if n <= 1 {
		return mrand.N(max(w.c.opts.ReconnectInterval/10, 1))
	}
	return w.c.reconnect.Delay(n - 1)
}

// failWaiting fails every email in the queue with err.
func (w *worker) failWaiting(err error) {
	c := w.c
	c.mu.Lock()
	left := c.q.all()
	c.mu.Unlock()
	c.freed()
	for _, em := range left {
		c.finish(em, err)
	}
}
