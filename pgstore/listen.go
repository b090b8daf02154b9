package pgstore

import (
	"context"
	"errors"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/mxrelay/mxrelay/internal/backoff"
)

// The store's triggers notify two channels, named after the schema:
// "<schema>.ready" when an email becomes claimable (accepted, released),
// "<schema>.result" with the email's ID when it gets its result (an empty
// payload for an ID too long for a notification: every waiter looks). One
// connection per Store listens to both, outside the pool.

// Wake returns a channel closed at the next notification that an email
// may be ready, or at the next poll. See store.Store.Wake.
func (s *Store) Wake() <-chan struct{} { return s.wakeSig.C() }

// wake wakes the claimers waiting on Wake.
func (s *Store) wake() { s.wakeSig.Signal() }

// watch returns a channel closed when email id may have its result.
func (s *Store) watch(id string) chan struct{} {
	ch := make(chan struct{})
	s.waitMu.Lock()
	defer s.waitMu.Unlock()
	if s.waiters[id] == nil {
		s.waiters[id] = map[chan struct{}]struct{}{}
	}
	s.waiters[id][ch] = struct{}{}
	return ch
}

// unwatch forgets ch, which watch(id) returned.
func (s *Store) unwatch(id string, ch chan struct{}) {
	s.waitMu.Lock()
	defer s.waitMu.Unlock()
	delete(s.waiters[id], ch)
	if len(s.waiters[id]) == 0 {
		delete(s.waiters, id)
	}
}

// resulted wakes the waiters of email id; of every email for "".
func (s *Store) resulted(id string) {
	s.waitMu.Lock()
	defer s.waitMu.Unlock()
	for wid, chs := range s.waiters {
		if id != "" && wid != id {
			continue
		}
		for ch := range chs {
			close(ch)
		}
		delete(s.waiters, wid)
	}
}

// everyone wakes every claimer and waiter: notifications may have been
// missed.
func (s *Store) everyone() {
	s.wake()
	s.resulted("")
}

// listen keeps a connection listening to the store's channels until
// Close, connecting again (with backoff) when it breaks. Each new
// connection wakes everyone, since notifications sent while none listened
// are lost; so does each PollInterval without a notification.
func (s *Store) listen() {
	defer s.wg.Done()
	retry := backoff.Policy{Initial: 50 * time.Millisecond, Max: 5 * time.Second, Jitter: 0.2}
	ready := pgx.Identifier{s.schema + ".ready"}.Sanitize()
	result := pgx.Identifier{s.schema + ".result"}.Sanitize()
	for failures := 0; ; failures++ {
		if failures > 0 {
			t := time.NewTimer(retry.Delay(failures))
			select {
			case <-s.ctx.Done():
				t.Stop()
				return
			case <-t.C:
			}
		}
		conn, err := pgx.ConnectConfig(s.ctx, s.pool.Config().ConnConfig)
		if err == nil {
			_, err = conn.Exec(s.ctx, "LISTEN "+ready+"; LISTEN "+result)
		}
		if s.ctx.Err() != nil {
			if conn != nil {
				conn.Close(context.Background())
			}
			return
		}
		if err != nil {
			if conn != nil {
				conn.Close(context.Background())
			}
			s.log.Debug("mxrelay: pgstore: listening", "err", err)
			continue
		}
		failures = 0
		s.everyone()
		if s.hooks.listening != nil {
			s.hooks.listening()
		}
		err = s.receive(conn)
		conn.Close(context.Background())
		if s.ctx.Err() != nil {
			return
		}
		s.log.Warn("mxrelay: pgstore: the listening connection broke; connecting again", "err", err)
	}
}

// receive dispatches conn's notifications until it breaks or Close.
func (s *Store) receive(conn *pgx.Conn) error {
	ready := s.schema + ".ready"
	for {
		ctx, cancel := context.WithTimeout(s.ctx, s.opts.PollInterval)
		n, err := conn.WaitForNotification(ctx)
		cancel()
		switch {
		case err == nil:
			if n.Channel == ready {
				s.wake()
			} else {
				s.resulted(n.Payload)
			}
		case s.ctx.Err() != nil:
			return nil
		case errors.Is(err, context.DeadlineExceeded) && !conn.IsClosed():
			s.everyone() // the slow poll
		default:
			return err
		}
	}
}
