package mxrelay

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"golang.org/x/time/rate"
	"log/slog"
	"maps"
	mrand "math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"

	"github.com/mxrelay/mxrelay/internal/backoff"
	"github.com/mxrelay/mxrelay/internal/relayconn"
	"github.com/mxrelay/mxrelay/internal/wire"
)

// Client sends emails through one mxrelay relay. It holds a bounded
// priority queue and one session worker (MaxConcurrentSessions of them, if
// set) that connects when there is work, sends the queued emails in SMTP
// sessions of up to MaxEmailsPerSession, pipelined when the server allows,
// and disconnects when idle. A Client is safe for concurrent use. Close it
// to stop the workers; every accepted email gets exactly one Result.
type Client struct {
	url    string
	apiKey string
	opts   Options
	log    *slog.Logger
	events *dispatcher

	retry     backoff.Policy
	reconnect backoff.Policy

	mu       sync.Mutex
	q        queue
	seq      uint64
	inflight int
	busy     bool  // between EventQueueProcessingStarted and Completed
	reserved int   // places taken by Enqueues reading their body
	closed   bool  // Close was called: nothing more is accepted
	authErr  error // the relay refused the key: permanent
	stats    Stats
	sumSess  time.Duration
	sumEmail time.Duration

	wakeMu   sync.Mutex
	wakeC    chan struct{}      // closed and replaced when the queue changed
	roomC    chan struct{}      // closed and replaced when a place in the queue freed up
	limiter  *rate.Limiter      // Options.RateLimit; nil: none
	claimed  int                // workers starting a session, not yet holding an email
	draining chan struct{}      // closed by Close
	stopCtx  context.Context    // ends when Close gives up waiting
	stop     context.CancelFunc //
	done     chan struct{}      // closed when the worker has returned

	spool     *spool       // nil without Options.SpoolDir
	commitMu  sync.RWMutex // read-held by an Enqueue committing to the spool
	recovered []*Handle    // the emails the spool gave back at New

	connState atomic.Int32
	sessState atomic.Int32
	sessions  atomic.Int32 // sessions running now
	ids       atomic.Uint64
}

// New returns a Client for the relay at relayURL (ws:// or wss://, for
// example "wss://relay.example.com/smtp") authenticating with apiKey. opts
// may be nil. New does no network I/O: the first email makes the client
// connect. With Options.SpoolDir it opens the spool and queues what a
// previous Client left there (see Recovered). Invalid options fail here
// with a clear error.
func New(relayURL, apiKey string, opts *Options) (*Client, error) {
	var o Options
	if opts != nil {
		o = *opts
	}
	if err := o.validate(relayURL, apiKey); err != nil {
		return nil, err
	}
	o = o.withDefaults()
	c := &Client{
		url:       relayURL,
		apiKey:    apiKey,
		opts:      o,
		log:       o.Logger,
		retry:     backoff.Policy{Initial: o.RetryInterval, Max: o.MaxRetryInterval, Jitter: 0.2},
		reconnect: backoff.Policy{Initial: o.ReconnectInterval, Max: o.MaxReconnectInterval, Jitter: 0.2},
		wakeC:     make(chan struct{}),
		roomC:     make(chan struct{}),
		limiter:   o.RateLimit.limiter(),
		draining:  make(chan struct{}),
		done:      make(chan struct{}),
	}
	if off := o.insecureTLS(); len(off) > 0 {
		c.log.Warn("mxrelay: TLS certificates are not checked: for tests only", "unchecked", off)
	}
	c.events = newDispatcher(o.OnEvent, o.EventBuffer, o.Logger)
	c.stopCtx, c.stop = context.WithCancel(context.Background())
	if o.SpoolDir != "" {
		sp, left, err := openSpool(o.SpoolDir, o.SpoolSyncAll)
		if err != nil {
			c.events.close()
			return nil, err
		}
		c.spool = sp
		if len(sp.bad) > 0 {
			c.log.Error("mxrelay: damaged files in the spool were set aside, not sent", "dir", o.SpoolDir, "files", sp.bad)
		}
		c.replay(left)
	}
	go c.run()
	return c, nil
}

func (c *Client) newID() string {
	var b [8]byte
	if _, err := rand.Read(b[:]); err != nil {
		return fmt.Sprintf("m%d", c.ids.Add(1))
	}
	return hex.EncodeToString(b[:])
}

