// Package ledger is the bookkeeping of a store that one process owns: the
// emails kept, their claims, leases and fencing tokens, their results for
// a retention time, the idempotency keys, and the wake-ups, in memory
// under one mutex. It implements the rules of the store seam
// (internal/store) once for the stores that keep their state in the
// process: internal/store/memstore keeps nothing else, and internal/spool
// writes each transition to its journal before the ledger applies it (the
// persist callbacks) and fills a ledger from its directory at open
// (Restore, RestoreResult).
//
// A Ledger has two type parameters: E is what the store keeps with each
// email (where its body is), R what it keeps with each result (the result
// itself, or where to read it). The ledger never looks into either.
//
// Every method is safe for concurrent use. A persist callback runs with
// the ledger's mutex held, after the fencing check and before the change
// it records: nothing else happens to the ledger in between, so that what
// a store writes is what the ledger then holds. When the callback fails,
// the ledger changes nothing, except in Finish (see there).
package ledger

import (
	"cmp"
	"container/heap"
	"context"
	"errors"
	"maps"
	"slices"
	"sync"
	"time"

	"github.com/mxrelay/mxrelay/internal/store"
)

// Options configures a Ledger. The zero value is useful.
type Options struct {
	// Retention is how long a result is kept after it was recorded:
	// Result and WaitResult return it, and its IdempotencyKey stays
	// taken. Zero: 7 days.
	Retention time.Duration
	// Now is the ledger's clock. Nil: time.Now.
	Now func() time.Time
}

// Entry is an email the ledger keeps, with what the store keeps with it
// (Data). The store fills the exported fields before Commit or Restore;
// from then on the ledger owns the Entry and its fields change only under
// its mutex.
type Entry[E any] struct {
	Env      store.Envelope
	Queued   time.Time
	Meta     []byte
	BodySize int64
	// Progress and Ends are what the last attempts left: the last
	// progress recorded, and the Ending records after it.
	Progress *store.Progress
	Ends     int
	// OnHold is set while an operator holds the email (Hold): no claim
	// takes it.
	OnHold bool
	// NotBefore is its retry time: not claimed before.
	NotBefore time.Time
	Data      E

	seq      uint64 // order of acceptance
	attempt  int64
	owner    string // "" when not held
	expires  time.Time
	canceled bool
	cancel   string
	parked   bool // held with no lease: a Finish that could not be recorded
	in       int8 // which queue holds it (inNone when none)
	idx      int  // its index there
}

// done is a result the ledger keeps.
type done[R any] struct {
	id, key  string
	queued   time.Time
	finished time.Time
	owner    string // the token that finished it, so that Finish again is a no-op
	attempt  int64
	ref      R
}

// Ledger is the in-memory book of a store. See the package doc.
type Ledger[E, R any] struct {
	now       func() time.Time
	retention time.Duration

	mu      sync.Mutex
	closed  bool
	seq     uint64
	emails  map[string]*Entry[E]
	done    map[string]*done[R]
	byAge   []*done[R]               // results in the order recorded, for pruning
	keys    map[string]string        // IdempotencyKey → ID of an email or result kept
	pending map[string]chan struct{} // "i"+ID and "k"+key of Accepts in progress
	waiters map[string]chan struct{} // closed when the email gets its result
	wakeC   chan struct{}
	queues  [numQueues]*queue[E]
}

// The queues an unfinished email may be in: ready (not held, its retry
// time come), takeover (held, its lease expired: claimable by anyone),
// delayed (not held, waiting for its retry time), leased (held, its lease
// running). A parked email is in none, and so is one on hold.
const (
	inNone int8 = iota
	inReady
	inTakeover
	inDelayed
	inLeased
	numQueues
)

