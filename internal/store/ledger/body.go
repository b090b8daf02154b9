package ledger

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync/atomic"

	"github.com/mxrelay/mxrelay/internal/store"
)

// Reader reads size bytes of r from off, for store.Store.Body: each read
// is bound by ctx, and fails with store.ErrNotFound once gone is set (the
// email got its result and its body went with it). Close closes closer,
// if not nil; later reads fail.
func Reader(ctx context.Context, r io.ReaderAt, off, size int64, gone *atomic.Bool, closer io.Closer) io.ReadCloser {
	return &reader{ctx: ctx, r: io.NewSectionReader(r, off, size), gone: gone, closer: closer}
}

type reader struct {
	ctx    context.Context
	r      *io.SectionReader
	gone   *atomic.Bool
	closer io.Closer
	closed bool
}

var errGone = fmt.Errorf("%w: the body is gone", store.ErrNotFound)

func (r *reader) Read(p []byte) (int, error) {
	switch {
	case r.closed:
		return 0, errors.New("mxrelay: store: read of a closed body")
	case r.gone.Load():
		return 0, errGone
	}
	if err := r.ctx.Err(); err != nil {
		return 0, err
	}
	n, err := r.r.Read(p)
	if err != nil && err != io.EOF && r.gone.Load() {
		// Removed while it was read.
		return n, errGone
	}
	return n, err
}

func (r *reader) Close() error {
	if r.closed {
		return nil
	}
	r.closed = true
	if r.closer != nil {
		return r.closer.Close()
	}
	return nil
}
