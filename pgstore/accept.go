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
	c := &chunks{s: s, ctx: ctx, tx: tx, id: env.ID}
	var id string
	err = tx.QueryRow(ctx, s.sql(`
		INSERT INTO {s}.email (id, idem_key, priority, envelope) VALUES ($1, NULLIF($2, ''), $3, $4)
		ON CONFLICT DO NOTHING RETURNING id`),
		env.ID, env.IdempotencyKey, env.Priority, string(envelope)).Scan(&id)
	if err == nil {
		return store.NewDraft(ctx, c), nil
	}
	c.Abort()
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
			return store.ExistingDraft(a), nil
		}
		if !errors.Is(err, pgx.ErrNoRows) {
			return nil, fail("accept", err)
		}
	}
	return nil, store.ErrDuplicateID
}

// chunks is the body of an email being accepted (a store.Body): the
// transaction that holds its row, and the body's next chunk.
type chunks struct {
	s    *Store
	ctx  context.Context // Accept's: bounds the transaction's writes
	tx   pgx.Tx
	id   string
	buf  []byte
	n    int   // chunks written
	size int64 // bytes written
}

// Write fills a chunk and writes it to the transaction when full.
func (c *chunks) Write(p []byte) (int, error) {
	written := 0
	for len(p) > 0 {
		if c.buf == nil {
			c.buf = make([]byte, 0, chunkSize)
		}
		k := min(len(p), chunkSize-len(c.buf))
		c.buf = append(c.buf, p[:k]...)
		p = p[k:]
		written += k
		if len(c.buf) == chunkSize {
			if err := c.flush(c.ctx); err != nil {
				return written, err
			}
		}
	}
	return written, nil
}

// flush writes the chunk in hand, if any.
func (c *chunks) flush(ctx context.Context) error {
	if len(c.buf) == 0 {
		return nil
	}
	_, err := c.tx.Exec(ctx, c.s.sql(`INSERT INTO {s}.body (id, n, data) VALUES ($1, $2, $3)`), c.id, c.n, c.buf)
	if err != nil {
		return fail("accept", err)
	}
	c.n++
	c.size += int64(len(c.buf))
	c.buf = c.buf[:0]
	return nil
}

// Commit writes the last chunk, gives the email its place in the queue
// and commits: the trigger's notification goes out with the commit.
func (c *chunks) Commit(ctx context.Context, meta []byte) (store.Accepted, error) {
	if err := c.s.check(); err != nil {
		c.Abort()
		return store.Accepted{}, err
	}
	if err := c.flush(ctx); err != nil {
		c.Abort()
		return store.Accepted{}, err
	}
	a := store.Accepted{ID: c.id}
	err := c.tx.QueryRow(ctx, c.s.sql(`
		UPDATE {s}.email SET ord = nextval('{s}.email_ord'), queued_at = statement_timestamp(),
			meta = $2, body_size = $3
		WHERE id = $1 RETURNING queued_at`), c.id, meta, c.size).Scan(&a.Queued)
	if err != nil {
		c.Abort()
		return store.Accepted{}, fail("accept", err)
	}
	c.buf = nil
	if err := c.tx.Commit(ctx); err != nil {
		return store.Accepted{}, fail("accept", err)
	}
	return a, nil
}

// Abort rolls the transaction back.
func (c *chunks) Abort() {
	c.buf = nil
	ctx, cancel := context.WithTimeout(context.WithoutCancel(c.ctx), 5*time.Second)
	defer cancel()
	c.tx.Rollback(ctx)
}