// New returns an empty Ledger.
func New[E, R any](o Options) *Ledger[E, R] {
	if o.Retention <= 0 {
		o.Retention = 7 * 24 * time.Hour
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	l := &Ledger[E, R]{
		now:       o.Now,
		retention: o.Retention,
		emails:    map[string]*Entry[E]{},
		done:      map[string]*done[R]{},
		keys:      map[string]string{},
		pending:   map[string]chan struct{}{},
		waiters:   map[string]chan struct{}{},
		wakeC:     make(chan struct{}),
	}
	byOrder := func(a, b *Entry[E]) bool {
		return cmp.Or(cmp.Compare(b.Env.Priority, a.Env.Priority), cmp.Compare(a.seq, b.seq)) < 0
	}
	l.queues[inReady] = &queue[E]{kind: inReady, less: byOrder}
	l.queues[inTakeover] = &queue[E]{kind: inTakeover, less: byOrder}
	l.queues[inDelayed] = &queue[E]{kind: inDelayed, less: func(a, b *Entry[E]) bool {
		return a.NotBefore.Before(b.NotBefore) || a.NotBefore.Equal(b.NotBefore) && a.seq < b.seq
	}}
	l.queues[inLeased] = &queue[E]{kind: inLeased, less: func(a, b *Entry[E]) bool {
		return a.expires.Before(b.expires) || a.expires.Equal(b.expires) && a.seq < b.seq
	}}
	return l
}

// Close makes every later call fail with store.ErrClosed, wakes the
// result waiters, which return it, and returns what the store keeps with
// each email not finished, for a store that must release it. Safe to
// call more than once: later calls return nothing.
func (l *Ledger[E, R]) Close() []E {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return nil
	}
	l.closed = true
	for id, ch := range l.waiters {
		close(ch)
		delete(l.waiters, id)
	}
	var kept []E
	for _, e := range l.emails {
		kept = append(kept, e.Data)
	}
	return kept
}

// Wake returns a channel closed once an email may have become ready
// since the call: committed, released, or restored.
func (l *Ledger[E, R]) Wake() <-chan struct{} {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.wakeC
}

// wake closes the Wake channel. l.mu is held.
func (l *Ledger[E, R]) wake() {
	close(l.wakeC)
	l.wakeC = make(chan struct{})
}

// Reservation holds the ID and key of an Accept in progress: another
// Accept with either waits until Commit or Release.
type Reservation[E, R any] struct {
	l    *Ledger[E, R]
	env  store.Envelope
	seq  uint64
	done chan struct{}
	over bool
}

// Reserve begins an Accept of env. When env's IdempotencyKey is kept (an
// email or a result), it returns the Draft of that email
// (store.ExistingDraft) and no Reservation. When env.ID is kept it fails
// with store.ErrDuplicateID. When an Accept of the same ID or key is in
// progress it waits for it to end first, or for ctx.
func (l *Ledger[E, R]) Reserve(ctx context.Context, env *store.Envelope) (store.Draft, *Reservation[E, R], error) {
	if env.ID == "" {
		return nil, nil, errors.New("mxrelay: store: Accept: the email has no ID")
	}
	for {
		l.mu.Lock()
		if l.closed {
			l.mu.Unlock()
			return nil, nil, store.ErrClosed
		}
		l.prune()
		busy := l.pending["i"+env.ID]
		if env.IdempotencyKey != "" && busy == nil {
			busy = l.pending["k"+env.IdempotencyKey]
		}
		if busy == nil {
			a, r, err := l.reserve(env)
			l.mu.Unlock()
			if a != nil {
				return store.ExistingDraft(*a), nil, nil
			}
			return nil, r, err
		}
		l.mu.Unlock()
		select {
		case <-busy:
		case <-ctx.Done():
			return nil, nil, ctx.Err()
		}
	}
}

