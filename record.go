package mxrelay

import (
	"errors"
	"fmt"
	"slices"
	"time"
)

// email is the client's record of an accepted email. Its state and its
// per-recipient books change only through the transitions in this file,
// with Client.mu held: queued (queue), taken by a session (taken), end of
// data handed on (endHandedOn), requeued after a verdict (settle), and
// finished (finish). The queue keeps its position (qheap, qidx) and
// nothing else.
type email struct {
	id       string
	file     string // its file in the spool, if any
	from     string
	mailOpts *MailOptions
	rcptOpts map[string]*RcptOptions
	body     *body
	cfg      sendConfig
	seq      uint64
	queuedAt time.Time
	handle   *Handle
	timer    *time.Timer

	// Owned by the queue.
	qheap     int8 // which of the queue's heaps holds it: qNone, qFresh, qRetry, qDelayed
	qidx      int
	notBefore time.Time // not to be tried before, after a temporary failure

	// Owned by the transitions below.
	state    emailState
	attempts int
	// freeTries are the attempts refused by a "slow down" that spent no
	// retry (at most maxFreeTries).
	freeTries int
	pending   []string // recipients not yet decided
	accepted  []string
	rejected  []RecipientError
	// refusedLast is, per recipient not yet decided, the upstream's last
	// temporary refusal of it (a 4xx to its RCPT), reported if the email
	// ends without it.
	refusedLast map[string]error
	unknown     bool    // an attempt ended with an unknown outcome
	ended       bool    // an end-of-data marker is in the spool's journal, its outcome not yet
	canceled    error   // why it was withdrawn, once Cancel or its context asked
	canceledAs  Outcome // the outcome canceled gives it, if no recipient has it
	// hurry, set while a session holds it, asks that session to take no
	// more emails and end with QUIT, whose reply confirms what waits.
	hurry func()
	inTx  bool // a session's engine holds it, and reads its body
	// withdraw, set while a lock-step session waits on it, ends that
	// session so that it does not wait for a reply that no longer matters.
	withdraw func()
	session  string
	reply    Reply         // the reply to the delivering end of data
	txTime   time.Duration // how long the delivering transaction took
}

type emailState int

const (
	stateQueued   emailState = iota // in the queue
	stateEnvelope                   // in a transaction, before its end of data
	stateReply                      // its end of data is being sent or was sent
	stateDone                       // its result is out
)

func (e *email) urgent() bool { return e.cfg.immediate || e.cfg.priority == PriorityCritical }

// taken marks em, just popped from the queue, as in a transaction of
// session sid; withdraw, if not nil, ends the session should em be
// cancelled before its end of data. c.mu is held.
func (c *Client) taken(em *email, sid string, withdraw, hurry func()) {
	em.state = stateEnvelope
	em.attempts++
	em.session = sid
	em.inTx = true
	em.withdraw, em.hurry = withdraw, hurry
	c.inflight++
}

// endHandedOn is called right before em's end of data is written: false
// means it must not be, because em was withdrawn, or because the spool
// could not record it (em is then handed back to the spool).
func (c *Client) endHandedOn(em *email) bool {
	c.mu.Lock()
	if em.canceled != nil || em.state != stateEnvelope {
		c.mu.Unlock()
		return false
	}
	em.state = stateReply
	em.withdraw = nil
	c.mu.Unlock()
	if em.file == "" {
		return true
	}
	// On disk before the end of data is on the wire: a restart after a
	// crash knows the server may have the email.
	err := c.spool.ended(em.file)
	c.mu.Lock()
	defer c.mu.Unlock()
	if err != nil {
		// Not sent: a restart could not tell that the server may have it.
		em.state = stateEnvelope
		em.canceled, em.canceledAs = fmt.Errorf("%w: %w", ErrSpooled, err), OutcomeHandedBack
		return false
	}
	em.ended = true
	return true
}

// cancel withdraws em (see Handle.Cancel). An email whose end of data was
// not handed on ends at once with cause, as out (OutcomeFailed, or
// OutcomeUnknown for an email the spool gave back after its end of data
// may have been written): in the queue it leaves
// the queue; in a transaction, the session withdraws it at its next step
// (before the next command or chunk, or by closing the channel in the
// middle of a DATA body) and never writes its end of data. Once the end of
// data is handed on, the reply decides, but no further attempt follows.
func (c *Client) cancel(em *email, out Outcome, cause error) {
	c.mu.Lock()
	if em.canceled == nil {
		em.canceled, em.canceledAs = cause, out
	}
	var withdraw func()
	switch em.state {
	case stateQueued:
		c.q.remove(em)
		c.freed()
	case stateEnvelope:
		withdraw, em.withdraw = em.withdraw, nil
	default:
		// Its end of data is out: its reply, or the one confirming it,
		// decides. The session hurries to it rather than take more.
		hurry := em.hurry
		c.mu.Unlock()
		if hurry != nil {
			hurry()
		}
		return
	}
	c.mu.Unlock()
	c.finish(em, em.canceledAs, em.canceled)
	if withdraw != nil {
		withdraw()
	}
	c.kick()
}

