package pgstore

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"slices"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/mxrelay/mxrelay/internal/store"
)

// Every write of a claim holder matches its row on (id, owner, attempt)
// with finished_at NULL, under the row's lock: a Claim that took the email
// over raised attempt first, a release cleared owner, a result set
// finished_at. Whatever does not match is refused (fenced) and explained
// by fenced.

// Claim takes the ready emails with FOR UPDATE SKIP LOCKED, so that
// concurrent claimers, in any process, skip each other's rows instead of
// waiting on them. See store.Store.Claim.
func (s *Store) Claim(ctx context.Context, owner string, n int, lease time.Duration) ([]*store.Claimed, time.Time, error) {
	if err := s.check(); err != nil {
		return nil, time.Time{}, err
	}
	if owner == "" || n <= 0 || lease <= 0 {
		return nil, time.Time{}, errors.New("mxrelay: pgstore: Claim needs an owner, n > 0 and a lease > 0")
	}
	rows, err := s.pool.Query(ctx, s.sql(`
		WITH c AS (
			SELECT id FROM {s}.email
			WHERE finished_at IS NULL AND ord IS NOT NULL AND not_before <= now() AND held_at IS NULL
				AND (owner IS NULL OR lease_expires <= now())
			ORDER BY priority DESC, ord
			LIMIT $1
			FOR UPDATE SKIP LOCKED)
		UPDATE {s}.email e
		SET attempt = e.attempt + 1, owner = $2, lease_expires = now() + $3 * interval '1 microsecond'
		FROM c WHERE e.id = c.id
		RETURNING e.id, e.attempt, e.ord, e.envelope, e.meta, e.body_size, e.queued_at, e.lease_expires,
			e.progress, e.ends, coalesce(e.cancel, '')`),
		n, owner, lease.Microseconds())
	if err != nil {
		return nil, time.Time{}, fail("claim", err)
	}
	type row struct {
		c   *store.Claimed
		ord int64
	}
	var got []row
	for rows.Next() {
		c := &store.Claimed{Token: store.Token{Owner: owner}}
		var ord int64
		var envelope, progress []byte
		if err := rows.Scan(&c.Token.ID, &c.Token.Attempt, &ord, &envelope, &c.Meta, &c.BodySize, &c.Queued, &c.Expires,
			&progress, &c.Unanswered, &c.Canceled); err != nil {
			rows.Close()
			return nil, time.Time{}, fail("claim", err)
		}
		if err := json.Unmarshal(envelope, &c.Envelope); err != nil {
			rows.Close()
			return nil, time.Time{}, fail("claim", err)
		}
		if progress != nil {
			c.Progress = new(store.Progress)
			if err := json.Unmarshal(progress, c.Progress); err != nil {
				rows.Close()
				return nil, time.Time{}, fail("claim", err)
			}
		}
		got = append(got, row{c, ord})
	}
	if err := rows.Err(); err != nil {
		// The transaction did not commit: nothing was claimed.
		return nil, time.Time{}, fail("claim", err)
	}
	// RETURNING has no order of its own.
	slices.SortFunc(got, func(a, b row) int {
		return cmp.Or(cmp.Compare(b.c.Priority, a.c.Priority), cmp.Compare(a.ord, b.ord))
	})
	claimed := make([]*store.Claimed, len(got))
	for i, r := range got {
		claimed[i] = r.c
	}
	if len(claimed) == n {
		return claimed, time.Time{}, nil
	}
	var next *time.Time
	err = s.pool.QueryRow(ctx, s.sql(`SELECT least(
		(SELECT min(not_before) FROM {s}.email WHERE finished_at IS NULL AND owner IS NULL AND not_before > now() AND held_at IS NULL),
		(SELECT min(lease_expires) FROM {s}.email WHERE finished_at IS NULL AND owner IS NOT NULL))`)).Scan(&next)
	if err != nil {
		// The claims stand: the caller polls instead.
		s.log.Debug("mxrelay: pgstore: next due time", "err", err)
		return claimed, time.Time{}, nil
	}
	if next == nil {
		return claimed, time.Time{}, nil
	}
	return claimed, *next, nil
}

// tokens are toks as the three arrays unnest takes.
func tokens(toks []store.Token) (ids, owners []string, attempts []int64) {
	for _, t := range toks {
		ids = append(ids, t.ID)
		owners = append(owners, t.Owner)
		attempts = append(attempts, t.Attempt)
	}
	return ids, owners, attempts
}