// reserve is Reserve once no Accept of env's ID or key is in progress.
// l.mu is held.
func (l *Ledger[E, R]) reserve(env *store.Envelope) (*store.Accepted, *Reservation[E, R], error) {
	if id, ok := l.keys[env.IdempotencyKey]; ok && env.IdempotencyKey != "" {
		if e := l.emails[id]; e != nil && e.Env.IdempotencyKey == env.IdempotencyKey {
			return &store.Accepted{ID: id, Queued: e.Queued, Existing: true}, nil, nil
		}
		if d := l.liveDone(id); d != nil && d.key == env.IdempotencyKey {
			return &store.Accepted{ID: id, Queued: d.queued, Existing: true}, nil, nil
		}
	}
	if l.emails[env.ID] != nil || l.liveDone(env.ID) != nil {
		return nil, nil, store.ErrDuplicateID
	}
	l.seq++
	r := &Reservation[E, R]{l: l, env: cloneEnvelope(*env), seq: l.seq, done: make(chan struct{})}
	l.pending["i"+env.ID] = r.done
	if env.IdempotencyKey != "" {
		l.pending["k"+env.IdempotencyKey] = r.done
	}
	return nil, r, nil
}

// end lets the Accepts waiting for r go on. l.mu is held.
func (r *Reservation[E, R]) end() {
	if r.over {
		return
	}
	r.over = true
	delete(r.l.pending, "i"+r.env.ID)
	if r.env.IdempotencyKey != "" {
		delete(r.l.pending, "k"+r.env.IdempotencyKey)
	}
	close(r.done)
}

// Release ends r without accepting anything. Safe after Commit, and more
// than once.
func (r *Reservation[E, R]) Release() {
	r.l.mu.Lock()
	defer r.l.mu.Unlock()
	r.end()
}

// Commit accepts e under r, ready now: e.Env is r's envelope, and
// e.Queued, if zero, is now. The caller made it durable first, if its
// store is durable. It fails only with store.ErrClosed, when the ledger
// was closed meanwhile (then nothing is accepted).
func (r *Reservation[E, R]) Commit(e *Entry[E]) (store.Accepted, error) {
	l := r.l
	l.mu.Lock()
	defer l.mu.Unlock()
	defer r.end()
	if l.closed || r.over {
		return store.Accepted{}, store.ErrClosed
	}
	e.Env, e.seq = r.env, r.seq
	if e.Queued.IsZero() {
		e.Queued = l.now()
	}
	l.insert(e)
	return store.Accepted{ID: e.Env.ID, Queued: e.Queued}, nil
}

// Restore adds e, an email a store found at open (unheld, ready now),
// after those restored before it in the order of acceptance. It reports
// false, adding nothing, when e.Env.ID is kept already.
func (l *Ledger[E, R]) Restore(e *Entry[E]) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.emails[e.Env.ID] != nil {
		return false
	}
	l.seq++
	e.seq = l.seq
	l.insert(e)
	return true
}

// insert adds a new email, ready now. l.mu is held.
func (l *Ledger[E, R]) insert(e *Entry[E]) {
	e.attempt, e.owner, e.in, e.idx = 0, "", inNone, -1
	l.emails[e.Env.ID] = e
	if k := e.Env.IdempotencyKey; k != "" {
		l.keys[k] = e.Env.ID
	}
	// An email of this ID kept before as a result is superseded.
	delete(l.done, e.Env.ID)
	l.push(e, l.now())
	l.wake()
}

// RestoreResult adds the result of email id, recorded at finished, found
// by a store at open; ref is where the store has it. Results older than
// the retention time are not added. A later result of the same ID
// replaces an earlier one.
func (l *Ledger[E, R]) RestoreResult(id, key string, queued, finished time.Time, ref R) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.emails[id] != nil || l.now().Sub(finished) >= l.retention {
		return
	}
	l.record(&done[R]{id: id, key: key, queued: queued, finished: finished, ref: ref})
}

// record keeps d, the result of its email. l.mu is held.
func (l *Ledger[E, R]) record(d *done[R]) {
	l.done[d.id] = d
	l.byAge = append(l.byAge, d)
	if d.key != "" {
		l.keys[d.key] = d.id
	}
	if ch := l.waiters[d.id]; ch != nil {
		close(ch)
		delete(l.waiters, d.id)
	}
}