// settle applies the verdict of em's attempt: its books, then a retry, a
// hand-back or its result.
func (c *Client) settle(em *email, v verdict, txTime time.Duration) {
	c.mu.Lock()
	em.inTx, em.withdraw, em.hurry = false, nil, nil
	if em.state == stateDone {
		// Finished meanwhile (cancelled, or Close): only the body was
		// still ours to release.
		c.mu.Unlock()
		em.body.release()
		return
	}
	if !v.attempt {
		em.attempts--
	}
	em.accepted = append(em.accepted, v.accepted...)
	em.rejected = append(em.rejected, v.refused...)
	em.pending = em.pending[:0:0]
	for _, r := range v.left {
		em.pending = append(em.pending, r.Address)
		if r.Err != nil {
			if em.refusedLast == nil {
				em.refusedLast = map[string]error{}
			}
			em.refusedLast[r.Address] = r.Err
		}
	}
	for _, r := range v.refused {
		delete(em.refusedLast, r.Address)
	}
	for _, to := range v.accepted {
		delete(em.refusedLast, to)
	}
	if v.unknown {
		em.unknown = true
	}
	if v.end != nil {
		em.reply = Reply{Code: v.end.Code, EnhancedCode: v.end.Enhanced, Message: v.end.Message}
		em.txTime = txTime
	}
	c.mu.Unlock()

	switch {
	case v.outcome == outRetry && v.slow && em.freeTries < maxFreeTries:
		// The upstream asked to slow down and the client did: this try
		// was the client's haste, not the email's fault. The limiter
		// paces the client, not the email: the email waits as a retry
		// would, so that its free tries outlast a quota per minute (the
		// limiter alone hands one email 8 tokens in a row), but it spends
		// no retry.
		em.freeTries++
		c.requeue(em, v.err, c.retry.Delay(em.freeTries))
	case v.outcome == outRetry:
		c.requeue(em, v.err, c.retry.Delay(em.attempts-em.freeTries))
	case v.outcome == outHandBack:
		err := v.err
		if em.file != "" {
			err = fmt.Errorf("%w: %w", err, ErrSpooled)
		}
		c.finish(em, OutcomeHandedBack, err)
	case v.unknown:
		c.finish(em, OutcomeUnknown, v.err)
	default:
		c.finish(em, OutcomeFailed, v.err)
	}
}

// requeue puts em back in the queue for a retry after cause, recording
// its progress in the spool first.
func (c *Client) requeue(em *email, cause error, delay time.Duration) {
	if em.file != "" {
		c.recordProgress(em)
	}
	c.mu.Lock()
	if em.state == stateDone {
		c.mu.Unlock()
		return
	}
	now := time.Now()
	em.notBefore = now.Add(delay)
	em.state = stateQueued
	c.inflight--
	// Read before the email is back in the queue: another worker may take
	// it at once.
	attempt, session := em.attempts, em.session
	c.q.push(em, now)
	c.stats.RetriesScheduled++
	c.mu.Unlock()
	c.kick()
	c.log.Warn("mxrelay: email will be retried", "email", em.id, "attempt", attempt, "delay", delay, "err", cause)
	c.events.emit(Event{Type: EventEmailRetrying, SessionID: session, EmailID: em.id, Attempt: attempt, Duration: delay, Err: cause})
}

// recordProgress writes em's progress to the spool's journal before it
// goes back to the queue, if an end of data was written since the last
// record: a restart then resumes from it instead of taking that end of
// data for an unknown outcome. Nothing else touches em meanwhile: it is
// out of the queue.
func (c *Client) recordProgress(em *email) {
	c.mu.Lock()
	if !em.ended {
		c.mu.Unlock()
		return // nothing new
	}
	p := &spoolProgress{File: em.file, Attempts: em.attempts, Unknown: em.unknown,
		Accepted: slices.Clone(em.accepted), Pending: slices.Clone(em.pending),
		Rejected: rejectedText(em.rejected)}
	c.mu.Unlock()
	if err := c.spool.progressed(p); err != nil {
		// The marker stays unanswered: a restart takes the email for an
		// unknown outcome, which is safe.
		c.log.Error("mxrelay: spool journal", "email", em.id, "err", err)
		return
	}
	c.mu.Lock()
	em.ended = false
	c.mu.Unlock()
}

