package mxrelay

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/mxrelay/mxrelay/internal/backoff"
	"github.com/mxrelay/mxrelay/internal/spool"
	"github.com/mxrelay/mxrelay/internal/store"
	"github.com/mxrelay/mxrelay/internal/store/memstore"
)

// Store is a queue that several processes share, for Options.Store:
// *pgstore.Store (package github.com/mxrelay/mxrelay/pgstore, on
// PostgreSQL) is the one the module provides. Its methods are those of
// the module's store seam, whose types are internal: pass a store the
// module provides; it is not meant to be implemented elsewhere. The
// caller opens it and closes it, after the Client's Close: the Client
// never closes a Store it was given.
type Store interface{ store.Store }

// holding is how the Client holds what it claims from its store, chosen
// once in New: the one place where a store of the Client's own (memory,
// the spool directory it locks) and a shared one (Options.Store) differ.
// Only this Client claims from a store of its own, so it claims every
// ready email at once, for good (ownLease), keeps the records of the
// emails it releases until it claims them again, and drains its queue at
// Close. A shared store is claimed on demand (ahead), under a lease
// renewed while held (renew); an email released there may go to any
// process, so the record goes and its Handle follows the store (away);
// the store's wake-ups, the work of other processes, wake the workers
// (listen); Close hands back what is held and not started.
type holding struct {
	shared bool
	// lease is each claim's.
	lease time.Duration
	// ahead is, for a shared store, how many ready emails the Client
	// holds at most besides those in flight: about what its sessions can
	// start soon, so that no process sits on a backlog the others could
	// send, and a CRITICAL email any process accepts goes before NORMAL
	// mail queued earlier. It claims again when half of it is left.
	ahead int
}

// ownLease is the lease of the claims of a store the Client opened: the
// process's own (memory, a spool directory it locks), so that no one
// else can take an email over, and a claim lasts until the client
// releases it.
const ownLease = 100 * 365 * 24 * time.Hour

// pullBatch is how many emails one Claim of a store of the Client's own
// takes.
const pullBatch = 256

// claimRetry is how long pull waits before claiming again after a claim
// failed (a store that cannot be reached), unless the store wakes it.
const claimRetry = time.Second

// openStore opens the Client's store, or takes Options.Store, and says
// how the Client holds what it claims there.
func (c *Client) openStore() error {
	o := &c.opts
	c.hold = holding{lease: ownLease}
	c.keepsResults = true
	switch {
	case o.Store != nil:
		c.st, c.durable = o.Store, true
		per := max(1, min(o.MaxEmailsPerSession, o.PipelineWindow))
		c.hold = holding{shared: true, lease: o.Lease, ahead: o.MaxConcurrentSessions * per}
	case o.SpoolDir != "":
		so := &spool.Options{SyncAll: o.SpoolSyncAll, Logger: o.Logger, ResultRetention: o.ResultRetention}
		if testHookSpool != nil {
			testHookSpool(so)
		}
		sp, err := spool.Open(o.SpoolDir, so)
		if err != nil {
			return err
		}
		c.st, c.durable, c.spool = sp, true, sp
		if bad := sp.SetAside(); len(bad) > 0 {
			c.log.Error("mxrelay: damaged files in the spool were set aside, not sent", "dir", o.SpoolDir, "files", bad)
		}
	default:
		// Results are the Handles', unless ResultRetention keeps them for
		// Client.Result. A body that cannot be read twice goes to a file in
		// TempDir, as before the seam, not to the heap.
		keep := o.ResultRetention
		if keep == 0 {
			keep = time.Nanosecond
		}
		c.keepsResults = o.ResultRetention > 0
		c.st = memstore.New(&memstore.Options{ResultRetention: keep, MemoryBody: 1, TempDir: o.TempDir})
	}
	if testHookStore != nil {
		c.st = testHookStore(c.st)
	}
	return nil
}

