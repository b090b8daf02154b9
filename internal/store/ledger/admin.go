package ledger

import (
	"time"

	"github.com/mxrelay/mxrelay/internal/store"
)

// The operator's changes (store.Admin), decided by store.Decide and
// applied under the ledger's mutex, each after its persist callback
// recorded it, as the seam's transitions are.

// Describe is what e says of its email at now (store.Info), Result
// unset. For an Entry the ledger owns, l.mu is held.
func Describe[E any](e *Entry[E], now time.Time) *store.Info {
	return &store.Info{
		Envelope:   cloneEnvelope(e.Env),
		State:      store.StateOf(false, e.OnHold, e.owner != "", e.NotBefore.After(now)),
		Queued:     e.Queued,
		BodySize:   e.BodySize,
		Attempt:    e.attempt,
		Owner:      e.owner,
		Expires:    e.expires,
		NotBefore:  e.NotBefore,
		Progress:   CloneProgress(e.Progress),
		Unanswered: e.Ends,
		Canceled:   e.canceledFor(),
	}
}

// Hold puts email id on hold: persist records it, then the email leaves
// the queues, its claim, if any, released (fenced). See store.Admin.Hold.
func (l *Ledger[E, R]) Hold(id string, force bool, persist func(*Entry[E]) error) (*store.Info, bool, error) {
	return l.admin(store.OpHold, id, force, func(e *Entry[E], _ *store.Info) error {
		if err := persist(e); err != nil {
			return err
		}
		l.remove(e)
		e.owner, e.expires, e.parked = "", time.Time{}, false
		e.OnHold = true
		return nil
	})
}

// Release takes email id off hold: persist records it, then the email is
// back in the queues. See store.Admin.Release.
func (l *Ledger[E, R]) Release(id string, persist func(*Entry[E]) error) (*store.Info, bool, error) {
	return l.admin(store.OpRelease, id, false, func(e *Entry[E], _ *store.Info) error {
		if err := persist(e); err != nil {
			return err
		}
		e.OnHold = false
		l.push(e, l.now())
		l.wake()
		return nil
	})
}

// Retry clears email id's retry time: persist records it, then the email
// is ready (unless on hold). See store.Admin.Retry.
func (l *Ledger[E, R]) Retry(id string, persist func(*Entry[E]) error) (*store.Info, bool, error) {
	return l.admin(store.OpRetry, id, false, func(e *Entry[E], _ *store.Info) error {
		if err := persist(e); err != nil {
			return err
		}
		l.remove(e)
		e.NotBefore = time.Time{}
		l.push(e, l.now())
		l.wake()
		return nil
	})
}

// Delete finishes email id with store.DeletedResult, through persist as
// Finish does, its claim, if any, released first: no token finished it,
// so that its holder's Finish is fenced. See store.Admin.Delete.
func (l *Ledger[E, R]) Delete(id string, force bool, persist func(*Entry[E], *store.Result) (R, error)) (*store.Info, bool, error) {
	return l.admin(store.OpDelete, id, force, func(e *Entry[E], i *store.Info) error {
		owner := e.owner
		e.owner = ""
		if err := l.finish(e, store.DeletedResult(i), persist); err != nil {
			e.owner = owner
			return err
		}
		return nil
	})
}

// admin decides op for email id and, when there is something to do,
// applies it with act. A finished email is described by its State alone.
func (l *Ledger[E, R]) admin(op store.Op, id string, force bool, act func(*Entry[E], *store.Info) error) (*store.Info, bool, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return nil, false, store.ErrClosed
	}
	now := l.now()
	var i *store.Info
	e := l.emails[id]
	switch {
	case e != nil:
		i = Describe(e, now)
	case l.liveDone(id) != nil:
		i = &store.Info{Envelope: store.Envelope{ID: id}, State: store.StateFinished}
	}
	change, err := store.Decide(op, i, force, now)
	if err != nil || !change {
		return i, false, err
	}
	if err := act(e, i); err != nil {
		return i, false, err
	}
	return i, true, nil
}
