// Package pgstore keeps mxrelay's queue in PostgreSQL, so that several
// processes share one queue, one priority order and the results: an
// email one process accepts can be sent by any other, a process that dies
// leaves nothing behind that the others cannot take over, and a result can
// be waited for by the process that enqueued the email whichever process
// sent it. It is the only package of the module that imports pgx: users
// who do not want it do not build it.
//
// It works the way job systems built on PostgreSQL do (River, Postal's
// queue table): emails are claimed with SELECT … FOR UPDATE SKIP LOCKED,
// highest priority first and in order of acceptance within a priority,
// under a lease renewed while a session runs; every write of a claim
// holder carries a fencing token (the attempt number) and is refused once
// the lease was taken over. LISTEN/NOTIFY wakes idle claimers in every
// process when mail is accepted or released, and the processes that wait
// for a result when it is recorded; a slow poll covers a lost connection.
// Bodies are stored and read in chunks, so a 100 MiB body is never held
// whole in memory.
//
// The schema (tables, indexes, triggers, its versions) is created and
// migrated by Open and described in docs/postgres.md. The contracts of
// the methods are those of the store seam (internal/store).
package pgstore

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/mxrelay/mxrelay/internal/broadcast"
	"github.com/mxrelay/mxrelay/internal/store"
)

// Options configures a Store. The zero value is useful.
type Options struct {
	// Schema is the PostgreSQL schema that holds the store's tables,
	// created by Open if missing: lower-case letters, digits and
	// underscores, at most 48, not starting with a digit. Processes that
	// share a queue name the same schema. Zero: "mxrelay".
	Schema string
	// ResultRetention is how long a result is kept, queryable by ID and
	// keeping its IdempotencyKey taken, after it was recorded. Zero: 7
	// days.
	ResultRetention time.Duration
	// ReapInterval is how often the store removes the results past
	// ResultRetention. Zero: a tenth of ResultRetention, at most an hour.
	// Negative: never (call Reap).
	ReapInterval time.Duration
	// PollInterval is how often Wake fires and result waiters look again
	// without a notification, in case one was lost. Zero: 30s.
	PollInterval time.Duration
	// Logger receives the store's logs (the listener's reconnections, the
	// reaper's failures). Nil: silent.
	Logger *slog.Logger

	hooks *hooks // tests only
}

// hooks let tests see what the store's goroutines do. Each may be nil.
type hooks struct {
	listening func()          // the listener (re)connected and listens
	waiting   func(id string) // WaitResult found no result and waits
}

// Store is a store.Store on PostgreSQL. Its methods are safe for
// concurrent use, by many goroutines and many processes.
type Store struct {
	pool   *pgxpool.Pool
	opts   Options
	schema string // the schema's name, checked
	log    *slog.Logger

	closed atomic.Bool
	ctx    context.Context // ends at Close: bounds the store's goroutines
	stop   context.CancelFunc
	wg     sync.WaitGroup

	wakeSig broadcast.Signal // claimers waiting on Wake

	waitMu  sync.Mutex
	waiters map[string]map[chan struct{}]struct{} // result waiters by email ID

	hooks hooks
}

var _ store.Store = (*Store)(nil)

var schemaName = regexp.MustCompile(`^[a-z_][a-z0-9_]{0,47}$`)

// Open returns a Store on pool, creating or migrating its schema first
// (see docs/postgres.md): a schema newer than this package knows fails.
// The caller keeps pool and closes it after Close. The store listens on a
// connection of its own, made with pool's configuration, outside the
// pool. Invalid options fail here.
func Open(ctx context.Context, pool *pgxpool.Pool, opts *Options) (*Store, error) {
	var o Options
	if opts != nil {
		o = *opts
	}
	if o.Schema == "" {
		o.Schema = "mxrelay"
	}
	if !schemaName.MatchString(o.Schema) {
		return nil, fmt.Errorf("mxrelay: pgstore: schema %q: lower-case letters, digits and _ only, at most 48", o.Schema)
	}
	if o.ResultRetention < 0 || o.PollInterval < 0 {
		return nil, errors.New("mxrelay: pgstore: ResultRetention and PollInterval cannot be negative")
	}
	if o.ResultRetention == 0 {
		o.ResultRetention = 7 * 24 * time.Hour
	}
	if o.ReapInterval == 0 {
		o.ReapInterval = min(o.ResultRetention/10, time.Hour)
	}
	if o.PollInterval == 0 {
		o.PollInterval = 30 * time.Second
	}
	log := o.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &Store{
		pool:    pool,
		opts:    o,
		schema:  o.Schema,
		log:     log,
		waiters: map[string]map[chan struct{}]struct{}{},
	}
	if o.hooks != nil {
		s.hooks = *o.hooks
	}
	if err := s.migrate(ctx); err != nil {
		return nil, err
	}
	s.ctx, s.stop = context.WithCancel(context.Background())
	s.wg.Add(1)
	go s.listen()
	if o.ReapInterval > 0 {
		s.wg.Add(1)
		go s.reaper()
	}
	return s, nil
}

// Close stops the listener and the reaper and waits for them. Emails stay
// as they are (see store.Store.Close). Safe to call more than once.
func (s *Store) Close() error {
	if s.closed.Swap(true) {
		return nil
	}
	s.stop()
	s.wg.Wait()
	return nil
}

// sql is text with {s} replaced by the quoted schema.
func (s *Store) sql(text string) string {
	return strings.ReplaceAll(text, "{s}", pgx.Identifier{s.schema}.Sanitize())
}

// check returns ErrClosed after Close.
func (s *Store) check() error {
	if s.closed.Load() {
		return store.ErrClosed
	}
	return nil
}

// fail wraps err, from operation op, once: a failure to reach the server
// as a *store.UnavailableError, the end of ctx as ctx's error, anything
// else (a bug, a schema changed by hand) as it is.
func fail(op string, err error) error {
	if err == nil {
		return nil
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("mxrelay: pgstore: %s: %w", op, err)
	}
	if temporary(err) {
		return &store.UnavailableError{Op: op, Err: err}
	}
	return fmt.Errorf("mxrelay: pgstore: %s: %w", op, err)
}

// temporary reports whether err is a failure to reach the server or of
// the server as a whole, which the same call may not meet again: a
// connection refused or cut, a server shutting down or starting, too many
// connections, a serialization failure or a deadlock.
func temporary(err error) bool {
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		switch {
		case strings.HasPrefix(pe.Code, "08"), // connection exception
			strings.HasPrefix(pe.Code, "57P"), // admin shutdown, crash shutdown, cannot connect now
			pe.Code == "53300",                // too many connections
			pe.Code == "40001", pe.Code == "40P01":
			return true
		}
		return false
	}
	var ce *pgconn.ConnectError
	var ne net.Error
	return errors.As(err, &ce) || errors.As(err, &ne) || pgconn.SafeToRetry(err) ||
		errors.Is(err, pgconn.ErrConnClosed) || errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, net.ErrClosed)
}

// isConflict reports whether err is a unique violation.
func isConflict(err error) bool {
	var pe *pgconn.PgError
	return errors.As(err, &pe) && pe.Code == "23505"
}