// recoverSpool queues what a previous Client left in the spool, at New: a
// claim of every email there (pull), their Handles kept for Recovered.
func (c *Client) recoverSpool() {
	if c.spool == nil {
		return
	}
	c.adopted = map[string]*Handle{}
	c.pull()
	for _, a := range c.spool.Recovered() {
		if h := c.adopted[a.ID]; h != nil {
			c.recovered = append(c.recovered, h)
		}
	}
	c.adopted = nil
	if n := len(c.spool.Recovered()); n > 0 {
		c.log.Info("mxrelay: emails recovered from the spool", "count", n, "dir", c.opts.SpoolDir)
	}
}

// startHolding starts the goroutines a shared store needs: listen and
// renew. Close stops them.
func (c *Client) startHolding() {
	if !c.hold.shared {
		return
	}
	c.bg.Add(2)
	go c.listen()
	go c.renew()
}

// drainsAtClose reports whether Close sends what the Client holds before
// it stops, as for a store of its own; a shared store gets back at once
// what the Client has not started (Close), for the other processes.
func (h holding) drainsAtClose() bool { return !h.shared }

// releasesHandedBack reports whether an email handed back while the
// Client runs (the store could not record its end of data, or the relay
// cannot be reached) goes back to the store for any process, this one
// included, instead of ending here: in a shared store (finish). In a
// store of the Client's own it ends handed back, and stays there for the
// next Client if the store is durable.
func (h holding) releasesHandedBack(closed bool) bool { return h.shared && !closed }

// unsendable is the outcome of the emails held when the Client cannot
// send them (the relay refused its key, or stayed out of reach): from a
// store of its own they fail; to a shared one they are handed back, for
// the processes that can (finish lets go of them).
func (h holding) unsendable() Outcome {
	if h.shared {
		return OutcomeHandedBack
	}
	return OutcomeFailed
}

// claimRoom is how many emails pull claims now: every ready one from a
// store of the Client's own; from a shared one, what tops the queue up to
// ahead once half of it is gone, and nothing once Close was called or the
// relay refused the key (this Client cannot send: the others can). c.mu
// is held.
func (c *Client) claimRoom() int {
	h := c.hold
	switch queued := c.q.readyLen(); {
	case !h.shared:
		return pullBatch
	case c.closed || c.authErr != nil || queued > h.ahead/2:
		return 0
	default:
		return h.ahead - queued
	}
}

// dryState is what the last claim that came back short said: nothing
// more is ready until the store's wake channel, taken before it, is
// closed, or its next time comes.
type dryState struct {
	wake <-chan struct{} // nil: the last claim was not short
	next time.Time       // zero: none
	gen  uint64          // counts the short claims, for listen
}

// short reports whether a claim now would find nothing more than the
// last one did.
func (d *dryState) short(now time.Time) bool {
	if d.wake == nil {
		return false
	}
	select {
	case <-d.wake:
		return false
	default:
	}
	return d.next.IsZero() || now.Before(d.next)
}

// pull claims what room allows, unless the last claim found the store
// short and nothing changed since, and queues it: what this Client
// accepted, its retries whose time has come, what another process
// accepted or released (a shared store) or, at New, what a previous
// Client left (the spool). The queue (queue.go) orders what the client
// holds.
func (c *Client) pull() {
	c.pullMu.Lock()
	defer c.pullMu.Unlock()
	c.pullLocked()
}

// pullSoon is pull unless a pull is in progress: that one, or the next
// (the store's Wake, the queue's time), takes what changed, and an
// Enqueue does not wait behind another's claim. An email it does not
// take waits for it (letGo).
func (c *Client) pullSoon() {
	if c.pullMu.TryLock() {
		defer c.pullMu.Unlock()
		c.pullLocked()
	}
}

// pullLocked is pull with pullMu held.
func (c *Client) pullLocked() {
	for {
		c.mu.Lock()
		n := c.claimRoom()
		short := c.dry.short(time.Now())
		c.mu.Unlock()
		if n <= 0 || short {
			return
		}
		wake := c.st.Wake()
		got, next, err := c.st.Claim(c.stopCtx, c.owner, n, c.hold.lease)
		if err != nil {
			if !errors.Is(err, store.ErrClosed) && c.stopCtx.Err() == nil {
				c.log.Error("mxrelay: store", "op", "claim", "err", err)
			}
			c.setDry(wake, time.Now().Add(claimRetry))
			return
		}
		var found []*store.Claimed
		c.mu.Lock()
		now := time.Now()
		if len(got) == n {
			c.dry.wake = nil
		}
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
				// Enqueue has not queued it yet (queue does).
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
		if len(got) < n {
			c.setDry(wake, next)
			return
		}
	}
}