// live reports whether d is within the retention time. l.mu is held.
func (l *Ledger[E, R]) live(d *done[R]) bool {
	return d != nil && l.now().Sub(d.finished) < l.retention
}

// prune forgets the results past the retention time. l.mu is held.
func (l *Ledger[E, R]) prune() {
	n := 0
	for n < len(l.byAge) && !l.live(l.byAge[n]) {
		d := l.byAge[n]
		if l.done[d.id] == d {
			delete(l.done, d.id)
			if d.key != "" && l.keys[d.key] == d.id && l.emails[d.id] == nil {
				delete(l.keys, d.key)
			}
		}
		n++
	}
	if n > 0 {
		// The array is reclaimed when append next moves it.
		clear(l.byAge[:n])
		l.byAge = l.byAge[n:]
	}
}

// liveDone is the result of email id within the retention time, or nil.
// l.mu is held.
func (l *Ledger[E, R]) liveDone(id string) *done[R] {
	if d := l.done[id]; l.live(d) {
		return d
	}
	l.prune()
	return nil
}

// Claim takes up to n ready emails for owner under lease, highest
// priority first and in order of acceptance within one, ready ones and
// those whose lease expired alike. See store.Store.Claim.
func (l *Ledger[E, R]) Claim(owner string, n int, lease time.Duration) ([]*store.Claimed, time.Time, error) {
	if owner == "" || n <= 0 || lease <= 0 {
		return nil, time.Time{}, errors.New("mxrelay: store: Claim needs an owner, n > 0 and a lease > 0")
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return nil, time.Time{}, store.ErrClosed
	}
	now := l.now()
	l.promote(now)
	ready, takeover := l.queues[inReady], l.queues[inTakeover]
	var got []*store.Claimed
	for len(got) < n {
		q := ready
		switch {
		case ready.Len() > 0 && (takeover.Len() == 0 || ready.less(ready.items[0], takeover.items[0])):
		case takeover.Len() > 0:
			q = takeover
		default:
			q = nil
		}
		if q == nil {
			break
		}
		e := heap.Pop(q).(*Entry[E])
		e.attempt++
		e.owner, e.expires, e.parked = owner, now.Add(lease), false
		heap.Push(l.queues[inLeased], e)
		got = append(got, claimed(e))
	}
	if len(got) == n {
		return got, time.Time{}, nil
	}
	var next time.Time
	for _, q := range []*queue[E]{l.queues[inDelayed], l.queues[inLeased]} {
		if q.Len() == 0 {
			continue
		}
		at := q.items[0].NotBefore
		if q.kind == inLeased {
			at = q.items[0].expires
		}
		if next.IsZero() || at.Before(next) {
			next = at
		}
	}
	return got, next, nil
}

// promote moves the delayed emails whose time has come to ready, and the
// held ones whose lease expired to takeover. l.mu is held.
func (l *Ledger[E, R]) promote(now time.Time) {
	for q := l.queues[inDelayed]; q.Len() > 0 && !q.items[0].NotBefore.After(now); {
		heap.Push(l.queues[inReady], heap.Pop(q))
	}
	for q := l.queues[inLeased]; q.Len() > 0 && !q.items[0].expires.After(now); {
		heap.Push(l.queues[inTakeover], heap.Pop(q))
	}
}

// claimed is what a claim of e returns: copies, so that the holder
// cannot change the ledger's.
func claimed[E any](e *Entry[E]) *store.Claimed {
	return &store.Claimed{
		Envelope:   cloneEnvelope(e.Env),
		Token:      store.Token{ID: e.Env.ID, Owner: e.owner, Attempt: e.attempt},
		Queued:     e.Queued,
		Meta:       slices.Clone(e.Meta),
		BodySize:   e.BodySize,
		Expires:    e.expires,
		Progress:   CloneProgress(e.Progress),
		Unanswered: e.Ends,
		Canceled:   e.canceledFor(),
	}
}

