// Package memstore is the store of a Client without a durable queue
// (no Options.SpoolDir): the emails it accepts, what is recorded of their
// attempts and their results live in the process, and go with it. Close
// keeps nothing; a crash loses what was queued. It is one process's only:
// a Store cannot be shared, and WaitResult hears only of the results
// this Store records.
//
// A body is kept in memory up to Options.MemoryBody, and in a temporary
// file beyond, so that a large body costs disk, not heap: the file has no
// name once created (a process killed while the email waits leaves no
// copy behind), except on Windows, where it is removed with the email.
//
// The rules of the seam (claims, leases, fencing, the Ending records,
// idempotency keys, results for a retention time) are internal/store's,
// kept by internal/store/ledger; the conformance suite
// (internal/store/storetest) checks them here as for every store.
package memstore

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"maps"
	"os"
	"runtime"
	"slices"
	"sync/atomic"
	"time"

	"github.com/mxrelay/mxrelay/internal/store"
	"github.com/mxrelay/mxrelay/internal/store/ledger"
)

// Options configures a Store. The zero value is useful.
type Options struct {
	// ResultRetention is how long a result is kept after it was
	// recorded, for Result and WaitResult, and its IdempotencyKey taken.
	// Zero: 10 minutes (results are held in memory).
	ResultRetention time.Duration
	// MemoryBody is the largest body kept in memory; a larger one is
	// moved to a temporary file as it is written. Zero: 1 MiB.
	MemoryBody int64
	// TempDir is where those files are made. Empty: os.TempDir().
	TempDir string
}

// Store is a store.Store in the process's memory. Its methods are safe
// for concurrent use.
type Store struct {
	opts Options
	l    *ledger.Ledger[*body, *store.Result]
}

var _ store.Store = (*Store)(nil)

// New returns an empty Store. It starts no goroutine.
func New(opts *Options) *Store {
	var o Options
	if opts != nil {
		o = *opts
	}
	if o.ResultRetention <= 0 {
		o.ResultRetention = 10 * time.Minute
	}
	if o.MemoryBody <= 0 {
		o.MemoryBody = 1 << 20
	}
	return &Store{opts: o, l: ledger.New[*body, *store.Result](ledger.Options{Retention: o.ResultRetention})}
}

// body is an email's body: bytes in memory, or in a file of ours, or the
// caller's own reader (Refer).
type body struct {
	buf  []byte
	f    *os.File
	temp string // the file's name, when it could not be removed at once
	ref  *seekAt
	size int64
	gone atomic.Bool
}

// seekAt reads a body the caller keeps: a Seek before each Read, since
// claims of an email, and so its Body readers, come one at a time.
type seekAt struct {
	r     io.ReadSeeker
	start int64
}

func (s *seekAt) ReadAt(p []byte, off int64) (int, error) {
	if _, err := s.r.Seek(s.start+off, io.SeekStart); err != nil {
		return 0, fmt.Errorf("mxrelay: memstore: rewinding the body: %w", err)
	}
	return s.r.Read(p)
}

// release marks the body gone and closes its file.
func (b *body) release() {
	b.gone.Store(true)
	if b.f != nil {
		b.f.Close()
		if b.temp != "" {
			os.Remove(b.temp)
		}
	}
}

// Accept begins accepting env. See store.Store.Accept.
func (s *Store) Accept(ctx context.Context, env *store.Envelope) (store.Draft, error) {
	existing, res, err := s.l.Reserve(ctx, env)
	if existing != nil || err != nil {
		return existing, err
	}
	return store.NewDraft(ctx, &draft{s: s, res: res, b: &body{}}), nil
}

// draft is the body of an email being accepted (a store.Body).
type draft struct {
	s   *Store
	res *ledger.Reservation[*body, *store.Result]
	b   *body
}

// Write appends to the body in memory, moving it to a temporary file
// once it passes Options.MemoryBody.
func (d *draft) Write(p []byte) (int, error) {
	b := d.b
	if b.f == nil && int64(len(b.buf)+len(p)) > d.s.opts.MemoryBody {
		if err := d.spill(); err != nil {
			return 0, err
		}
	}
	if b.f == nil {
		b.buf = append(b.buf, p...)
		b.size += int64(len(p))
		return len(p), nil
	}
	n, err := b.f.Write(p)
	b.size += int64(n)
	if err != nil {
		return n, fmt.Errorf("mxrelay: memstore: the body's file: %w", err)
	}
	return n, nil
}