// batch runs update, a statement over the tokens in unnest($1, $2, $3)
// AS t(id, owner, attempt) with more arguments after them, returning the
// IDs it wrote; errs[i] is nil for toks[i] written, else why not: the
// token's row is read again and refused says why (canceled, or fenced).
func (s *Store) batch(ctx context.Context, op string, toks []store.Token, update string, args ...any) ([]error, error) {
	if err := s.check(); err != nil {
		return nil, err
	}
	errs := make([]error, len(toks))
	if len(toks) == 0 {
		return errs, nil
	}
	ids, owners, attempts := tokens(toks)
	rows, err := s.pool.Query(ctx, s.sql(update), append([]any{ids, owners, attempts}, args...)...)
	if err != nil {
		return nil, fail(op, err)
	}
	written, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, fail(op, err)
	}
	var missed []store.Token
	for i, t := range toks {
		if !slices.Contains(written, t.ID) {
			missed = append(missed, t)
			errs[i] = &store.FencedError{Token: t}
		}
	}
	if len(missed) == 0 {
		return errs, nil
	}
	why, err := s.refused(ctx, missed)
	if err != nil {
		// Refused all the same: only the explanation is missing.
		return errs, nil
	}
	for i, t := range toks {
		if e, ok := why[t]; ok {
			errs[i] = e
		}
	}
	return errs, nil
}

// refused explains why writes with toks were refused: ErrCanceled for a
// token that still holds its email, which Cancel marked; a
// *store.FencedError with the email's state now otherwise.
func (s *Store) refused(ctx context.Context, toks []store.Token) (map[store.Token]error, error) {
	ids, _, _ := tokens(toks)
	rows, err := s.pool.Query(ctx, s.sql(`
		SELECT id, attempt, coalesce(owner, ''), finished_at IS NOT NULL, cancel IS NOT NULL
		FROM {s}.email WHERE id = ANY($1)`), ids)
	if err != nil {
		return nil, err
	}
	type state struct {
		attempt            int64
		owner              string
		finished, canceled bool
	}
	now := map[string]state{}
	for rows.Next() {
		var id string
		var st state
		if err := rows.Scan(&id, &st.attempt, &st.owner, &st.finished, &st.canceled); err != nil {
			rows.Close()
			return nil, err
		}
		now[id] = st
	}
	if err := rows.Err(); err != nil {
		return nil, err
	}
	why := map[store.Token]error{}
	for _, t := range toks {
		st, ok := now[t.ID]
		switch {
		case !ok: // its result was reaped
			why[t] = &store.FencedError{Token: t, Finished: true}
		case st.canceled && !st.finished && st.owner == t.Owner && st.attempt == t.Attempt:
			why[t] = store.ErrCanceled
		default:
			why[t] = &store.FencedError{Token: t, Attempt: st.attempt, Owner: st.owner, Finished: st.finished}
		}
	}
	return why, nil
}

// one is batch for one token.
func (s *Store) one(ctx context.Context, op string, tok store.Token, update string, args ...any) error {
	errs, err := s.batch(ctx, op, []store.Token{tok}, update, args...)
	if err != nil {
		return err
	}
	return errs[0]
}

// Renew extends the leases of toks. See store.Store.Renew.
func (s *Store) Renew(ctx context.Context, toks []store.Token, lease time.Duration) ([]error, error) {
	if lease <= 0 {
		return nil, errors.New("mxrelay: pgstore: Renew needs a lease > 0")
	}
	return s.batch(ctx, "renew", toks, `
		UPDATE {s}.email e SET lease_expires = now() + $4 * interval '1 microsecond'
		FROM unnest($1::text[], $2::text[], $3::bigint[]) AS t(id, owner, attempt)
		WHERE e.id = t.id AND e.owner = t.owner AND e.attempt = t.attempt AND e.finished_at IS NULL
		RETURNING e.id`, lease.Microseconds())
}

// Ending records the ends of data of a window in one statement. An email
// Cancel marked is not recorded: ErrCanceled. See store.Store.Ending.
func (s *Store) Ending(ctx context.Context, toks []store.Token) ([]error, error) {
	return s.batch(ctx, "ending", toks, `
		UPDATE {s}.email e SET ends = e.ends + 1
		FROM unnest($1::text[], $2::text[], $3::bigint[]) AS t(id, owner, attempt)
		WHERE e.id = t.id AND e.owner = t.owner AND e.attempt = t.attempt AND e.finished_at IS NULL
			AND e.cancel IS NULL
		RETURNING e.id`)
}

