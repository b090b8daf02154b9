package mxrelay

import (
	"context"
	"errors"
	mrand "math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mxrelay/mxrelay/internal/relayconn"
	"github.com/mxrelay/mxrelay/internal/smtpc"
	"github.com/mxrelay/mxrelay/internal/wire"
)

// worker is the state of one session worker's goroutine: it owns a
// dialer, and the relay connection the dialer keeps, and runs SMTP
// sessions on the streams it opens, one at a time.
type worker struct {
	c        *Client
	n        int // its number, from 1
	d        relayconn.Dialer
	failures int               // set-up failures in a row
	lost     bool              // the last connection was lost, not closed by us
	claim    bool              // counted in Client.claimed
	window   smtpc.WindowState // what its last session's adaptive window learned of the link
	// win is its session's window now (the last one's between sessions),
	// for Stats.Window.
	win atomic.Int32
	// Its states: written by its goroutine only (setConn, setSession),
	// read by Client.ConnState, SessionState and Workers.
	conn, sess atomic.Int32
}

// run starts the session workers, MaxConcurrentSessions of them, and
// returns when all have returned.
func (c *Client) run() {
	defer close(c.done)
	var wg sync.WaitGroup
	for _, w := range c.workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer w.disconnect(nil)
			for w.waitForWork() {
				w.batchWait()
				w.awaitRate()
				w.session()
				w.unclaim()
			}
		}()
	}
	wg.Wait()
}

// newWorker returns worker number n, whose dialer reports its steps to it.
func (c *Client) newWorker(n int) *worker {
	w := &worker{c: c, n: n}
	w.d = relayconn.NewDialer(relayconn.Config{
		URL:               c.url,
		APIKey:            c.apiKey,
		HTTPClient:        c.opts.HTTPClient,
		Header:            c.opts.Header,
		Binary:            !c.opts.DisableBinary,
		RawTunnel:         c.opts.RawTunnel,
		DialTimeout:       c.opts.DialTimeout,
		AuthTimeout:       c.opts.AuthTimeout,
		ChannelTimeout:    c.opts.ChannelTimeout,
		HeartbeatInterval: max(c.opts.HeartbeatInterval, 0),
		HeartbeatTimeout:  c.opts.HeartbeatTimeout,
		Logger:            c.log,
		Step:              w.step,
	})
	return w
}

// unclaim ends the worker's claim on a ready email, once its session holds
// one (or ended without). The other workers left that email to this one:
// they look again, since this one may not take it (throttle feedback
// allows fewer sessions than its number now).
func (w *worker) unclaim() {
	if w.claim {
		w.claim = false
		w.c.mu.Lock()
		w.c.claimed--
		w.c.mu.Unlock()
		w.c.kick()
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
	if w.d.Done() != nil {
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
		c.pull()
		c.mu.Lock()
		now := time.Now()
		// Other workers already starting a session will take the first
		// ready emails: start one more only for emails beyond those, and
		// only while throttle feedback allows this many sessions.
		ready := c.q.readyLen() > c.claimed && w.n <= c.fb.sessions()
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
		case <-w.d.Done():
			w.disconnect(w.d.Err())
			idle = nil
		}
	}
}

func (w *worker) readyNow() bool {
	w.c.pull()
	w.c.mu.Lock()
	defer w.c.mu.Unlock()
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
		c.pull()
		c.mu.Lock()
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
	c.pull()
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.q.readyLen() > 0
}

