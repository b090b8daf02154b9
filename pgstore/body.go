package pgstore

import (
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/jackc/pgx/v5"

	"github.com/mxrelay/mxrelay/internal/store"
)

// Bodies are rows of chunkSize bytes (the last one shorter) in table
// body, keyed by (id, n), written in the transaction that accepts the
// email and deleted with its result. Rows rather than large objects: they
// go with the email's row (ON DELETE CASCADE, no lo_unlink to forget),
// need no privilege on pg_largeobject, and can be read one statement at a
// time, without a transaction held open for the whole of an SMTP session.
// Their storage is EXTERNAL: not compressed, as bodies mostly carry
// attachments already compressed, and the server's CPU is the shared one.

// Body returns a reader of email id's body that fetches one chunk at a
// time. See store.Store.Body.
func (s *Store) Body(ctx context.Context, id string) (io.ReadCloser, error) {
	if err := s.check(); err != nil {
		return nil, err
	}
	var size int64
	err := s.pool.QueryRow(ctx, s.sql(`SELECT body_size FROM {s}.email WHERE id = $1 AND finished_at IS NULL AND ord IS NOT NULL`), id).Scan(&size)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, store.ErrNotFound
	}
	if err != nil {
		return nil, fail("body", err)
	}
	return &bodyReader{s: s, ctx: ctx, id: id, size: size}, nil
}

// bodyReader reads a body chunk by chunk: it holds one chunk at a time.
type bodyReader struct {
	s    *Store
	ctx  context.Context // Body's: bounds the reads
	id   string
	size int64 // the body's length
	read int64 // bytes fetched so far
	n    int   // the next chunk
	buf  []byte
	err  error
}

func (r *bodyReader) Read(p []byte) (int, error) {
	if r.err != nil {
		return 0, r.err
	}
	if len(r.buf) == 0 {
		if r.read == r.size {
			return 0, io.EOF
		}
		if err := r.fetch(); err != nil {
			r.err = err
			return 0, err
		}
	}
	k := copy(p, r.buf)
	r.buf = r.buf[k:]
	return k, nil
}

// fetch reads the next chunk.
func (r *bodyReader) fetch() error {
	var data []byte
	err := r.s.pool.QueryRow(r.ctx, r.s.sql(`SELECT data FROM {s}.body WHERE id = $1 AND n = $2`), r.id, r.n).Scan(&data)
	if errors.Is(err, pgx.ErrNoRows) {
		// Finished meanwhile: the body went with its result.
		return fmt.Errorf("%w: the body of %s is gone", store.ErrNotFound, r.id)
	}
	if err != nil {
		return fail("body", err)
	}
	if len(data) == 0 || r.read+int64(len(data)) > r.size {
		return fmt.Errorf("mxrelay: pgstore: the body of %s does not match its size", r.id)
	}
	r.n++
	r.read += int64(len(data))
	r.buf = data
	return nil
}

// Close releases the chunk in hand; later reads fail.
func (r *bodyReader) Close() error {
	r.buf, r.err = nil, errors.New("mxrelay: pgstore: read of a closed body")
	return nil
}