// Enqueue validates e and queues it without waiting for it to be sent. It
// fails with an error matching ErrInvalidEmail, ErrQueueFull, ErrClosed or
// ErrAuthFailed, or, with Options.SpoolDir, with the error that kept the
// email from being written there (a full disk), in which case nothing was
// accepted. A body that cannot be
// read twice is copied to a temporary file first (see Email.Body).
func (c *Client) Enqueue(e Email, opts ...SendOption) (*Handle, error) {
	cfg := sendConfig{priority: PriorityNormal, retries: -1, timeout: c.opts.Timeout}
	for _, o := range opts {
		o(&cfg)
	}
	if !cfg.priority.valid() {
		return nil, fmt.Errorf("%w: unknown priority %d", ErrInvalidEmail, int(cfg.priority))
	}
	if cfg.retries < 0 {
		cfg.retries = c.opts.Retries
	}
	if err := e.validate(); err != nil {
		return nil, err
	}
	if err := c.reserve(); err != nil {
		return nil, err
	}
	em := &email{
		id:       e.ID,
		from:     e.From,
		pending:  append([]string(nil), e.To...),
		cfg:      cfg,
		qidx:     -1,
		mailOpts: e.MailOptions,
		rcptOpts: e.RcptOptions,
		queuedAt: time.Now(),
	}
	if em.id == "" {
		em.id = c.newID()
	}
	var err error
	if c.spool != nil {
		hdr := &spoolHeader{
			ID: em.id, From: e.From, To: e.To, Mail: e.MailOptions, Rcpt: e.RcptOptions,
			Priority: cfg.priority, Retries: cfg.retries, Immediate: cfg.immediate, Queued: em.queuedAt,
		}
		if cfg.timeout > 0 {
			hdr.Deadline = em.queuedAt.Add(cfg.timeout)
		}
		em.body, em.file, err = c.spool.store(hdr, e.Body, c.opts.bodyRules(e.MailOptions))
	} else {
		em.body, err = newBody(e.Body, c.opts.TempDir, c.opts.bodyRules(e.MailOptions))
	}
	if err != nil {
		c.unreserve()
		return nil, err
	}
	if testHookStored != nil {
		testHookStored()
	}
	if em.file != "" {
		// Accepted once its file has its name. Close waits for a commit
		// in progress and none starts after it, so that an email is
		// never both refused and in the spool for the next Client.
		c.commitMu.RLock()
		defer c.commitMu.RUnlock()
		c.mu.Lock()
		err = c.refusal()
		c.mu.Unlock()
		if err == nil {
			err = c.spool.commit(em.body, em.file)
		} else {
			em.body.release()
		}
		if err != nil {
			c.unreserve()
			return nil, err
		}
	}
	if err := c.queue(em, cfg.timeout, true); err != nil {
		em.body.release()
		return nil, err
	}
	c.log.Debug("mxrelay: email queued", "email", em.id, "priority", cfg.priority.String())
	return em.handle, nil
}

// testHookStored, when set by a test, runs in Enqueue once the body is
// read (and, with a spool, written), before the email is accepted.
var testHookStored func()

// queue accepts em, unless the client was closed. reserved says it holds
// a place taken by reserve. timeout, if positive, is how long it may wait
// for its end of data.
func (c *Client) queue(em *email, timeout time.Duration, reserved bool) error {
	em.handle = &Handle{c: c, em: em, done: make(chan struct{})}
	c.mu.Lock()
	if reserved {
		c.reserved--
	}
	// An email in the spool was checked before its file was committed,
	// and is queued whatever happened since: it is accepted.
	if err := c.refusal(); err != nil && em.file == "" {
		c.mu.Unlock()
		return err
	}
	c.seq++
	em.seq = c.seq
	c.q.push(em, time.Now())
	c.stats.EmailsQueued++
	if !c.busy {
		// Under c.mu, so that started and completed alternate.
		c.busy = true
		c.events.emit(Event{Type: EventQueueProcessingStarted, QueueSize: c.q.len()})
	}
	if timeout > 0 {
		em.timer = time.AfterFunc(timeout, func() {
			c.cancel(em, fmt.Errorf("%w: %w: email timeout of %v", ErrCanceled, context.DeadlineExceeded, em.cfg.timeout))
		})
	}
	c.mu.Unlock()
	c.kick()
	return nil
}