// take pops up to k ready emails for s and marks them in flight.
func (w *worker) take(s *smtpSession, k int) []*email {
	c := w.c
	c.pull()
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.stopCtx.Err() != nil {
		return nil
	}
	var ems []*email
	for len(ems) < k {
		em := c.q.pop()
		if em == nil {
			break
		}
		ems = append(ems, em)
	}
	if len(ems) == 0 {
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
	for _, em := range ems {
		c.taken(em, s.id, withdraw, s.hurry)
	}
	return ems
}

// pace waits until the rate limit lets one more email go, for a session
// whose context is ctx, after flush (what is written goes out now, not
// in a burst with the next). It reports false when the session should
// end rather than wait: its context would run out first, or ended. The
// token is taken only when it returns true.
func (w *worker) pace(ctx context.Context, flush func() error) bool {
	r := w.c.fb.lim.Reserve()
	d := r.Delay()
	if d == 0 {
		return true
	}
	if dl, ok := ctx.Deadline(); ok && time.Until(dl) < d+w.c.opts.CommandTimeout {
		// Not worth holding the session: the worker waits before the
		// next one (awaitRate).
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

// awaitRate holds a new session back until the rate limit has a token
// for its first email, or Close gives up: pace ends a session rather than
// hold it past its timeout, and the next one must not open only to find
// the same wait and end again.
func (w *worker) awaitRate() {
	c := w.c
	if !c.fb.limited() {
		return
	}
	lim := c.fb.lim
	missing := 1 - lim.TokensAt(time.Now())
	if missing <= 0 {
		return
	}
	t := time.NewTimer(time.Duration(missing / float64(lim.Limit()) * float64(time.Second)))
	defer t.Stop()
	select {
	case <-t.C:
	case <-c.stopCtx.Done():
	}
}

// open makes sure the relay connection is up, opens a stream and runs
// the SMTP handshake (greeting, EHLO, STARTTLS and AUTH).
func (w *worker) open(ctx context.Context, sid string) (*smtpSession, error) {
	c := w.c
	if w.d.Done() == nil && w.lost {
		// The relay ended the last connection: reconnect with backoff.
		w.lost = false
		delay := w.retryDelay(w.failures + 1)
		w.setConn(StateReconnecting)
		w.emit(Event{Type: EventReconnecting, Attempt: w.failures + 1, Duration: delay})
		t := time.NewTimer(delay)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return nil, classify(context.Cause(ctx))
		}
	}
	w.reap()
	ch, err := w.d.Open(ctx)
	if err != nil {
		w.reap()
		if cerr := certErr(err); cerr != nil {
			return nil, cerr
		}
		return nil, classify(err)
	}
	w.setConn(StateChannelReady)
	s := &smtpSession{w: w, c: c, id: sid, ctx: ctx, ch: ch}
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
		w.setConn(StateChannelClosed)
		return nil, s.explain(err)
	}
	return s, nil
}

// stepState is the connection state each step of the dialer enters.
var stepState = map[relayconn.Step]ConnState{
	relayconn.StepConnecting:     StateConnecting,
	relayconn.StepConnected:      StateConnected,
	relayconn.StepAuthenticating: StateAuthenticating,
	relayconn.StepAuthenticated:  StateAuthenticated,
	relayconn.StepChannelOpening: StateChannelOpening,
}

// step turns a step of the dialer into the connection's state.
func (w *worker) step(st relayconn.Step) {
	w.setConn(stepState[st])
	if st == relayconn.StepAuthenticated {
		w.c.log.Debug("mxrelay: authenticated", "worker", w.n, "relay", w.c.url, "key", wire.MaskKey(w.c.apiKey))
	}
}

// setConn moves the worker's connection to state s, and announces the
// change, once (see announcement). It is the one writer of w.conn.
func (w *worker) setConn(s ConnState) {
	old := ConnState(w.conn.Swap(int32(s)))
	if old == s {
		return
	}
	w.c.log.Debug("mxrelay: connection state", "worker", w.n, "from", old.String(), "to", s.String())
	w.emit(Event{Type: announcement(old, s), From: old, To: s})
}

func (w *worker) connState() ConnState { return ConnState(w.conn.Load()) }

// setSession sets the worker's session state. It is the one writer of
// w.sess.
func (w *worker) setSession(s SessionState) { w.sess.Store(int32(s)) }

func (w *worker) sessionState() SessionState { return SessionState(w.sess.Load()) }

// emit sends e, an event of this worker's, saying so.
func (w *worker) emit(e Event) {
	e.Worker = w.n
	w.c.events.emit(e)
}

// reap disconnects the kept connection if it has ended, saying why.
func (w *worker) reap() {
	select {
	case <-w.d.Done():
		w.disconnect(w.d.Err())
	default:
	}
}

// disconnect closes the kept connection, if any. cause is why it ended
// when the relay or the network ended it; nil when the client chose to.
func (w *worker) disconnect(cause error) {
	if w.d.Done() == nil {
		return
	}
	w.d.Close()
	if cause != nil {
		// A relay that closed normally (1000) is reconnected to when there
		// is work, without waiting; any other end calls for backoff.
		w.lost = relayconn.RetryFor(cause) != wire.RetryIfWork
		cause = classify(cause)
		var re *RelayError
		if errors.As(cause, &re) && re.Code == statusPolicy && !w.c.opts.Throttle.Disable {
			// The relay's policy: a rate limit, as a rule. Slow down.
			now := time.Now()
			w.c.fb.cut(now, now)
		}
	}
	if w.connState() != StateFailed {
		w.setConn(StateDisconnected)
	}
	w.emit(Event{Type: EventDisconnected, Err: cause})
}

// setupFailed handles a session that could not start: a permanent cause
// fails every waiting email at once; a temporary one is retried with
// backoff until MaxReconnectAttempts, then fails them with a *ConnectError.
func (w *worker) setupFailed(err error) {
	c := w.c
	w.failures++
	if permanentConnErr(err) {
		w.disconnect(nil)
		w.setConn(StateFailed)
		w.setSession(SessionIdle)
		if errors.Is(err, ErrAuthFailed) {
			c.mu.Lock()
			c.authErr = err
			c.mu.Unlock()
		}
		c.log.Error("mxrelay: session set-up failed permanently", "err", err)
		w.emit(Event{Type: EventError, Err: err})
		w.failWaiting(err)
		w.failures = 0
		return
	}
	if w.failures >= c.opts.MaxReconnectAttempts {
		cerr := &ConnectError{Attempts: w.failures, URL: c.url, Err: err}
		w.disconnect(nil)
		w.setConn(StateFailed)
		w.setSession(SessionIdle)
		c.log.Error("mxrelay: giving up on the relay", "attempts", w.failures, "err", err)
		w.emit(Event{Type: EventError, Err: cerr})
		w.failWaiting(cerr)
		w.failures = 0
		return
	}
	delay := w.retryDelay(w.failures)
	w.lost = false // this wait is the backoff: open must not wait again
	w.setSession(SessionFailed)
	w.setConn(StateReconnecting)
	c.log.Warn("mxrelay: session set-up failed, retrying", "attempt", w.failures, "delay", delay, "err", err)
	w.emit(Event{Type: EventReconnecting, Attempt: w.failures, Duration: delay, Err: err})
	t := time.NewTimer(delay)
	defer t.Stop()
	draining := c.draining
	for {
		select {
		case <-t.C:
			return
		case <-c.stopCtx.Done():
			return
		case <-draining:
			// Close: with nothing left to send (a shared store took
			// back what this client held), the wait is over.
			c.mu.Lock()
			empty := c.q.len() == 0
			c.mu.Unlock()
			if empty {
				return
			}
			draining = nil
		}
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

// failWaiting ends every email in the queue with err: the client cannot
// send them (see holding.unsendable).
func (w *worker) failWaiting(err error) {
	c := w.c
	c.mu.Lock()
	left := c.q.all()
	c.mu.Unlock()
	c.freed()
	for _, em := range left {
		c.finish(em, c.hold.unsendable(), err)
	}
}
