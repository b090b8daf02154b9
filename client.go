package mxrelay

import (
	"context"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mxrelay/mxrelay/internal/backoff"
	"github.com/mxrelay/mxrelay/internal/broadcast"
	"github.com/mxrelay/mxrelay/internal/spool"
	"github.com/mxrelay/mxrelay/internal/store"
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

	// st keeps the accepted emails (store.Store): memory, a spool
	// directory (Options.SpoolDir, durable) or a store shared with other
	// processes (Options.Store); hold says how the client holds what it
	// claims there (store.go). Claims are owner's; pullMu serialises them
	// with their adoption.
	st      store.Store
	hold    holding
	spool   *spool.Store // st, when it is the spool
	durable bool
	// keepsResults: the store keeps results, for Client.Result (all but
	// the memory store without ResultRetention).
	keepsResults bool
	owner        string
	pullMu       sync.Mutex
	dry          dryState           // what the last short claim said (under mu)
	dried        broadcast.Signal   // a claim came back short (listen)
	byID         map[string]*email  // the emails held or kept here, not finished, by store ID
	commitMu     sync.RWMutex       // read-held by an Enqueue committing to the store
	recovered    []*Handle          // the emails the store gave back at New
	adopted      map[string]*Handle // in New: the Handles of the emails adopt queued
	// gone are the emails handed back to a durable store of the client's
	// own while it runs: kept there for the next Client, so that a claim
	// of one holds it and leaves it (pull). Under pullMu.
	gone map[string]bool
	// bg runs listen and renew for a shared store, until bgCtx ends.
	bg     sync.WaitGroup
	bgCtx  context.Context
	bgStop context.CancelFunc
	// watched are the Handles waiting for the store's result of an email
	// this client does not hold (follow), by store ID; each has a watcher
	// goroutine, counted in watchers, until watchCtx ends at Close. After
	// that (followed), a Handle that would follow is handed back at once.
	watched   map[string]*Handle
	watchers  sync.WaitGroup
	watchCtx  context.Context
	watchStop context.CancelFunc
	followed  bool

	workers []*worker // MaxConcurrentSessions of them, made by New
	ids     atomic.Uint64
}

// New returns a Client for the relay at relayURL (ws:// or wss://, for
// example "wss://relay.example.com/smtp") authenticating with apiKey. opts
// may be nil. New does no network I/O: the first email makes the client
// connect. With Options.SpoolDir it opens the spool and queues what a
// previous Client left there (see Recovered). With Options.Store it
// claims from that store as its workers need (see Options.Store). Invalid
// options fail here with a clear error.
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
	c.watched = map[string]*Handle{}
	c.bgCtx, c.bgStop = context.WithCancel(context.Background())
	c.watchCtx, c.watchStop = context.WithCancel(context.Background())
	if err := c.openStore(); err != nil {
		c.events.close()
		return nil, err
	}
	c.recoverSpool() // what a previous Client left there
	c.startHolding()
	go c.run()
	return c, nil
}

// testHookSpool and testHookStore, when set by a test, change the
// spool's options before New opens it, and wrap the store New opened (or
// was given).
var (
	testHookSpool func(*spool.Options)
	testHookStore func(store.Store) store.Store
)

// testHookStored, when set by a test, runs in Enqueue once the body is
// read (and written to the store), before the email is accepted.
var testHookStored func()

// Recovered returns the Handles of the emails that New found in
// Options.SpoolDir, accepted by a previous Client and not finished, in
// the order they were accepted: they are sent again (or, if their end of
// data may have reached the server and RetryUnknown is off, failed at
// once as unknown outcomes). They are queued even past MaxQueueSize.
// Empty without a spool, and with Options.Store.
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
// resubmit it). With Options.Store it sends only what is in flight: the
// emails it holds and has not started are handed back to the store at
// once (ErrClosed and ErrSpooled), for the other processes, and so are,
// for the Handles still waiting, the emails another process holds. It
// sends QUIT, closes the channel and the WebSocket, and returns when no
// goroutine of the client runs, except that it waits for an OnEvent call in
// progress. It leaves Options.Store open. It returns ctx's error if emails
// were handed back unsent. Safe to call more than once.
func (c *Client) Close(ctx context.Context) error {
	// Once ctx ends, nothing waits any more: writes to a store out of
	// reach (persist) give up too.
	defer context.AfterFunc(ctx, c.stop)()
	c.commitMu.Lock() // no Enqueue between its check and its queueing
	c.mu.Lock()
	first := !c.closed
	if first {
		c.closed = true
		close(c.draining)
	}
	var early []*email
	if !c.hold.drainsAtClose() {
		early = c.q.all() // not started: the other processes send them
	}
	c.mu.Unlock()
	c.commitMu.Unlock()
	for _, em := range early {
		c.finish(em, OutcomeHandedBack, c.kept(ErrClosed))
	}
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
	c.bgStop()
	c.bg.Wait()
	c.mu.Lock()
	c.followed = true
	c.mu.Unlock()
	c.watchStop() // the Handles following the store are handed back
	c.watchers.Wait()
	if first && c.opts.Store == nil {
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
