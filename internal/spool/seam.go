package spool

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/mxrelay/mxrelay/internal/store"
	"github.com/mxrelay/mxrelay/internal/store/ledger"
)

// The methods of the seam: the ledger decides, and the journal records
// first what it decides (see the package doc). Claims and renewals are
// not recorded: at Open every email is taken over.

// Claim takes ready emails. See store.Store.Claim.
func (s *Store) Claim(_ context.Context, owner string, n int, lease time.Duration) ([]*store.Claimed, time.Time, error) {
	return s.l.Claim(owner, n, lease)
}

// Renew extends leases. See store.Store.Renew.
func (s *Store) Renew(_ context.Context, toks []store.Token, lease time.Duration) ([]error, error) {
	return s.l.Renew(toks, lease)
}

// Ending writes the "E" lines of a window in one write(2). When it fails
// (a full disk) no end of data may be written; the lines are cut off. See
// store.Store.Ending.
func (s *Store) Ending(_ context.Context, toks []store.Token) ([]error, error) {
	return s.l.Ending(toks, func(es []*ledger.Entry[*file]) error {
		names := make([]string, len(es))
		for i, e := range es {
			names[i] = e.Data.name
		}
		return s.appendEnds(names)
	})
}

// Requeue writes a "D" line, then releases the email for notBefore. See
// store.Store.Requeue.
func (s *Store) Requeue(_ context.Context, tok store.Token, p *store.Progress, notBefore time.Time) error {
	return s.l.Requeue(tok, p, notBefore, func(e *ledger.Entry[*file]) error {
		return s.appendProgress(e.Data.name, p, notBefore)
	})
}

// HandBack writes a "D" line when p is not nil, then releases the email.
// See store.Store.HandBack.
func (s *Store) HandBack(_ context.Context, tok store.Token, p *store.Progress) error {
	return s.l.HandBack(tok, p, func(e *ledger.Entry[*file]) error {
		return s.appendProgress(e.Data.name, p, time.Time{})
	})
}

// Finish writes an "R" line, then removes the email's file. When the
// line cannot be written the file stays, and the email stays held by tok
// for the rest of this Store's life (Finish may be tried again): the next
// Open sends it again, or takes it for an unknown outcome if its end of
// data was recorded. See store.Store.Finish.
func (s *Store) Finish(_ context.Context, tok store.Token, r *store.Result) error {
	err := s.l.Finish(tok, r, s.persistResult)
	if err == nil {
		s.compactIfLong()
	}
	return err
}

// Cancel finishes an email no one holds (an "R" line), or marks a held
// one in memory: a mark is not recorded, and does not outlive the Store.
// See store.Store.Cancel.
func (s *Store) Cancel(_ context.Context, id string, r *store.Result) (bool, error) {
	finished, err := s.l.Cancel(id, r, s.persistResult)
	if finished {
		s.compactIfLong()
	}
	return finished, err
}

// compactIfLong compacts the journal once it passes Options.MaxJournal. The
// result that took it there is recorded already: a failure is logged,
// and the old journal stays in use.
func (s *Store) compactIfLong() {
	s.jmu.Lock()
	defer s.jmu.Unlock()
	if s.journal == nil || s.size <= s.opts.MaxJournal {
		return
	}
	if _, err := s.compact(false); err != nil {
		s.log.Error("mxrelay: spool: compacting the journal", "dir", s.dir, "err", err)
	}
}

// Body opens email id's file and reads its body from it. See
// store.Store.Body.
func (s *Store) Body(ctx context.Context, id string) (io.ReadCloser, error) {
	f, err := s.l.Body(id)
	if err != nil {
		return nil, err
	}
	fd, err := os.Open(filepath.Join(s.dir, f.name))
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("%w: the file of %s is gone", store.ErrNotFound, id)
	}
	if err != nil {
		return nil, fmt.Errorf("mxrelay: spool: %w", err)
	}
	return ledger.Reader(ctx, fd, f.off, f.size, &f.gone, fd), nil
}

// Result reads email id's result from the journal or results.log. See
// store.Store.Result.
func (s *Store) Result(_ context.Context, id string) (*store.Result, error) {
	loc, err := s.l.Result(id)
	if err != nil {
		return nil, err
	}
	return s.load(loc)
}

// WaitResult waits for a result this Store records, or recorded before.
// See store.Store.WaitResult.
func (s *Store) WaitResult(ctx context.Context, id string) (*store.Result, error) {
	loc, err := s.l.WaitResult(ctx, id)
	if err != nil {
		return nil, err
	}
	return s.load(loc)
}

// Wake returns a channel closed when an email is accepted or released.
func (s *Store) Wake() <-chan struct{} { return s.l.Wake() }
