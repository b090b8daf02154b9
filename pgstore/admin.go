package pgstore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/mxrelay/mxrelay/internal/store"
)

// The operator's side (store.Inspector, store.Admin), live: every process
// sees a change at its next statement. A state is store.StateOf of the
// row's facts by the server's clock. A change is one transaction that
// locks the row (FOR UPDATE), so that no claim takes it meanwhile (they
// skip locked rows) and a holder's write waits and then finds the row
// changed; store.Decide decides it from what the row says.

var (
	_ store.Inspector = (*Store)(nil)
	_ store.Admin     = (*Store)(nil)
)

// infoColumns are what an Info is read from (scanInfo), the server's
// now() last.
const infoColumns = `e.id, e.envelope, e.body_size, e.queued_at, nullif(e.not_before, '-infinity'), e.attempt,
	coalesce(e.owner, ''), e.lease_expires, e.ends, e.progress, coalesce(e.cancel, ''), e.finished_at, e.result,
	e.held_at IS NOT NULL, e.not_before > now(), now()`

// scanInfo reads an Info from a row of infoColumns, and the server's now.
func scanInfo(row pgx.Row) (*store.Info, time.Time, error) {
	i := &store.Info{}
	var envelope, progress, result []byte
	var notBefore, expires, finished *time.Time
	var onHold, waiting bool
	var now time.Time
	err := row.Scan(&i.ID, &envelope, &i.BodySize, &i.Queued, &notBefore, &i.Attempt,
		&i.Owner, &expires, &i.Unanswered, &progress, &i.Canceled, &finished, &result,
		&onHold, &waiting, &now)
	if err != nil {
		return nil, now, err
	}
	if err := json.Unmarshal(envelope, &i.Envelope); err != nil {
		return nil, now, err
	}
	if progress != nil {
		i.Progress = new(store.Progress)
		if err := json.Unmarshal(progress, i.Progress); err != nil {
			return nil, now, err
		}
	}
	if finished != nil {
		i.Result = new(store.Result)
		if err := json.Unmarshal(result, i.Result); err != nil {
			return nil, now, err
		}
		i.Result.Finished = *finished
	}
	if notBefore != nil {
		i.NotBefore = *notBefore
	}
	if expires != nil {
		i.Expires = *expires
	}
	i.State = store.StateOf(finished != nil, onHold, i.Owner != "", waiting)
	return i, now, nil
}

// List reads the rows of the states f lists in one statement: those not
// finished are read only if f lists a state of theirs, and the finished
// ones only if it lists finished. See store.Inspector.List.
func (s *Store) List(ctx context.Context, f store.Filter) ([]*store.Info, error) {
	if err := s.check(); err != nil {
		return nil, err
	}
	unfinished := slices.ContainsFunc(store.States, func(st store.State) bool { return st != store.StateFinished && f.Has(st) })
	rows, err := s.pool.Query(ctx, s.sql(`SELECT `+infoColumns+` FROM {s}.email e
		WHERE e.ord IS NOT NULL AND (e.finished_at IS NULL AND $1 OR e.finished_at IS NOT NULL AND $2)
		ORDER BY e.finished_at DESC NULLS FIRST, e.priority DESC, e.ord`), unfinished, f.Has(store.StateFinished))
	if err != nil {
		return nil, fail("list", err)
	}
	defer rows.Close()
	var out []*store.Info
	for rows.Next() {
		i, _, err := scanInfo(rows)
		if err != nil {
			return nil, fail("list", err)
		}
		if f.Has(i.State) {
			out = append(out, i)
		}
	}
	if err := rows.Err(); err != nil {
		return nil, fail("list", err)
	}
	return out, nil
}

// Inspect reads email id's row. See store.Inspector.Inspect.
func (s *Store) Inspect(ctx context.Context, id string) (*store.Info, error) {
	if err := s.check(); err != nil {
		return nil, err
	}
	i, _, err := s.inspect(ctx, s.pool, id, "")
	return i, err
}

// inspect reads email id's row through q, with suffix after the query
// (" FOR UPDATE"), and the server's now: store.ErrNotFound when there is
// no such row.
func (s *Store) inspect(ctx context.Context, q interface {
	QueryRow(context.Context, string, ...any) pgx.Row
}, id, suffix string) (*store.Info, time.Time, error) {
	i, now, err := scanInfo(q.QueryRow(ctx, s.sql(`SELECT `+infoColumns+` FROM {s}.email e
		WHERE e.id = $1 AND e.ord IS NOT NULL`+suffix), id))
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, now, fmt.Errorf("%w: %s", store.ErrNotFound, id)
	}
	if err != nil {
		return nil, now, fail("inspect", err)
	}
	return i, now, nil
}