// canceledFor is the reason given to Cancel while e was held; empty when
// none was asked.
func (e *Entry[E]) canceledFor() string {
	if !e.canceled {
		return ""
	}
	return cmp.Or(e.cancel, "canceled")
}

// cloneEnvelope is a copy of env that shares nothing the caller may
// change (the options' own fields are not changed by anyone).
func cloneEnvelope(env store.Envelope) store.Envelope {
	env.To = slices.Clone(env.To)
	env.Rcpt = maps.Clone(env.Rcpt)
	if env.Mail != nil {
		m := *env.Mail
		env.Mail = &m
	}
	return env
}

// CloneProgress is a deep copy of p; nil for nil.
func CloneProgress(p *store.Progress) *store.Progress {
	if p == nil {
		return nil
	}
	c := *p
	c.Accepted = slices.Clone(p.Accepted)
	c.Rejected = maps.Clone(p.Rejected)
	c.Pending = slices.Clone(p.Pending)
	return &c
}

// held returns the email tok holds, or why it holds none: a
// *store.FencedError. l.mu is held.
func (l *Ledger[E, R]) held(tok store.Token) (*Entry[E], error) {
	if l.closed {
		return nil, store.ErrClosed
	}
	e := l.emails[tok.ID]
	if e == nil {
		fe := &store.FencedError{Token: tok, Finished: true}
		if d := l.done[tok.ID]; d != nil {
			fe.Attempt, fe.Owner = d.attempt, d.owner
		}
		return nil, fe
	}
	if tok.Owner == "" || e.owner != tok.Owner || e.attempt != tok.Attempt {
		return nil, &store.FencedError{Token: tok, Attempt: e.attempt, Owner: e.owner}
	}
	return e, nil
}

// Renew extends the leases of toks to lease from now. See
// store.Store.Renew.
func (l *Ledger[E, R]) Renew(toks []store.Token, lease time.Duration) ([]error, error) {
	if lease <= 0 {
		return nil, errors.New("mxrelay: store: Renew needs a lease > 0")
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return nil, store.ErrClosed
	}
	errs := make([]error, len(toks))
	now := l.now()
	for i, t := range toks {
		e, err := l.held(t)
		if err != nil {
			errs[i] = err
			continue
		}
		e.expires = now.Add(lease)
		if !e.parked {
			l.remove(e)
			heap.Push(l.queues[inLeased], e)
		}
	}
	return errs, nil
}

// Ending checks toks, calls persist with the emails of those that may
// write their end of data (in the order of toks), and counts an Ending
// record for each. errs[i] says why toks[i] may not: a
// *store.FencedError, or store.ErrCanceled. An error of persist is
// returned as it is, and nothing is counted. See store.Store.Ending.
func (l *Ledger[E, R]) Ending(toks []store.Token, persist func([]*Entry[E]) error) ([]error, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return nil, store.ErrClosed
	}
	errs := make([]error, len(toks))
	var ok []*Entry[E]
	for i, t := range toks {
		e, err := l.held(t)
		switch {
		case err != nil:
			errs[i] = err
		case e.canceled:
			errs[i] = store.ErrCanceled
		case slices.Contains(ok, e):
			// The same token twice: one record is enough, as in one
			// UPDATE of a database.
		default:
			ok = append(ok, e)
		}
	}
	if len(ok) > 0 {
		if err := persist(ok); err != nil {
			return nil, err
		}
	}
	for _, e := range ok {
		e.Ends++
	}
	return errs, nil
}

// Requeue checks tok, calls persist, then records p (answering the
// Ending records) and releases the email for notBefore (zero: now). See
// store.Store.Requeue.
func (l *Ledger[E, R]) Requeue(tok store.Token, p *store.Progress, notBefore time.Time, persist func(*Entry[E]) error) error {
	if p == nil {
		return errors.New("mxrelay: store: Requeue needs the email's progress")
	}
	return l.release(tok, p, notBefore, persist)
}