// setDry records a claim that came back short (see dryState).
func (c *Client) setDry(wake <-chan struct{}, next time.Time) {
	c.mu.Lock()
	c.dry = dryState{wake: wake, next: next, gen: c.dry.gen + 1}
	c.mu.Unlock()
	c.dried.Signal()
}

// listen wakes the workers when the store may have emails ready that
// the last claim did not find (dryState): at the store's Wake (another
// process accepted or released one, or the store may have missed news)
// or at the time that claim said (a retry time, a lease's end); once for
// each short claim, so that nothing polls the store. For a shared store
// only: in a store of the Client's own nothing becomes ready but by this
// Client's doing (accept, a hand back), which pulls, or at a retry time
// the queue keeps (queue.nextDue).
func (c *Client) listen() {
	defer c.bg.Done()
	t := time.NewTimer(time.Hour)
	defer t.Stop()
	var kicked uint64
	for {
		changed := c.dried.C()
		c.mu.Lock()
		d := c.dry
		c.mu.Unlock()
		t.Stop()
		var wake <-chan struct{}
		var at <-chan time.Time
		if d.wake != nil && d.gen != kicked {
			wake = d.wake
			if !d.next.IsZero() {
				t.Reset(time.Until(d.next))
				at = t.C
			}
		}
		select {
		case <-wake:
			kicked = d.gen
			c.kick()
		case <-at:
			kicked = d.gen
			c.kick()
		case <-changed:
		case <-c.bgCtx.Done():
			return
		}
	}
}

// renew renews the leases of every email the Client holds of a shared
// store, in one call, every lease/3. An email whose claim moved on (its
// lease ran out and another process took it over) is fenced. A renewal
// that fails leaves the leases as they are: the store's fencing refuses
// the writes of a claim taken over meanwhile (Ending first of all, so
// that no end of data goes out for it).
func (c *Client) renew() {
	defer c.bg.Done()
	t := time.NewTicker(c.hold.lease / 3)
	defer t.Stop()
	for {
		select {
		case <-t.C:
		case <-c.bgCtx.Done():
			return
		}
		var toks []store.Token
		var ems []*email
		c.mu.Lock()
		for _, em := range c.byID {
			if em.held {
				toks = append(toks, em.tok)
				ems = append(ems, em)
			}
		}
		c.mu.Unlock()
		if len(toks) == 0 {
			continue
		}
		errs, err := c.st.Renew(c.bgCtx, toks, c.hold.lease)
		if err != nil {
			if c.bgCtx.Err() == nil {
				c.log.Warn("mxrelay: store: the leases could not be renewed", "emails", len(toks), "err", err)
			}
			continue
		}
		for i, e := range errs {
			if errors.Is(e, store.ErrFenced) {
				c.fence(ems[i], toks[i])
			}
		}
	}
}

// errFenced is the cause an email fenced is dropped with: it never
// reaches a Result.
var errFenced = errors.New("mxrelay: the store gave the email to another claim")

// testHookFenced, when set by a test, runs when an email is fenced.
var testHookFenced func(id string)

// fence drops em, whose claim tok moved on (a *store.FencedError): it is
// another holder's now, or finished. The Client writes nothing more of
// it and gives it no result: queued, it leaves the queue; in a
// transaction before its end of data, the session withdraws it and never
// writes its end of data; after it, its reply decides nothing here. Its
// Handle follows the store (away).
func (c *Client) fence(em *email, tok store.Token) {
	c.mu.Lock()
	if em.tok != tok || em.fenced || em.state == stateDone || em.state == stateAway {
		// Claimed again since, fenced already, or released (a renewal
		// that crossed a Requeue, a HandBack or a Finish).
		c.mu.Unlock()
		return
	}
	em.fenced = true
	c.mu.Unlock()
	c.log.Warn("mxrelay: email taken over by another claim: dropped here, without a result", "email", em.id)
	if testHookFenced != nil {
		testHookFenced(em.sid)
	}
	c.cancel(em, OutcomeHandedBack, errFenced)
}

