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
	"github.com/mxrelay/mxrelay/internal/spool"
	"github.com/mxrelay/mxrelay/internal/store"
	"github.com/mxrelay/mxrelay/internal/store/memstore"
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

	// st keeps the accepted emails (store.Store): a spool directory
	// (Options.SpoolDir, durable) or memory. Claims of it are owner's,
	// for ownLease; pullMu serialises them with their adoption.
	st        store.Store
	durable   bool
	owner     string
	pullMu    sync.Mutex
	byID      map[string]*email  // the emails accepted and not finished, by store ID
	commitMu  sync.RWMutex       // read-held by an Enqueue committing to the store
	recovered []*Handle          // the emails the store gave back at New
	adopted   map[string]*Handle // in New: the Handles of the emails adopt queued
	// gone are the emails handed back to a durable store while the
	// client runs: kept there for the next Client, so that a claim of
	// one holds it and leaves it (pull). Under pullMu.
	gone map[string]bool

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
	c.owner = "client-" + c.newID()
	c.byID = map[string]*email{}
	c.gone = map[string]bool{}
	if o.SpoolDir != "" {
		so := &spool.Options{SyncAll: o.SpoolSyncAll, Logger: o.Logger}
		if testHookSpool != nil {
			testHookSpool(so)
		}
		sp, err := spool.Open(o.SpoolDir, so)
		if err != nil {
			c.events.close()
			return nil, err
		}
		c.st, c.durable = sp, true
		if testHookStore != nil {
			c.st = testHookStore(c.st)
		}
		if bad := sp.SetAside(); len(bad) > 0 {
			c.log.Error("mxrelay: damaged files in the spool were set aside, not sent", "dir", o.SpoolDir, "files", bad)
		}
		c.adopted = map[string]*Handle{}
		c.pull() // what a previous Client left
		for _, a := range sp.Recovered() {
			if h := c.adopted[a.ID]; h != nil {
				c.recovered = append(c.recovered, h)
			}
		}
		c.adopted = nil
		if n := len(sp.Recovered()); n > 0 {
			c.log.Info("mxrelay: emails recovered from the spool", "count", n, "dir", o.SpoolDir)
		}
	} else {
		// Results are the Handles': the store keeps none.
		// Results are the Handles': the store keeps none. A body that
		// cannot be read twice goes to a file in TempDir, as before the
		// seam, not to the heap.
		c.st = memstore.New(&memstore.Options{ResultRetention: time.Nanosecond, MemoryBody: 1, TempDir: o.TempDir})
		if testHookStore != nil {
			c.st = testHookStore(c.st)
		}
	}
	go c.run()
	return c, nil
}

// ownLease is the lease of the client's claims: the stores it opens are
// the process's own (memory, a spool directory it locks), so that no one
// else can take an email over, and a claim lasts until the client
// releases it.
const ownLease = 100 * 365 * 24 * time.Hour

// pullBatch is how many emails one Claim takes.
const pullBatch = 256

// pull claims the emails that are ready in the store and queues them
// (adopt): what this Client accepted, its retries whose time has come,
// and, at New, what a previous Client left. The client claims every
// ready email: the queue (queue.go) orders what it holds.
func (c *Client) pull() {
	c.pullMu.Lock()
	defer c.pullMu.Unlock()
	for {
		got, _, err := c.st.Claim(context.Background(), c.owner, pullBatch, ownLease)
		if err != nil {
			if !errors.Is(err, store.ErrClosed) {
				c.log.Error("mxrelay: store", "err", err)
			}
			return
		}
		var found []*store.Claimed
		c.mu.Lock()
		now := time.Now()
		for _, cl := range got {
			em := c.byID[cl.ID]
			if c.gone[cl.ID] {
				continue // the next Client's: held, left
			}
			if em == nil {
				found = append(found, cl)
				continue
			}
			em.tok, em.held = cl.Token, true
			if em.state != stateQueued || !em.committed {
				// Finished meanwhile (release finishes it), or its
				// Enqueue has not queued it yet (accepted does).
				continue
			}
			c.q.remove(em)
			em.notBefore = time.Time{}
			c.q.push(em, now)
		}
		c.mu.Unlock()
		for _, cl := range found {
			c.adopt(cl)
		}
		if len(got) > 0 {
			c.kick()
		}
		if len(got) < pullBatch {
			return
		}
	}
}

// testHookSpool and testHookStore, when set by a test, change the
// spool's options before New opens it, and wrap the store New opened.
var (
	testHookSpool func(*spool.Options)
	testHookStore func(store.Store) store.Store
)

// testHookStored, when set by a test, runs in Enqueue once the body is
// read (and written to the store), before the email is accepted.
var testHookStored func()

// adopt queues cl, an email the store holds that this Client did not
// accept (a previous Client's, found in the spool), as it was left. One
// whose end of data may have reached the server is an unknown outcome:
// it fails at once unless RetryUnknown. One whose timeout has passed
// fails at once with it. pullMu is held.
func (c *Client) adopt(cl *store.Claimed) {
	h := cl.Envelope
	em := &email{
		id:        h.ID,
		sid:       h.ID,
		from:      h.From,
		pending:   h.To,
		cfg:       sendConfig{priority: Priority(h.Priority), retries: h.Retries, immediate: h.Immediate},
		qidx:      -1,
		mailOpts:  h.Mail,
		rcptOpts:  h.Rcpt,
		queuedAt:  cl.Queued,
		attempts:  cl.Unanswered,
		unknown:   cl.Unanswered > 0,
		ended:     cl.Unanswered > 0,
		tok:       cl.Token,
		held:      true,
		committed: true,
	}
	if p := cl.Progress; p != nil {
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
		em.cfg.timeout = h.Deadline.Sub(cl.Queued) // as given, for the error
	}
	rules := c.opts.bodyRules(h.Mail)
	em.body = bodyOf(cl.Meta, cl.BodySize, rules)
	var err error
	if em.body == nil {
		// Learnt under other rules, or never: read again under ours.
		em.body, err = c.rescan(em.sid, rules)
	}
	if em.body == nil {
		em.body = &body{size: cl.BodySize}
	}
	c.mu.Lock()
	c.byID[em.sid] = em
	c.mu.Unlock()
	c.queue(em, timeout)
	if c.adopted != nil {
		c.adopted[em.sid] = em.handle
	}
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

// rescan reads the body of email sid from the store under rules.
func (c *Client) rescan(sid string, rules bodyRules) (*body, error) {
	r, err := c.st.Body(context.Background(), sid)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", errBody, err)
	}
	defer r.Close()
	return newBody(nil, r, rules)
}

// Recovered returns the Handles of the emails that New found in
// Options.SpoolDir, accepted by a previous Client and not finished, in
// the order they were accepted: they are sent again (or, if their end of
// data may have reached the server and RetryUnknown is off, failed at
// once as unknown outcomes). They are queued even past MaxQueueSize.
// Empty without a spool.
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
		c.finish(em, OutcomeHandedBack, c.kept(ErrClosed))
	}
	if first {
		c.st.Close()
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