// spill moves the body written so far to a temporary file.
func (d *draft) spill() error {
	f, err := os.CreateTemp(d.s.opts.TempDir, "mxrelay-body-*")
	if err != nil {
		return fmt.Errorf("mxrelay: memstore: a file for the body: %w", err)
	}
	b := d.b
	b.f, b.temp = f, f.Name()
	if runtime.GOOS != "windows" && os.Remove(f.Name()) == nil {
		// Read through the descriptor only.
		b.temp = ""
	}
	if _, err := f.Write(b.buf); err != nil {
		return fmt.Errorf("mxrelay: memstore: the body's file: %w", err)
	}
	b.buf = nil
	return nil
}

// Refer keeps r instead of a copy (see store.Referrer), when nothing was
// written yet.
func (d *draft) Refer(r io.ReadSeeker, start, size int64) bool {
	b := d.b
	if b.f != nil || len(b.buf) > 0 {
		return false
	}
	b.ref, b.size = &seekAt{r: r, start: start}, size
	return true
}

// Commit accepts the email: ready to be claimed, Wake fires.
func (d *draft) Commit(_ context.Context, meta []byte) (store.Accepted, error) {
	a, err := d.res.Commit(&ledger.Entry[*body]{Meta: slices.Clone(meta), BodySize: d.b.size, Data: d.b})
	if err != nil {
		d.b.release()
	}
	return a, err
}

// Abort forgets the body.
func (d *draft) Abort() {
	d.res.Release()
	d.b.release()
}

// Claim takes ready emails. See store.Store.Claim.
func (s *Store) Claim(_ context.Context, owner string, n int, lease time.Duration) ([]*store.Claimed, time.Time, error) {
	return s.l.Claim(owner, n, lease)
}

// Renew extends leases. See store.Store.Renew.
func (s *Store) Renew(_ context.Context, toks []store.Token, lease time.Duration) ([]error, error) {
	return s.l.Renew(toks, lease)
}

// Ending counts the Ending records; nothing is written anywhere. See
// store.Store.Ending.
func (s *Store) Ending(_ context.Context, toks []store.Token) ([]error, error) {
	return s.l.Ending(toks, func([]*ledger.Entry[*body]) error { return nil })
}

// Requeue releases the email for notBefore. See store.Store.Requeue.
func (s *Store) Requeue(_ context.Context, tok store.Token, p *store.Progress, notBefore time.Time) error {
	return s.l.Requeue(tok, p, notBefore, func(*ledger.Entry[*body]) error { return nil })
}

// HandBack releases the email, ready now. See store.Store.HandBack.
func (s *Store) HandBack(_ context.Context, tok store.Token, p *store.Progress) error {
	return s.l.HandBack(tok, p, func(*ledger.Entry[*body]) error { return nil })
}

// finished keeps a copy of r and lets the body go.
func finished(e *ledger.Entry[*body], r *store.Result) (*store.Result, error) {
	e.Data.release()
	return cloneResult(r), nil
}

// Finish records r. See store.Store.Finish.
func (s *Store) Finish(_ context.Context, tok store.Token, r *store.Result) error {
	return s.l.Finish(tok, r, finished)
}

// Cancel finishes or marks email id. See store.Store.Cancel.
func (s *Store) Cancel(_ context.Context, id string, r *store.Result) (bool, error) {
	return s.l.Cancel(id, r, finished)
}

// Body returns a reader of email id's body. See store.Store.Body.
func (s *Store) Body(ctx context.Context, id string) (io.ReadCloser, error) {
	b, err := s.l.Body(id)
	if err != nil {
		return nil, err
	}
	var r io.ReaderAt = bytes.NewReader(b.buf)
	switch {
	case b.f != nil:
		r = b.f
	case b.ref != nil:
		r = b.ref
	}
	return ledger.Reader(ctx, r, 0, b.size, &b.gone, nil), nil
}

// Result returns a copy of email id's result. See store.Store.Result.
func (s *Store) Result(_ context.Context, id string) (*store.Result, error) {
	r, err := s.l.Result(id)
	return cloneResult(r), err
}

// WaitResult waits for a result this Store records. See
// store.Store.WaitResult.
func (s *Store) WaitResult(ctx context.Context, id string) (*store.Result, error) {
	r, err := s.l.WaitResult(ctx, id)
	return cloneResult(r), err
}

// Wake returns a channel closed when an email is accepted or released.
func (s *Store) Wake() <-chan struct{} { return s.l.Wake() }

// Close forgets every email and releases their bodies. Safe to call more
// than once.
func (s *Store) Close() error {
	for _, b := range s.l.Close() {
		b.release()
	}
	return nil
}

// cloneResult is a copy of r that shares nothing with it; nil for nil.
func cloneResult(r *store.Result) *store.Result {
	if r == nil {
		return nil
	}
	c := *r
	c.Accepted = slices.Clone(r.Accepted)
	c.Rejected = maps.Clone(r.Rejected)
	return &c
}
