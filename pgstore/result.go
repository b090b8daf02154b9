package pgstore

import (
	"context"
	"encoding/json"
	"errors"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/mxrelay/mxrelay/internal/store"
)

// Result reads email id's result. See store.Store.Result.
func (s *Store) Result(ctx context.Context, id string) (*store.Result, error) {
	if err := s.check(); err != nil {
		return nil, err
	}
	var finished *time.Time
	var res []byte
	err := s.pool.QueryRow(ctx, s.sql(`SELECT finished_at, result FROM {s}.email WHERE id = $1 AND ord IS NOT NULL`), id).Scan(&finished, &res)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, store.ErrNotFound
	}
	if err != nil {
		return nil, fail("result", err)
	}
	if finished == nil {
		return nil, store.ErrNotFinished
	}
	r := new(store.Result)
	if err := json.Unmarshal(res, r); err != nil {
		return nil, fail("result", err)
	}
	r.Finished = *finished
	return r, nil
}

// WaitResult waits for the result's notification, looking again at each
// PollInterval and whenever the listener may have missed one. See
// store.Store.WaitResult.
func (s *Store) WaitResult(ctx context.Context, id string) (*store.Result, error) {
	poll := time.NewTimer(s.opts.PollInterval)
	defer poll.Stop()
	for {
		// Watched before the look, so that a result recorded between the
		// two is not missed.
		notified := s.watch(id)
		r, err := s.Result(ctx, id)
		if err == nil || errors.Is(err, store.ErrNotFound) || errors.Is(err, store.ErrClosed) || !s.retryable(err) {
			s.unwatch(id, notified)
			return r, err
		}
		if s.hooks.waiting != nil {
			s.hooks.waiting(id)
		}
		poll.Reset(s.opts.PollInterval)
		select {
		case <-notified:
		case <-poll.C:
		case <-ctx.Done():
			s.unwatch(id, notified)
			return nil, ctx.Err()
		case <-s.ctx.Done():
			s.unwatch(id, notified)
			return nil, store.ErrClosed
		}
		s.unwatch(id, notified)
	}
}

// retryable reports whether WaitResult waits after err: no result yet, or
// the store out of reach for now.
func (s *Store) retryable(err error) bool {
	return errors.Is(err, store.ErrNotFinished) || errors.Is(err, store.ErrUnavailable)
}

// Reap removes the results recorded more than ResultRetention ago, with
// their emails (their IdempotencyKeys can then be used again), and
// returns how many. The store calls it every ReapInterval.
func (s *Store) Reap(ctx context.Context) (int64, error) {
	if err := s.check(); err != nil {
		return 0, err
	}
	tag, err := s.pool.Exec(ctx, s.sql(`DELETE FROM {s}.email WHERE finished_at < now() - $1 * interval '1 microsecond'`),
		s.opts.ResultRetention.Microseconds())
	if err != nil {
		return 0, fail("reap", err)
	}
	return tag.RowsAffected(), nil
}

// reaper runs Reap every ReapInterval until Close.
func (s *Store) reaper() {
	defer s.wg.Done()
	t := time.NewTicker(s.opts.ReapInterval)
	defer t.Stop()
	for {
		select {
		case <-s.ctx.Done():
			return
		case <-t.C:
		}
		if n, err := s.Reap(s.ctx); err != nil {
			if s.ctx.Err() == nil {
				s.log.Warn("mxrelay: pgstore: removing old results", "err", err)
			}
		} else if n > 0 {
			s.log.Debug("mxrelay: pgstore: old results removed", "count", n)
		}
	}
}
