package spool

import (
	"context"
	"fmt"
	"time"

	"github.com/mxrelay/mxrelay/internal/store"
	"github.com/mxrelay/mxrelay/internal/store/ledger"
)

// The operator's changes (store.Admin): the ledger decides, and the
// journal records first what it decides, as for the seam's methods. They
// need the Store, and so the directory's lock: an operator's tool opens
// the spool to make them, which it can only do while no Client runs on
// it (Reader reads it meanwhile).

var _ store.Admin = (*Store)(nil)

// Hold writes an "H" line, then puts the email on hold. Claims live in
// this process only, so a claim it fences is this Store's own. See
// store.Admin.Hold.
func (s *Store) Hold(_ context.Context, id string, force bool) (*store.Info, bool, error) {
	return s.l.Hold(id, force, func(e *ledger.Entry[*file]) error { return s.appendMark("H", e.Data.name) })
}

// Release writes a "U" line, then takes the email off hold. See
// store.Admin.Release.
func (s *Store) Release(_ context.Context, id string) (*store.Info, bool, error) {
	return s.l.Release(id, func(e *ledger.Entry[*file]) error { return s.appendMark("U", e.Data.name) })
}

// Retry writes the email's "D" line again without its retry time, then
// makes it ready. An email waits for a retry time only after a Requeue
// with progress, which answered its "E" lines: rewriting that progress
// answers none. See store.Admin.Retry.
func (s *Store) Retry(_ context.Context, id string) (*store.Info, bool, error) {
	return s.l.Retry(id, func(e *ledger.Entry[*file]) error {
		if e.Progress == nil || e.Ends > 0 {
			// Not a retry time a Requeue set: a "D" line now would take
			// away what the journal says.
			return fmt.Errorf("mxrelay: spool: %s: no progress to rewrite without its retry time", id)
		}
		return s.appendProgress(e.Data.name, e.Progress, time.Time{})
	})
}

// Delete writes the email's "R" line, a store.DeletedResult, and removes
// its file, as Finish does. See store.Admin.Delete.
func (s *Store) Delete(_ context.Context, id string, force bool) (*store.Info, bool, error) {
	i, changed, err := s.l.Delete(id, force, s.persistResult)
	if changed {
		s.compactIfLong()
	}
	return i, changed, err
}
