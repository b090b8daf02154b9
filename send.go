package mxrelay

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"time"

	"github.com/mxrelay/mxrelay/internal/store"
)

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
	h, err := c.enqueue(ctx, e, opts)
	if err != nil {
		return nil, err
	}
	stop := context.AfterFunc(ctx, func() {
		c.cancelHandle(h, OutcomeFailed, fmt.Errorf("%w: %w", ErrCanceled, context.Cause(ctx)))
	})
	defer stop()
	<-h.Done()
	return h.res, h.res.Err
}

// Enqueue applies opts to e (see SendOption), validates it and queues it
// without waiting for it to be sent. It fails with an error matching
// ErrInvalidEmail, ErrQueueFull, ErrClosed or ErrAuthFailed, or, with
// Options.SpoolDir, with the error that kept the email from being written
// there (a full disk), in which case nothing was accepted. The body is
// read once, here, and kept until the email's result: in memory (in a
// temporary file beyond 1 MiB), or in the spool (see Email.Body). An
// email whose Email.IdempotencyKey was accepted before is not accepted
// again: the Handle is that email's.
func (c *Client) Enqueue(e Email, opts ...SendOption) (*Handle, error) {
	return c.enqueue(context.Background(), e, opts)
}

// enqueue is Enqueue with ctx bounding the writes to the store up to
// the commit (see accept).
func (c *Client) enqueue(ctx context.Context, e Email, opts []SendOption) (*Handle, error) {
	if len(opts) > 0 {
		e = withOptions(e, opts)
	}
	if err := e.validate(); err != nil {
		return nil, err
	}
	cfg := c.opts.sendConfig(&e)
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
	env := &store.Envelope{
		ID: em.id, IdempotencyKey: e.IdempotencyKey, From: e.From, To: e.To, Mail: e.MailOptions, Rcpt: e.RcptOptions,
		Priority: int(cfg.priority), Retries: cfg.retries, Immediate: cfg.immediate,
	}
	if cfg.timeout > 0 {
		env.Deadline = em.queuedAt.Add(cfg.timeout)
	}
	h, err := c.accept(ctx, em, env, e.Body)
	if err != nil {
		c.unreserve()
		return nil, err
	}
	if c.log.Enabled(context.Background(), slog.LevelDebug) {
		// Asked first: the arguments would be allocated even for a
		// logger that drops them.
		c.log.Debug("mxrelay: email queued", "email", em.id, "priority", cfg.priority.String())
	}
	return h, nil
}

// accept writes em to the store, body and all, and queues it; or, for
// an IdempotencyKey the store has, returns the Handle of that email. ctx
// bounds the writes up to the commit: when it has ended by then nothing
// is accepted and the error matches ctx's. The commit itself is not cut
// by ctx, so that whether the email was accepted is known when accept
// returns.
func (c *Client) accept(ctx context.Context, em *email, env *store.Envelope, r io.Reader) (*Handle, error) {
	d, err := c.st.Accept(ctx, env)
	if errors.Is(err, store.ErrDuplicateID) {
		// Email.ID need not be unique; the store's IDs are.
		env.ID = em.id + "~" + c.newID()
		d, err = c.st.Accept(ctx, env)
	}
	if err != nil {
		return nil, err
	}
	if a, ok := d.Existing(); ok {
		d.Abort()
		c.unreserve()
		return c.existing(a), nil
	}
	em.sid = env.ID
	em.handle = c.newHandle(em.id, em.sid, em.queuedAt)
	rules := c.opts.bodyRules(env.Mail)
	em.body, err = newBody(d, r, rules)
	if err != nil {
		d.Abort()
		return nil, err
	}
	if testHookStored != nil {
		testHookStored()
	}
	// Accepted once committed. Close waits for a commit in progress and
	// none starts after it, so that an email is never both refused and
	// kept for the next Client.
	c.commitMu.RLock()
	defer c.commitMu.RUnlock()
	c.mu.Lock()
	err = c.refusal()
	if err == nil {
		err = ctx.Err()
	}
	if err == nil {
		c.byID[em.sid] = em // a claim made as soon as it is committed finds it
	}
	c.mu.Unlock()
	if err == nil {
		_, err = d.Commit(context.WithoutCancel(ctx), em.body.meta(rules))
		if errors.Is(err, store.ErrUnavailable) && c.keptAfterAll(env.ID) {
			err = nil // accepted: its reply was lost
		}
	} else {
		d.Abort()
	}
	if err != nil {
		c.mu.Lock()
		delete(c.byID, em.sid)
		c.mu.Unlock()
		return nil, err
	}
	c.mu.Lock()
	c.reserved--
	c.dry.wake = nil // the store has one more ready, whatever its Wake says yet
	c.mu.Unlock()
	c.pullSoon() // before queue, which lets go of it if no claim took it
	c.queue(em, env.Deadline.Sub(em.queuedAt))
	return em.handle, nil
}