// letGo is for em, accepted or released to the store (Requeue), and not
// held by this Client. A store of the Client's own gives it back to this
// Client only: the queue keeps its place until pull claims it again (at
// its retry time). A shared store may give it to any process: the record
// goes (away). c.mu is held.
func (c *Client) letGo(em *email) {
	if !c.hold.shared {
		c.q.wait(em)
		return
	}
	c.away(em)
}

// away forgets em, out of the queue and out of any session, which this
// Client no longer holds: a shared store gives it to whichever process
// claims it next (this one too, with a new record), and its result is
// that process's. No result is given here; the Handle follows the store
// (follow). c.mu is held.
func (c *Client) away(em *email) {
	c.q.remove(em)
	em.state = stateAway
	if c.byID[em.sid] == em {
		delete(c.byID, em.sid)
	}
	if em.timer != nil {
		em.timer.Stop()
	}
	c.stats.EmailsReleased++
	if h := em.handle; h != nil && h.em == em {
		h.em = nil
		if h.waited {
			c.follow(h)
		}
	}
	c.drainedLocked()
}

// adopt queues cl, an email the store holds that this Client did not
// accept (a previous Client's, found in the spool; another process's,
// or one this Client let go of, in a shared store), as it was left. One
// whose end of data may have reached the server is an unknown outcome:
// it fails at once unless RetryUnknown (or Cancel marked it: the end of
// data was out before the cancel). One whose timeout has passed, or that
// Cancel marked before its end of data, fails at once. When a Handle of this Client waits
// for it (follow), that Handle is its own again. pullMu is held.
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
		if r := p.Reply; r != nil {
			em.reply = Reply{Code: r.Code, EnhancedCode: r.Enhanced, Message: r.Message}
		}
		em.rejected = progressRefusals(p)
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
	if hd := c.watched[em.sid]; hd != nil && hd.em == nil {
		hd.em, em.handle = em, hd
		em.id = hd.id
	}
	c.mu.Unlock()
	c.queue(em, timeout)
	if c.adopted != nil {
		c.adopted[em.sid] = em.handle
	}
	switch {
	case err != nil:
		c.cancel(em, OutcomeFailed, err)
	case cl.Canceled != "" && cl.Unanswered == 0:
		c.cancel(em, OutcomeFailed, ErrCanceled)
	case em.unknown && (cl.Canceled != "" || !c.opts.RetryUnknown):
		// An end of data out before the cancel is not withdrawn by it:
		// unknown, and not tried again.
		c.cancel(em, OutcomeUnknown, &UnknownOutcomeError{Err: errors.New("the previous holder stopped after this email's end of data was written")})
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

// persistBackoff spaces the tries of a write the store could not take.
var persistBackoff = backoff.Policy{Initial: 50 * time.Millisecond, Max: 2 * time.Second, Jitter: 0.2}

// persist makes a write of a claim holder (op), waiting out a store that
// cannot be reached (store.ErrUnavailable: a database restarting) until
// it answers, however long past the claim's lease: a lease that ran out
// and was not taken over is still the holder's, and one taken over
// refuses the write as fenced, so that the Client never tells a result
// beside another claim's. Close gives up first: once the workers are
// done (stopCtx) no try follows the first, and once Close's context ends
// (giveUpCtx) the write in progress ends too, a database that hangs
// included. The same write made again is safe: a Finish that took effect
// returns nil, a release that did is refused as fenced.
func (c *Client) persist(op func(context.Context) error) error {
	for n := 1; ; n++ {
		err := op(c.giveUpCtx)
		if !errors.Is(err, store.ErrUnavailable) {
			return err
		}
		t := time.NewTimer(persistBackoff.Delay(n))
		select {
		case <-t.C:
		case <-c.stopCtx.Done():
			t.Stop()
			return err
		}
	}
}