// drained emits EventQueueProcessingCompleted when every accepted email
// has its result, once per EventQueueProcessingStarted.
func (c *Client) drained() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.busy && c.stats.EmailsQueued == c.stats.EmailsProcessed+c.stats.EmailsFailed {
		c.busy = false
		c.events.emit(Event{Type: EventQueueProcessingCompleted})
	}
}

// QueueSize is how many emails wait to be sent, including those waiting
// for a retry (the original client's getQueueSize; also in Stats).
func (c *Client) QueueSize() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.q.len()
}

// replay queues the emails a previous Client left in the spool, in the
// order they were accepted. One whose end of data may have reached the
// server is an unknown outcome: it fails at once unless RetryUnknown.
func (c *Client) replay(left []*spooled) {
	for _, sp := range left {
		h := sp.hdr
		em := &email{
			id:       h.ID,
			file:     sp.file,
			from:     h.From,
			pending:  h.To,
			cfg:      sendConfig{priority: h.Priority, retries: h.Retries, immediate: h.Immediate},
			qidx:     -1,
			mailOpts: h.Mail,
			rcptOpts: h.Rcpt,
			queuedAt: h.Queued,
			attempts: sp.ends,
			unknown:  sp.ends > 0,
		}
		if p := sp.progress; p != nil {
			// Resumed where the last answered end of data left it.
			em.attempts += p.Attempts
			em.unknown = em.unknown || p.Unknown
			em.pending, em.accepted = p.Pending, p.Accepted
			for _, to := range slices.Sorted(maps.Keys(p.Rejected)) {
				em.rejected = append(em.rejected, RecipientError{Address: to, Err: errors.New(p.Rejected[to])})
			}
		}
		var timeout time.Duration
		if !h.Deadline.IsZero() {
			timeout = max(time.Until(h.Deadline), time.Nanosecond)
			em.cfg.timeout = h.Deadline.Sub(h.Queued) // as given, for the error
		}
		b, err := sp.body(c.opts.bodyRules(h.Mail))
		if b == nil {
			b = &body{file: sp.f}
		}
		em.body = b
		c.queue(em, timeout, false) // not closed yet: cannot fail
		c.recovered = append(c.recovered, em.handle)
		switch {
		case err != nil:
			c.cancel(em, err)
		case em.unknown && !c.opts.RetryUnknown:
			c.cancel(em, &UnknownOutcomeError{Err: errors.New("the previous Client stopped after this email's end of data was written")})
		}
	}
	if len(left) > 0 {
		c.log.Info("mxrelay: emails recovered from the spool", "count", len(left), "dir", c.opts.SpoolDir)
	}
}

// Recovered returns the Handles of the emails that New found in
// Options.SpoolDir, accepted by a previous Client and not finished: they
// are sent again (or, if their end of data may have reached the server
// and RetryUnknown is off, failed at once as unknown outcomes). They are
// queued even past MaxQueueSize. Empty without a spool.
func (c *Client) Recovered() []*Handle { return slices.Clone(c.recovered) }

// refusal is why no email can be accepted now, or nil. c.mu is held.
func (c *Client) refusal() error {
	if c.closed {
		return ErrClosed
	}
	return c.authErr
}

// reserve takes a place in the queue for an email being read, or says
// why there is none.
func (c *Client) reserve() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := c.refusal(); err != nil {
		return err
	}
	if c.q.len()+c.reserved >= c.opts.MaxQueueSize {
		return ErrQueueFull
	}
	c.reserved++
	return nil
}

func (c *Client) unreserve() {
	c.mu.Lock()
	c.reserved--
	c.mu.Unlock()
	c.freed()
}

// Send queues e and blocks until its result. It returns the Result and, when
// the email was not delivered, an *EmailError (also in Result.Err); or, with
// a nil Result, the error of Enqueue. When ctx ends first, the email is
// withdrawn as by Handle.Cancel: Send returns at once if its end of data was
// not sent yet (the error matches ErrCanceled and ctx's error), and
// otherwise when its reply is in and confirmed (see the README's
// Guarantees): its reply decides. Replies come in the order of the window,
// so a server that answers slowly the emails already in flight delays it
// by as much; and when the server words all its replies alike, the reply
// that confirms it is QUIT's, after every email in flight: the session
// then takes no more emails and ends. A server silent for CommandTimeout
// breaks the session, and the outcome is unknown.
func (c *Client) Send(ctx context.Context, e Email, opts ...SendOption) (*Result, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	h, err := c.Enqueue(e, opts...)
	if err != nil {
		return nil, err
	}
	stop := context.AfterFunc(ctx, func() {
		c.cancel(h.em, fmt.Errorf("%w: %w", ErrCanceled, context.Cause(ctx)))
	})
	defer stop()
	<-h.done
	return h.res, h.res.Err
}