// release is Requeue and HandBack: the email's lease ends, with p
// recorded (answering its Ending records) unless nil, ready at notBefore.
// The trigger notifies the claimers.
func (s *Store) release(ctx context.Context, op string, tok store.Token, p *store.Progress, notBefore time.Time) error {
	var progress *string
	if p != nil {
		b, err := json.Marshal(p)
		if err != nil {
			return err
		}
		text := string(b)
		progress = &text
	}
	var at *time.Time
	if !notBefore.IsZero() {
		at = &notBefore
	}
	return s.one(ctx, op, tok, `
		UPDATE {s}.email e SET owner = NULL, lease_expires = NULL,
			progress = CASE WHEN $4::jsonb IS NULL THEN e.progress ELSE $4::jsonb END,
			ends = CASE WHEN $4::jsonb IS NULL THEN e.ends ELSE 0 END,
			not_before = coalesce($5, now())
		FROM unnest($1::text[], $2::text[], $3::bigint[]) AS t(id, owner, attempt)
		WHERE e.id = t.id AND e.owner = t.owner AND e.attempt = t.attempt AND e.finished_at IS NULL
		RETURNING e.id`, progress, at)
}

// Requeue records p and releases the email for notBefore. See
// store.Store.Requeue.
func (s *Store) Requeue(ctx context.Context, tok store.Token, p *store.Progress, notBefore time.Time) error {
	if p == nil {
		return errors.New("mxrelay: pgstore: Requeue needs the email's progress")
	}
	return s.release(ctx, "requeue", tok, p, notBefore)
}

// HandBack releases the email, ready now. See store.Store.HandBack.
func (s *Store) HandBack(ctx context.Context, tok store.Token, p *store.Progress) error {
	return s.release(ctx, "hand back", tok, p, time.Time{})
}

// Finish records r and removes the body, in one statement; the trigger
// notifies the result's waiters. The row keeps the finishing owner and
// attempt, so that a Finish made again with the same token after a lost
// reply finds its own result and returns nil. See store.Store.Finish.
func (s *Store) Finish(ctx context.Context, tok store.Token, r *store.Result) error {
	res, err := json.Marshal(r)
	if err != nil {
		return err
	}
	err = s.one(ctx, "finish", tok, `
		WITH u AS (
			UPDATE {s}.email e SET finished_at = now(), result = $4, lease_expires = NULL, meta = NULL
			FROM unnest($1::text[], $2::text[], $3::bigint[]) AS t(id, owner, attempt)
			WHERE e.id = t.id AND e.owner = t.owner AND e.attempt = t.attempt AND e.finished_at IS NULL
			RETURNING e.id),
		d AS (DELETE FROM {s}.body b USING u WHERE b.id = u.id)
		SELECT id FROM u`, string(res))
	var fe *store.FencedError
	if errors.As(err, &fe) && fe.Finished && fe.Owner == tok.Owner && fe.Attempt == tok.Attempt {
		return nil // finished by this very token, earlier
	}
	return err
}

// Cancel finishes an email no one holds, or marks a held one, in one
// statement under the row's lock. See store.Store.Cancel.
func (s *Store) Cancel(ctx context.Context, id string, r *store.Result) (bool, error) {
	if err := s.check(); err != nil {
		return false, err
	}
	res, err := json.Marshal(r)
	if err != nil {
		return false, err
	}
	var finished, marked int
	err = s.pool.QueryRow(ctx, s.sql(`
		WITH e AS (SELECT id, owner IS NULL AS free FROM {s}.email WHERE id = $1 AND finished_at IS NULL FOR UPDATE),
		f AS (
			UPDATE {s}.email x SET finished_at = now(), result = $2, cancel = $3, meta = NULL
			FROM e WHERE x.id = e.id AND e.free RETURNING x.id),
		d AS (DELETE FROM {s}.body b USING f WHERE b.id = f.id),
		m AS (UPDATE {s}.email x SET cancel = coalesce(x.cancel, $3) FROM e WHERE x.id = e.id AND NOT e.free RETURNING x.id)
		SELECT (SELECT count(*) FROM f), (SELECT count(*) FROM m)`), id, string(res), r.Error).Scan(&finished, &marked)
	if err != nil {
		return false, fail("cancel", err)
	}
	if finished > 0 || marked > 0 {
		return finished > 0, nil
	}
	var done bool
	err = s.pool.QueryRow(ctx, s.sql(`SELECT finished_at IS NOT NULL FROM {s}.email WHERE id = $1`), id).Scan(&done)
	if errors.Is(err, pgx.ErrNoRows) {
		return false, store.ErrNotFound
	}
	return false, fail("cancel", err)
}
