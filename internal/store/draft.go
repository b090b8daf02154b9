package store

import (
	"context"
	"errors"
	"io"
)

// Body is the part of a Draft that differs between stores: where what is
// written goes, and how the email is then accepted or forgotten. NewDraft
// makes a Draft of it that keeps the rules every Draft shares.
type Body interface {
	// Write appends to the body. An error ends the Draft: it is aborted
	// at Commit.
	io.Writer
	// Commit accepts the email, as Draft.Commit does. When it fails it
	// leaves nothing behind: Abort is not called after it.
	Commit(ctx context.Context, meta []byte) (Accepted, error)
	// Abort forgets what was written; called at most once, never after
	// Commit.
	Abort()
}

// NewDraft returns a Draft that writes to b, its writes bound by ctx: a
// failed write (or ctx's end) is returned again by every later Write and
// by Commit, which aborts b then; nothing is written after Commit or
// Abort; Abort after Commit, or twice, does nothing.
func NewDraft(ctx context.Context, b Body) Draft { return &draft{ctx: ctx, b: b} }

// ExistingDraft returns the Draft of an Accept whose IdempotencyKey is
// that of a, an email accepted before: Existing reports a, what is
// written is dropped, and Commit returns a.
func ExistingDraft(a Accepted) Draft {
	a.Existing = true
	return &draft{existing: &a}
}

type draft struct {
	ctx      context.Context
	b        Body
	existing *Accepted
	err      error // the first failure: sticky
	done     bool
}

var errDraftEnded = errors.New("mxrelay: store: the Draft was committed or aborted")

func (d *draft) Existing() (Accepted, bool) {
	if d.existing != nil {
		return *d.existing, true
	}
	return Accepted{}, false
}

func (d *draft) Write(p []byte) (int, error) {
	switch {
	case d.existing != nil:
		return len(p), nil
	case d.err != nil:
		return 0, d.err
	case d.done:
		return 0, errDraftEnded
	}
	if err := d.ctx.Err(); err != nil {
		d.err = err
		return 0, err
	}
	n, err := d.b.Write(p)
	if err != nil {
		d.err = err
	}
	return n, err
}

func (d *draft) Commit(ctx context.Context, meta []byte) (Accepted, error) {
	switch {
	case d.existing != nil:
		return *d.existing, nil
	case d.done:
		return Accepted{}, errDraftEnded
	}
	if d.err == nil {
		d.err = ctx.Err()
	}
	if d.err != nil {
		d.Abort()
		return Accepted{}, d.err
	}
	d.done = true
	return d.b.Commit(ctx, meta)
}

func (d *draft) Abort() {
	if d.existing != nil || d.done {
		return
	}
	d.done = true
	d.b.Abort()
}

// Referrer is a Draft (or a Body) that can keep a reference to the
// caller's body instead of a copy: memstore's, whose emails live no longer
// than the process that gave them. The Client uses it for a body it can
// read again (an io.ReadSeeker), as it did before the seam, so that the
// default path copies nothing.
type Referrer interface {
	// Refer makes the body the size bytes of r from offset start, read
	// again (Seek, then Read) at each Body, instead of what is written.
	// r must not change until the email's result, and is read by one
	// Body at a time. It reports false, changing nothing, when the store
	// cannot: then write the body.
	Refer(r io.ReadSeeker, start, size int64) bool
}

// Refer passes r on to the Body when it is a Referrer, before anything
// was written.
func (d *draft) Refer(r io.ReadSeeker, start, size int64) bool {
	ref, ok := d.b.(Referrer)
	if !ok || d.existing != nil || d.done || d.err != nil {
		return false
	}
	return ref.Refer(r, start, size)
}
