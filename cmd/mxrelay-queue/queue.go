package main

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/mxrelay/mxrelay/internal/spool"
	"github.com/mxrelay/mxrelay/internal/store"
	"github.com/mxrelay/mxrelay/pgstore"
)

// queue is the store the command works on: an Inspector to read it, and
// an Admin for changes, which a spool only gives while no Client holds
// it.
type queue struct {
	store.Inspector
	// admin returns the store's Admin, and done to call once the
	// changes are made.
	admin func() (a store.Admin, done func(), err error)
	close func()
	spool bool
}

// exitError is an error with the exit status it ends the command with.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

// fatal is err, for the exit status code.
func fatal(code int, err error) error { return &exitError{code: code, err: err} }

// openSpool is the spool in dir: read by a spool.Reader, changed through
// a spool.Store that takes the lock for the changes.
func openSpool(dir string) (*queue, error) {
	r, err := spool.NewReader(dir)
	if err != nil {
		return nil, fatal(exStore, err)
	}
	return &queue{
		Inspector: r,
		spool:     true,
		close:     func() {},
		admin: func() (store.Admin, func(), error) {
			st, err := spool.OpenExisting(r.Dir(), nil)
			if errors.Is(err, spool.ErrLocked) {
				return nil, nil, fatal(exLocked, fmt.Errorf("the spool %s is in use by a running Client (its lock %s/lock is held): "+
					"changes need the Client stopped; list, show and counts work meanwhile", r.Dir(), r.Dir()))
			}
			if err != nil {
				return nil, nil, fatal(exStore, err)
			}
			return st, func() { st.Close() }, nil
		},
	}, nil
}

// openPG is the queue in schema of the database at url, which must be at
// pgstore.SchemaVersion: nothing is created or migrated, unless migrate,
// which is all that is done then.
func openPG(ctx context.Context, url, schema string, migrate bool) (*queue, error) {
	pool, err := pgxpool.New(ctx, url)
	if err != nil {
		return nil, fatal(exStore, fmt.Errorf("-pg: %w", err))
	}
	if !migrate {
		v, err := pgstore.CheckSchema(ctx, pool, schema)
		switch {
		case errors.Is(err, pgstore.ErrSchemaVersion) && v < pgstore.SchemaVersion:
			err = fmt.Errorf("%w: migrate it (the command migrate), or start a process of this version", err)
		case errors.Is(err, pgstore.ErrSchemaVersion):
			err = fmt.Errorf("%w: this command is older than the schema", err)
		}
		if err != nil {
			pool.Close()
			return nil, fatal(exStore, err)
		}
	}
	// No reaper: the tool removes nothing on its own. The listener's
	// wake-ups are not used.
	st, err := pgstore.Open(ctx, pool, &pgstore.Options{Schema: schema, ReapInterval: -1, PollInterval: time.Hour})
	if err != nil {
		pool.Close()
		return nil, fatal(exStore, err)
	}
	return &queue{
		Inspector: st,
		admin:     func() (store.Admin, func(), error) { return st, func() {}, nil },
		close: func() {
			st.Close()
			pool.Close()
		},
	}, nil
}