// finish gives em its Result: delivered when a recipient accepted it,
// otherwise ended with err as out (OutcomeFailed, OutcomeUnknown or
// OutcomeHandedBack). Only the first call counts. An email handed back
// with a spool file keeps it for the next Client.
func (c *Client) finish(em *email, out Outcome, err error) {
	c.mu.Lock()
	if em.state == stateDone {
		c.mu.Unlock()
		return
	}
	wasInflight := em.state == stateEnvelope || em.state == stateReply
	em.state = stateDone
	if wasInflight {
		c.inflight--
	}
	res := c.result(em, out, err)
	c.count(res, em.txTime)
	em.handle.res = res
	if em.timer != nil {
		em.timer.Stop()
	}
	// The engine may still read the body of an email it holds: then the
	// session releases it when the engine is done (settle).
	release := !em.inTx
	c.mu.Unlock()

	if release {
		em.body.release()
	}
	if em.file != "" && out != OutcomeHandedBack {
		// Recorded before anyone can see the result.
		if err := c.spool.finished(em.file, res); err != nil {
			c.log.Error("mxrelay: spool", "email", em.id, "err", err)
		}
	}
	close(em.handle.done)
	if res.Outcome == OutcomeDelivered {
		c.events.emit(Event{Type: EventEmailProcessed, SessionID: res.SessionID, EmailID: em.id, Result: res, Duration: em.txTime})
		c.log.Debug("mxrelay: email delivered", "email", em.id, "attempts", res.Attempts, "rejected", len(res.Rejected))
	} else {
		c.events.emit(Event{Type: EventEmailFailed, SessionID: res.SessionID, EmailID: em.id, Result: res, Err: res.Err})
		c.log.Debug("mxrelay: email ended undelivered", "email", em.id, "outcome", res.Outcome.String(), "err", res.Err)
	}
	c.drained()
}

// count adds res to the Stats counters; txTime is its delivering
// transaction's. c.mu is held.
func (c *Client) count(res *Result, txTime time.Duration) {
	switch res.Outcome {
	case OutcomeDelivered:
		c.stats.EmailsDelivered++
		c.sumEmail += txTime
	case OutcomeUnknown:
		c.stats.EmailsUnknown++
	case OutcomeHandedBack:
		c.stats.EmailsHandedBack++
	}
	if res.Outcome != OutcomeDelivered {
		c.stats.EmailsFailed++
	}
	if res.MaybeDelivered {
		c.stats.EmailsMaybeDelivered++
	}
}

// result is em's Result, ending with err as out unless a recipient has
// it: the one place a Result's Outcome is set. Recipients still undecided
// end in Rejected with the upstream's last refusal of them, or, for an
// email delivered to others, with err. c.mu is held.
func (c *Client) result(em *email, out Outcome, err error) *Result {
	delivered := len(em.accepted) > 0
	rejected := slices.Clone(em.rejected)
	decided := map[string]bool{}
	for _, r := range rejected {
		decided[r.Address] = true
	}
	for _, to := range em.pending {
		last := em.refusedLast[to]
		switch {
		case decided[to]:
		case delivered && err != nil && last != nil && !errors.Is(err, last):
			rejected = append(rejected, recipientError(to, fmt.Errorf("%w (last refused with: %w)", err, last)))
		case delivered && err != nil:
			rejected = append(rejected, recipientError(to, err))
		case last != nil:
			rejected = append(rejected, recipientError(to, last))
		}
	}
	res := &Result{
		EmailID:        em.id,
		Priority:       em.cfg.priority,
		Outcome:        out,
		Accepted:       em.accepted,
		Rejected:       rejected,
		Attempts:       em.attempts,
		SessionID:      em.session,
		MaybeDelivered: em.unknown,
		Queued:         em.queuedAt,
		Duration:       time.Since(em.queuedAt),
	}
	switch {
	case delivered:
		res.Outcome, res.Reply = OutcomeDelivered, em.reply
	case err == nil:
		res.Outcome = OutcomeFailed
		res.Err = &EmailError{EmailID: em.id, Attempts: em.attempts, Err: fmt.Errorf("%w: no recipient accepted", ErrInvalidEmail)}
	default:
		res.Err = &EmailError{EmailID: em.id, Attempts: em.attempts, Err: err}
	}
	return res
}
