package pgstore

import (
	"context"
	"encoding/json"
	"errors"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/mxrelay/mxrelay/internal/store"
)

// chunkSize is the size of the body's rows: what one write or read of a
// body holds in memory at most.
const chunkSize = 1 << 20

// Accept begins accepting env in a transaction of its own, which holds a
// connection of the pool until Commit or Abort. The email's row is
// inserted at once: a second Accept with the same IdempotencyKey or ID
// waits on the unique index until this one ends. See store.Store.Accept.
func (s *Store) Accept(ctx context.Context, env *store.Envelope) (store.Draft, error) {
	if err := s.check(); err != nil {
		return nil, err
	}
	if env.ID == "" {
		return nil, errors.New("mxrelay: pgstore: Accept: the email has no ID")
	}
	envelope, err := json.Marshal(env)
	if err != nil {
		return nil, err
	}
	tx, err := s.pool.Begin(ctx)
	if err != nil {
		return nil, fail("accept", err)
	}
	d := &draft{s: s, ctx: ctx, tx: tx, id: env.ID}
	var id string
	err = tx.QueryRow(ctx, s.sql(`
		INSERT INTO {s}.email (id, idem_key, priority, envelope) VALUES ($1, NULLIF($2, ''), $3, $4)
		ON CONFLICT DO NOTHING RETURNING id`),
		env.ID, env.IdempotencyKey, env.Priority, string(envelope)).Scan(&id)
	if err == nil {
		return d, nil
	}
	d.Abort()
	if !errors.Is(err, pgx.ErrNoRows) {
		return nil, fail("accept", err)
	}
	// A conflict: the key's email, committed (the insert waited for it),
	// or an ID already kept.
	if env.IdempotencyKey != "" {
		var a store.Accepted
		err := s.pool.QueryRow(ctx, s.sql(`SELECT id, queued_at FROM {s}.email WHERE idem_key = $1`),
			env.IdempotencyKey).Scan(&a.ID, &a.Queued)
		if err == nil {
			a.Existing = true
			return &draft{existing: &a}, nil
		}
		if !errors.Is(err, pgx.ErrNoRows) {
			return nil, fail("accept", err)
		}
	}
	return nil, store.ErrDuplicateID
}

// draft is an email being accepted: a transaction with its row, and the
// body's next chunk. existing, when set, is the email of the same
// IdempotencyKey, and nothing else is set.
type draft struct {
	s        *Store
	ctx      context.Context // Accept's: bounds the transaction's writes
	tx       pgx.Tx
	id       string
	buf      []byte
	n        int   // chunks written
	size     int64 // bytes written
	err      error // the first failure: sticky
	done     bool
	existing *store.Accepted
}

func (d *draft) Existing() (store.Accepted, bool) {
	if d.existing != nil {
		return *d.existing, true
	}
	return store.Accepted{}, false
}

// Write fills a chunk and writes it to the transaction when full.
func (d *draft) Write(p []byte) (int, error) {
	if d.existing != nil {
		return len(p), nil
	}
	if d.err != nil {
		return 0, d.err
	}
	if d.done {
		return 0, errors.New("mxrelay: pgstore: write after Commit or Abort")
	}
	written := 0
	for len(p) > 0 {
		if d.buf == nil {
			d.buf = make([]byte, 0, chunkSize)
		}
		k := min(len(p), chunkSize-len(d.buf))
		d.buf = append(d.buf, p[:k]...)
		p = p[k:]
		written += k
		if len(d.buf) == chunkSize {
			if err := d.flush(d.ctx); err != nil {
				return written, err
			}
		}
	}
	return written, nil
}

// flush writes the chunk in hand, if any.
func (d *draft) flush(ctx context.Context) error {
	if len(d.buf) == 0 {
		return nil
	}
	_, err := d.tx.Exec(ctx, d.s.sql(`INSERT INTO {s}.body (id, n, data) VALUES ($1, $2, $3)`), d.id, d.n, d.buf)
	if err != nil {
		d.err = fail("accept", err)
		return d.err
	}
	d.n++
	d.size += int64(len(d.buf))
	d.buf = d.buf[:0]
	return nil
}

// Commit writes the last chunk, gives the email its place in the queue
// and commits: the trigger's notification goes out with the commit.
func (d *draft) Commit(ctx context.Context, meta []byte) (store.Accepted, error) {
	if d.existing != nil {
		return *d.existing, nil
	}
	if d.done {
		return store.Accepted{}, errors.New("mxrelay: pgstore: Commit after Commit or Abort")
	}
	if d.err != nil {
		d.Abort()
		return store.Accepted{}, d.err
	}
	if err := d.flush(ctx); err != nil {
		d.Abort()
		return store.Accepted{}, err
	}
	a := store.Accepted{ID: d.id}
	err := d.tx.QueryRow(ctx, d.s.sql(`
		UPDATE {s}.email SET ord = nextval('{s}.email_ord'), queued_at = statement_timestamp(),
			meta = $2, body_size = $3
		WHERE id = $1 RETURNING queued_at`), d.id, meta, d.size).Scan(&a.Queued)
	if err != nil {
		d.Abort()
		return store.Accepted{}, fail("accept", err)
	}
	d.done = true
	d.buf = nil
	if err := d.tx.Commit(ctx); err != nil {
		return store.Accepted{}, fail("accept", err)
	}
	return a, nil
}

// Abort rolls the transaction back.
func (d *draft) Abort() {
	if d.existing != nil || d.done {
		return
	}
	d.done = true
	d.buf = nil
	ctx, cancel := context.WithTimeout(context.WithoutCancel(d.ctx), 5*time.Second)
	defer cancel()
	d.tx.Rollback(ctx)
}