// keptAfterAll reports whether email id, whose Commit failed with
// store.ErrUnavailable (the commit may have reached the store: its reply
// was lost), is kept in the store all the same, asking the store as
// persist writes to it. An Enqueue that failed for an email accepted
// would have the caller send a second copy.
func (c *Client) keptAfterAll(id string) bool {
	err := c.persist(func(ctx context.Context) error {
		_, err := c.st.Result(ctx, id)
		return err
	})
	return err == nil || errors.Is(err, store.ErrNotFinished)
}

// existing is the Handle of a, the email accepted before with the same
// IdempotencyKey: its record's, when this Client keeps it; else one that
// follows it in the store.
func (c *Client) existing(a store.Accepted) *Handle {
	c.mu.Lock()
	defer c.mu.Unlock()
	if em := c.byID[a.ID]; em != nil && em.handle != nil {
		return em.handle
	}
	if h := c.watched[a.ID]; h != nil {
		return h
	}
	return c.newHandle(a.ID, a.ID, a.Queued)
}

// withOptions is e with opts applied. (A function of its own: the options
// take e's address, which would move every Enqueue's e to the heap.)
func withOptions(e Email, opts []SendOption) Email {
	for _, o := range opts {
		o(&e)
	}
	return e
}

// EnqueueWait is Enqueue that, when the queue is full, waits for room
// instead of failing with ErrQueueFull. When ctx ends first it returns an
// error matching ErrQueueFull and ctx's cause; nothing is queued. ctx
// bounds the writing of the email to a durable store too (SpoolDir,
// Options.Store: a database out of reach), up to its commit, which is
// waited for once it is under way so that the answer is true: when ctx
// ends before, the error matches ctx's and nothing is accepted.
func (c *Client) EnqueueWait(ctx context.Context, e Email, opts ...SendOption) (*Handle, error) {
	for {
		room := c.roomChan()
		h, err := c.enqueue(ctx, e, opts)
		if !errors.Is(err, ErrQueueFull) {
			return h, err
		}
		select {
		case <-room:
		case <-ctx.Done():
			return nil, fmt.Errorf("%w: %w", ErrQueueFull, context.Cause(ctx))
		}
	}
}

// queue counts em, accepted or adopted, in the queue, and puts it there
// if the store's claim of it came already (pull), or lets go of it
// (letGo). timeout, if positive, is how long it may wait for its end of
// data.
func (c *Client) queue(em *email, timeout time.Duration) {
	if em.handle == nil {
		em.handle = c.newHandle(em.id, em.sid, em.queuedAt)
	}
	c.mu.Lock()
	em.handle.em = em
	c.seq++
	em.seq = c.seq
	em.committed = true
	c.stats.EmailsQueued++
	if !c.busy {
		// Under c.mu, so that started and completed alternate.
		c.busy = true
		c.events.emit(Event{Type: EventQueueProcessingStarted, QueueSize: c.q.len()})
	}
	if timeout > 0 {
		em.timer = time.AfterFunc(timeout, func() { c.cancel(em, OutcomeFailed, timedOut(em)) })
	}
	if em.held {
		c.q.push(em, time.Now())
	} else {
		c.letGo(em) // until pull claims it
	}
	c.mu.Unlock()
	c.kick()
}

// timedOut is the error of an email whose own timeout (Email.Timeout,
// Options.EmailTimeout) passed before its end of data.
func timedOut(em *email) error {
	return classify(fmt.Errorf("%w: %w: email timeout of %v", ErrCanceled, context.DeadlineExceeded, em.cfg.timeout))
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

// refusal is why no email can be accepted now, or nil. c.mu is held.
func (c *Client) refusal() error {
	if c.closed {
		return ErrClosed
	}
	return c.authErr
}

// roomChan is closed when a place in the queue frees up. Take it before
// trying Enqueue, so that a place freed in between is not missed.
func (c *Client) roomChan() <-chan struct{} { return c.room.C() }

// freed wakes the EnqueueWait callers: a place in the queue is free.
func (c *Client) freed() {
	c.room.Signal()
}

// drained emits EventQueueProcessingCompleted when every accepted email
// has its result (or was let go of to a shared store), once per
// EventQueueProcessingStarted.
func (c *Client) drained() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.drainedLocked()
}

// drainedLocked is drained with c.mu held.
func (c *Client) drainedLocked() {
	if c.busy && c.stats.EmailsQueued == c.stats.EmailsDelivered+c.stats.EmailsFailed+c.stats.EmailsReleased {
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

// kick wakes the workers.
func (c *Client) kick() {
	c.wake.Signal()
}

// wakeChan is closed by the next kick. Take it before looking at the
// queue, so that a change in between is not missed.
func (c *Client) wakeChan() <-chan struct{} { return c.wake.C() }

func (c *Client) newID() string {
	var b [8]byte
	if _, err := rand.Read(b[:]); err != nil {
		return fmt.Sprintf("m%d", c.ids.Add(1))
	}
	var h [2 * len(b)]byte
	hex.Encode(h[:], b[:])
	return string(h[:]) // one allocation; hex.EncodeToString makes two
}