// HandBack checks tok, calls persist when p is not nil, then records p
// (when not nil) and releases the email, ready now. See
// store.Store.HandBack.
func (l *Ledger[E, R]) HandBack(tok store.Token, p *store.Progress, persist func(*Entry[E]) error) error {
	if p == nil {
		persist = nil
	}
	return l.release(tok, p, time.Time{}, persist)
}

func (l *Ledger[E, R]) release(tok store.Token, p *store.Progress, notBefore time.Time, persist func(*Entry[E]) error) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	e, err := l.held(tok)
	if err != nil {
		return err
	}
	if persist != nil {
		if err := persist(e); err != nil {
			return err
		}
	}
	if p != nil {
		e.Progress, e.Ends = CloneProgress(p), 0
	}
	l.remove(e)
	e.owner, e.expires, e.parked = "", time.Time{}, false
	e.NotBefore = notBefore
	l.push(e, l.now())
	l.wake()
	return nil
}

// push puts e, not held, in ready or delayed by its retry time, or in
// none when it is on hold. l.mu is held.
func (l *Ledger[E, R]) push(e *Entry[E], now time.Time) {
	switch {
	case e.OnHold:
	case e.NotBefore.After(now):
		heap.Push(l.queues[inDelayed], e)
	default:
		heap.Push(l.queues[inReady], e)
	}
}

// remove takes e out of the queue that holds it, if any. l.mu is held.
func (l *Ledger[E, R]) remove(e *Entry[E]) {
	if e.in != inNone {
		heap.Remove(l.queues[e.in], e.idx)
	}
}

// Finish checks tok and gives its email the result r, with Finished set
// to now: persist records it (and returns what the ledger keeps of it),
// then the email is gone and its result kept. A Finish made again with
// the token that finished the email returns nil. When persist fails the
// email stays held by tok, parked: its lease no longer expires, so that
// no claim of this ledger takes it over (a durable store sends it again
// at its next opening), and the holder may call Finish again. See
// store.Store.Finish.
func (l *Ledger[E, R]) Finish(tok store.Token, r *store.Result, persist func(*Entry[E], *store.Result) (R, error)) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if d := l.done[tok.ID]; d != nil && tok.Owner != "" && d.owner == tok.Owner && d.attempt == tok.Attempt && l.emails[tok.ID] == nil {
		return nil // finished by this very token, earlier
	}
	e, err := l.held(tok)
	if err != nil {
		return err
	}
	if err := l.finish(e, r, persist); err != nil {
		l.remove(e)
		e.parked = true
		return err
	}
	return nil
}

// finish records r as e's result and forgets e. l.mu is held.
func (l *Ledger[E, R]) finish(e *Entry[E], r *store.Result, persist func(*Entry[E], *store.Result) (R, error)) error {
	res := *r
	res.Finished = l.now()
	ref, err := persist(e, &res)
	if err != nil {
		return err
	}
	l.remove(e)
	delete(l.emails, e.Env.ID)
	l.record(&done[R]{id: e.Env.ID, key: e.Env.IdempotencyKey, queued: e.Queued, finished: res.Finished,
		owner: e.owner, attempt: e.attempt, ref: ref})
	l.prune()
	return nil
}

// Cancel finishes email id with r (through persist, as Finish) when no
// one holds it, and reports true; marks it when held, for its holder's
// next Ending and later claims. See store.Store.Cancel.
func (l *Ledger[E, R]) Cancel(id string, r *store.Result, persist func(*Entry[E], *store.Result) (R, error)) (bool, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return false, store.ErrClosed
	}
	e := l.emails[id]
	switch {
	case e == nil && l.liveDone(id) != nil:
		return false, nil
	case e == nil:
		return false, store.ErrNotFound
	case e.owner == "":
		if err := l.finish(e, r, persist); err != nil {
			return false, err
		}
		return true, nil
	}
	if !e.canceled {
		e.canceled, e.cancel = true, r.Error
	}
	return false, nil
}