// kick wakes the workers.
func (c *Client) kick() {
	c.wakeMu.Lock()
	close(c.wakeC)
	c.wakeC = make(chan struct{})
	c.wakeMu.Unlock()
}

// wakeChan is closed by the next kick. Take it before looking at the
// queue, so that a change in between is not missed.
func (c *Client) wakeChan() <-chan struct{} {
	c.wakeMu.Lock()
	defer c.wakeMu.Unlock()
	return c.wakeC
}

// ConnState is the relay connection's state now; with several workers,
// the latest change of any of their connections.
func (c *Client) ConnState() ConnState { return ConnState(c.connState.Load()) }

// SessionState is the session worker's state now; with several workers,
// PROCESSING while any of them runs a session.
func (c *Client) SessionState() SessionState { return SessionState(c.sessState.Load()) }

// Stats returns a snapshot of the counters.
func (c *Client) Stats() Stats {
	c.mu.Lock()
	s := c.stats
	s.QueueSize = c.q.len()
	c.q.depth(&s, time.Now())
	s.InFlight = c.inflight
	if s.SessionsProcessed > 0 {
		s.AverageSessionTime = c.sumSess / time.Duration(s.SessionsProcessed)
	}
	if s.EmailsProcessed > 0 {
		s.AverageEmailTime = c.sumEmail / time.Duration(s.EmailsProcessed)
	}
	c.mu.Unlock()
	s.EventsDropped = c.events.droppedCount()
	return s
}

func (c *Client) setConnState(s ConnState) {
	old := ConnState(c.connState.Swap(int32(s)))
	if old != s {
		c.log.Debug("mxrelay: connection state", "from", old.String(), "to", s.String())
		c.events.emit(Event{Type: EventStateChanged, From: old, To: s})
	}
}

func (c *Client) setSessionState(s SessionState) { c.sessState.Store(int32(s)) }

// Close stops accepting emails and keeps sending what is queued until ctx
// ends; then the session in progress takes no more emails and writes no
// more ends of data, and if emails whose end of data is out have no
// result yet, their replies get up to a second more (QUIT's 221, after
// them, confirms the 250s of a server that words all its replies alike);
// every email
// left fails with ErrClosed (its Result says so, so the caller can
// resubmit it). It sends QUIT, closes the channel and the WebSocket, and returns when no
// goroutine of the client runs, except that it waits for an OnEvent call in
// progress. It returns ctx's error if emails were handed back unsent. Safe
// to call more than once.
func (c *Client) Close(ctx context.Context) error {
	c.commitMu.Lock() // no Enqueue between its check and its queueing
	c.mu.Lock()
	first := !c.closed
	if first {
		c.closed = true
		close(c.draining)
	}
	c.mu.Unlock()
	c.commitMu.Unlock()
	c.freed() // EnqueueWait callers get ErrClosed
	c.kick()
	var err error
	select {
	case <-c.done:
	case <-ctx.Done():
		err = ctx.Err()
		c.stop()
		<-c.done
	}
	c.stop()
	c.mu.Lock()
	left := c.q.all()
	c.mu.Unlock()
	for _, em := range left {
		if em.file != "" {
			c.finish(em, fmt.Errorf("%w: %w", ErrClosed, ErrSpooled))
		} else {
			c.finish(em, ErrClosed)
		}
	}
	if c.spool != nil && first {
		c.spool.close()
	}
	c.events.close()
	if c.opts.InsecureSkipVerify {
		c.opts.HTTPClient.CloseIdleConnections() // the client made it
	}
	if len(left) > 0 && err == nil {
		err = ErrClosed
	}
	return err
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

// worker is the state of one session worker's goroutine: it owns a relay
// connection and runs SMTP sessions on it, one at a time.
type worker struct {
	c        *Client
	conn     *relayconn.Conn
	failures int  // set-up failures in a row
	lost     bool // the last connection was lost, not closed by us
	claim    bool // counted in Client.claimed
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
