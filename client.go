package mxrelay

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mxrelay/mxrelay/internal/backoff"
	"github.com/mxrelay/mxrelay/internal/broadcast"
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

	wake     broadcast.Signal   // the queue changed
	room     broadcast.Signal   // a place in the queue freed up
	fb       *feedback          // Options.RateLimit and Throttle: the limiter every session waits for
	claimed  int                // workers starting a session, not yet holding an email
	draining chan struct{}      // closed by Close
	stopCtx  context.Context    // ends when Close gives up waiting
	stop     context.CancelFunc //
	done     chan struct{}      // closed when the worker has returned

	spool     *spool       // nil without Options.SpoolDir
	commitMu  sync.RWMutex // read-held by an Enqueue committing to the spool
	recovered []*Handle    // the emails the spool gave back at New

	workers []*worker // MaxConcurrentSessions of them, made by New
	ids     atomic.Uint64
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
		draining:  make(chan struct{}),
		done:      make(chan struct{}),
	}
	if off := o.insecureTLS(); len(off) > 0 {
		c.log.Warn("mxrelay: TLS certificates are not checked: for tests only", "unchecked", off)
	}
	c.events = newDispatcher(o.OnEvent, o.EventBuffer, o.Logger)
	c.fb = newFeedback(o.RateLimit, o.Throttle, o.MaxConcurrentSessions, o.MaxEmailsPerSession, c.rateChanged)
	c.stopCtx, c.stop = context.WithCancel(context.Background())
	for n := range o.MaxConcurrentSessions {
		c.workers = append(c.workers, c.newWorker(n+1))
	}
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

// testHookStored, when set by a test, runs in Enqueue once the body is
// read (and, with a spool, written), before the email is accepted.
var testHookStored func()

// replay queues the emails a previous Client left in the spool, in the
// order they were accepted. One whose end of data may have reached the
// server is an unknown outcome: it fails at once unless RetryUnknown. One
// whose timeout has passed fails at once with it.
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
				em.rejected = append(em.rejected, recipientError(to, errors.New(p.Rejected[to])))
			}
		}
		var timeout time.Duration
		expired := false
		if !h.Deadline.IsZero() {
			timeout = time.Until(h.Deadline)
			expired = timeout <= 0
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
			c.cancel(em, OutcomeFailed, err)
		case em.unknown && !c.opts.RetryUnknown:
			c.cancel(em, OutcomeUnknown, &UnknownOutcomeError{Err: errors.New("the previous Client stopped after this email's end of data was written")})
		case expired:
			// Failed now: a timer, however short, could lose the race
			// against a session that takes the email first.
			c.cancel(em, OutcomeFailed, timedOut(em))
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

// ConnState is the relay connection's state now (the original client's
// getConnectionState). With several workers (MaxConcurrentSessions > 1)
// each has a connection of its own, and ConnState is the most advanced of
// their states, in the order FAILED < DISCONNECTED < RECONNECTING <
// CHANNEL_CLOSED < CONNECTING < CONNECTED < AUTHENTICATING <
// AUTHENTICATED < CHANNEL_OPENING < CHANNEL_READY: CHANNEL_READY while any
// worker runs a session, FAILED only when every worker failed. Workers
// has each worker's own.
func (c *Client) ConnState() ConnState {
	states := make([]ConnState, len(c.workers))
	for i, w := range c.workers {
		states[i] = w.connState()
	}
	return mostAdvanced(states)
}

// SessionState is the session worker's state now (the original client's
// getSessionState). With several workers it is PROCESSING while any of
// them runs a session, else FAILED if any of them failed to set one up
// and will try again, else IDLE. Workers has each worker's own.
func (c *Client) SessionState() SessionState {
	states := make([]SessionState, len(c.workers))
	for i, w := range c.workers {
		states[i] = w.sessionState()
	}
	return busiest(states)
}

// Workers returns the states of each session worker now, in the order of
// their numbers, MaxConcurrentSessions of them. Connection events say
// which worker they come from (Event.Worker).
func (c *Client) Workers() []WorkerState {
	out := make([]WorkerState, len(c.workers))
	for i, w := range c.workers {
		out[i] = WorkerState{Worker: w.n, ConnState: w.connState(), SessionState: w.sessionState()}
	}
	return out
}

// Stats returns a snapshot of the counters.
func (c *Client) Stats() Stats {
	c.mu.Lock()
	s := c.stats
	s.QueueSize = c.q.len()
	c.q.depth(&s, time.Now())
	s.InFlight = c.inflight
	if s.SessionsCompleted > 0 {
		s.AverageSessionTime = c.sumSess / time.Duration(s.SessionsCompleted)
	}
	if s.EmailsDelivered > 0 {
		s.AverageEmailTime = c.sumEmail / time.Duration(s.EmailsDelivered)
	}
	c.mu.Unlock()
	s.EventsDropped = c.events.droppedCount()
	s.SendRate, s.ThrottleCuts = c.fb.throttled()
	for _, w := range c.workers {
		s.Window = max(s.Window, int(w.win.Load()))
	}
	return s
}

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
			c.finish(em, OutcomeHandedBack, fmt.Errorf("%w: %w", ErrClosed, ErrSpooled))
		} else {
			c.finish(em, OutcomeHandedBack, ErrClosed)
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
