package spool

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync/atomic"
	"time"

	"github.com/mxrelay/mxrelay/internal/store"
	"github.com/mxrelay/mxrelay/internal/store/ledger"
)

// file is an accepted email's .msg file: what the ledger keeps with it.
type file struct {
	name      string
	off, size int64       // the body's place in the file
	gone      atomic.Bool // set when the email's result is recorded: the file goes
}

// Accept begins accepting env: its file is created under a .tmp name, the
// header written, and the Draft writes the body to it. Nothing reads a
// .tmp file: Commit gives it its name, which accepts the email. See
// store.Store.Accept.
func (s *Store) Accept(ctx context.Context, env *store.Envelope) (store.Draft, error) {
	existing, res, err := s.l.Reserve(ctx, env)
	if existing != nil || err != nil {
		return existing, err
	}
	name := s.newName()
	queued := time.Now()
	w, err := newMsgWriter(filepath.Join(s.dir, name+tmpSuffix), &header{Envelope: *env, Queued: queued})
	if err != nil {
		res.Release()
		return nil, fmt.Errorf("mxrelay: spool: %w", err)
	}
	return store.NewDraft(ctx, &draft{s: s, res: res, w: w, name: name, queued: queued}), nil
}

// newName is the name of a new .msg file: the time in nanoseconds, never
// less than that of a name made before (names sort in the order they were
// made), then a counter.
func (s *Store) newName() string {
	s.nameMu.Lock()
	defer s.nameMu.Unlock()
	t := max(time.Now().UnixNano(), s.lastName+1)
	s.lastName = t
	s.counter++
	return fmt.Sprintf("%016x-%06d.msg", t, s.counter%1e6)
}

// draft is the file of an email being accepted (a store.Body).
type draft struct {
	s      *Store
	res    *ledger.Reservation[*file, *resultLoc]
	w      *msgWriter
	name   string
	queued time.Time
}

// Write appends to the body, through a buffer of 64 KiB.
func (d *draft) Write(p []byte) (int, error) {
	n, err := d.w.Write(p)
	if err != nil {
		return n, fmt.Errorf("mxrelay: spool: %w", err)
	}
	return n, nil
}

// Commit writes the meta and the trailer, fsyncs the file, gives it its
// name and fsyncs the directory: from then on the email is accepted, and
// the next Open finds it. Close waits for a Commit in progress and none
// starts after it, so that an email refused is never under a .msg name
// once Close has returned. On failure the file is gone.
func (d *draft) Commit(_ context.Context, meta []byte) (store.Accepted, error) {
	s := d.s
	tmp := filepath.Join(s.dir, d.name+tmpSuffix)
	fail := func(err error) (store.Accepted, error) {
		d.res.Release()
		os.Remove(tmp)
		return store.Accepted{}, err
	}
	if err := d.w.finish(meta); err != nil {
		return fail(fmt.Errorf("mxrelay: spool: %w", err))
	}
	s.commitMu.RLock()
	defer s.commitMu.RUnlock()
	if s.closed {
		return fail(store.ErrClosed)
	}
	path := filepath.Join(s.dir, d.name)
	if err := os.Rename(tmp, path); err != nil {
		return fail(fmt.Errorf("mxrelay: spool: %w", err))
	}
	if err := syncDir(s.dir); err != nil {
		os.Remove(path)
		return fail(fmt.Errorf("mxrelay: spool: %w", err))
	}
	size := d.w.size
	a, err := d.res.Commit(&ledger.Entry[*file]{
		Queued: d.queued, Meta: slices.Clone(meta), BodySize: size,
		Data: &file{name: d.name, off: d.w.bodyAt, size: size},
	})
	if err != nil {
		// Not after Close, which waits for commitMu: a bug if it happens.
		os.Remove(path)
		return store.Accepted{}, err
	}
	return a, nil
}

// Abort removes the file.
func (d *draft) Abort() {
	d.res.Release()
	d.w.close()
	os.Remove(filepath.Join(d.s.dir, d.name+tmpSuffix))
}