// Counts counts the rows by their facts in one statement. See
// store.Inspector.Counts.
func (s *Store) Counts(ctx context.Context) (map[store.State]int, error) {
	if err := s.check(); err != nil {
		return nil, err
	}
	rows, err := s.pool.Query(ctx, s.sql(`SELECT e.finished_at IS NOT NULL, e.held_at IS NOT NULL,
		e.owner IS NOT NULL, e.not_before > now(), count(*)
		FROM {s}.email e WHERE e.ord IS NOT NULL GROUP BY 1, 2, 3, 4`))
	if err != nil {
		return nil, fail("counts", err)
	}
	defer rows.Close()
	n := map[store.State]int{}
	for _, st := range store.States {
		n[st] = 0
	}
	for rows.Next() {
		var finished, onHold, claimed, waiting bool
		var k int
		if err := rows.Scan(&finished, &onHold, &claimed, &waiting, &k); err != nil {
			return nil, fail("counts", err)
		}
		n[store.StateOf(finished, onHold, claimed, waiting)] += k
	}
	if err := rows.Err(); err != nil {
		return nil, fail("counts", err)
	}
	return n, nil
}

// Hold sets held_at and clears the claim, if any. See store.Admin.Hold.
func (s *Store) Hold(ctx context.Context, id string, force bool) (*store.Info, bool, error) {
	return s.change(ctx, "hold", store.OpHold, id, force, func(*store.Info) (string, []any) {
		return `UPDATE {s}.email SET held_at = now(), owner = NULL, lease_expires = NULL WHERE id = $1`, nil
	})
}

// Release clears held_at: the trigger notifies the claimers. See
// store.Admin.Release.
func (s *Store) Release(ctx context.Context, id string) (*store.Info, bool, error) {
	return s.change(ctx, "release", store.OpRelease, id, false, func(*store.Info) (string, []any) {
		return `UPDATE {s}.email SET held_at = NULL WHERE id = $1`, nil
	})
}

// Retry sets not_before to now: the trigger notifies the claimers. See
// store.Admin.Retry.
func (s *Store) Retry(ctx context.Context, id string) (*store.Info, bool, error) {
	return s.change(ctx, "retry", store.OpRetry, id, false, func(*store.Info) (string, []any) {
		return `UPDATE {s}.email SET not_before = now() WHERE id = $1`, nil
	})
}

// Delete records store.DeletedResult and removes the body in one
// statement, as Finish does, with the claim cleared: the row keeps no
// token, so that its holder's Finish is fenced instead of taken for its
// own. The trigger notifies the result's waiters. See store.Admin.Delete.
func (s *Store) Delete(ctx context.Context, id string, force bool) (*store.Info, bool, error) {
	return s.change(ctx, "delete", store.OpDelete, id, force, func(i *store.Info) (string, []any) {
		res, _ := json.Marshal(store.DeletedResult(i)) // a struct of strings and numbers
		return `WITH u AS (
				UPDATE {s}.email SET finished_at = now(), result = $2, owner = NULL, lease_expires = NULL,
					meta = NULL, held_at = NULL
				WHERE id = $1 RETURNING id)
			DELETE FROM {s}.body b USING u WHERE b.id = u.id`, []any{string(res)}
	})
}

// change is an Admin change of email id in one transaction: the row is
// read and locked, store.Decide decides op, and the statement apply
// gives ($1 the ID, then its arguments) makes the change.
func (s *Store) change(ctx context.Context, name string, op store.Op, id string, force bool,
	apply func(*store.Info) (string, []any)) (*store.Info, bool, error) {
	if err := s.check(); err != nil {
		return nil, false, err
	}
	tx, err := s.pool.Begin(ctx)
	if err != nil {
		return nil, false, fail(name, err)
	}
	defer tx.Rollback(context.WithoutCancel(ctx))
	i, now, err := s.inspect(ctx, tx, id, " FOR UPDATE OF e")
	if err != nil && !errors.Is(err, store.ErrNotFound) {
		return nil, false, err
	}
	change, err := store.Decide(op, i, force, now)
	if err != nil || !change {
		return i, false, err
	}
	stmt, args := apply(i)
	if _, err := tx.Exec(ctx, s.sql(stmt), append([]any{id}, args...)...); err != nil {
		return i, false, fail(name, err)
	}
	if err := tx.Commit(ctx); err != nil {
		return i, false, fail(name, err)
	}
	return i, true, nil
}