// Body returns what the store keeps with email id, while it has no
// result: store.ErrNotFound otherwise.
func (l *Ledger[E, R]) Body(id string) (E, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	var zero E
	if l.closed {
		return zero, store.ErrClosed
	}
	e := l.emails[id]
	if e == nil {
		return zero, store.ErrNotFound
	}
	return e.Data, nil
}

// Result returns what the store keeps of email id's result: ErrNotFinished
// while it has none, ErrNotFound when no email or result of that ID is
// kept. See store.Store.Result.
func (l *Ledger[E, R]) Result(id string) (R, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	r, _, err := l.result(id)
	return r, err
}

// result is Result, with the channel closed when the email gets its
// result when it has none yet. l.mu is held.
func (l *Ledger[E, R]) result(id string) (R, <-chan struct{}, error) {
	var zero R
	if l.closed {
		return zero, nil, store.ErrClosed
	}
	if l.emails[id] != nil {
		ch := l.waiters[id]
		if ch == nil {
			ch = make(chan struct{})
			l.waiters[id] = ch
		}
		return zero, ch, store.ErrNotFinished
	}
	if d := l.liveDone(id); d != nil {
		return d.ref, nil, nil
	}
	return zero, nil, store.ErrNotFound
}

// WaitResult blocks until email id has a result, and returns what the
// store keeps of it; store.ErrNotFound as Result, ctx's error when ctx
// ends first, store.ErrClosed when the ledger is closed first.
func (l *Ledger[E, R]) WaitResult(ctx context.Context, id string) (R, error) {
	for {
		l.mu.Lock()
		r, ch, err := l.result(id)
		l.mu.Unlock()
		if !errors.Is(err, store.ErrNotFinished) {
			return r, err
		}
		select {
		case <-ch:
		case <-ctx.Done():
			var zero R
			return zero, ctx.Err()
		}
	}
}

// The moves of time a test (or an operator's tool) needs without waiting
// for the clock: each acts on one email, as a test of pgstore moves its
// row.

// Expire ends email id's lease now, as if its time had run out: any claim
// may take it over. It reports whether the email is held.
func (l *Ledger[E, R]) Expire(id string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	e := l.emails[id]
	if e == nil || e.owner == "" {
		return false
	}
	l.remove(e)
	e.expires, e.parked = l.now(), false
	heap.Push(l.queues[inLeased], e)
	return true
}

// Due makes email id's retry time now. It reports whether the email waits
// for one.
func (l *Ledger[E, R]) Due(id string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	e := l.emails[id]
	if e == nil || e.in != inDelayed {
		return false
	}
	l.remove(e)
	e.NotBefore = l.now()
	heap.Push(l.queues[inReady], e)
	return true
}

// Outlive makes email id's result older than the retention time, so
// that it is forgotten. It reports whether the ledger keeps one.
func (l *Ledger[E, R]) Outlive(id string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	r := l.done[id]
	if r == nil {
		return false
	}
	r.finished = r.finished.Add(-l.retention)
	l.prune()
	return true
}

// queue is a heap of emails that keeps each email's place in it (in,
// idx), so that an email can be taken out from anywhere.
type queue[E any] struct {
	kind  int8
	items []*Entry[E]
	less  func(a, b *Entry[E]) bool
}

func (q *queue[E]) Len() int           { return len(q.items) }
func (q *queue[E]) Less(i, j int) bool { return q.less(q.items[i], q.items[j]) }
func (q *queue[E]) Swap(i, j int) {
	q.items[i], q.items[j] = q.items[j], q.items[i]
	q.items[i].idx, q.items[j].idx = i, j
}

func (q *queue[E]) Push(x any) {
	e := x.(*Entry[E])
	e.in, e.idx = q.kind, len(q.items)
	q.items = append(q.items, e)
}

func (q *queue[E]) Pop() any {
	e := q.items[len(q.items)-1]
	q.items[len(q.items)-1] = nil
	q.items = q.items[:len(q.items)-1]
	e.in, e.idx = inNone, -1
	return e
}
