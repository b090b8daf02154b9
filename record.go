package mxrelay

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"time"

	"github.com/mxrelay/mxrelay/internal/store"
)

// email is the client's record of an accepted email. Its state and its
// per-recipient books change only through the transitions in this file,
// with Client.mu held: accepted (queue), claimed from the store (adopt),
// taken by a session (taken), end of data handed on (endHandedOn),
// requeued after a verdict (settle), finished (finish), and, in a shared
// store, let go of (store.go: away). Each transition the store must know
// of is written there (store.Store): Ending, Requeue, HandBack, Finish.
// The queue keeps its position (qheap, qidx) and nothing else.
type email struct {
	id       string
	sid      string // its ID in the store: id, unless another email kept there has it
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
	unknown     bool // an attempt ended with an unknown outcome
	ended       bool // an Ending is recorded in the store since the last progress
	pre         bool // the attempt's Ending was recorded with its window's (endings)
	// The store's claim: tok is its fencing token, held whether the
	// client holds it (false once it was released: Requeue, HandBack,
	// Finish). committed is set once Enqueue's Commit returned: a claim
	// made before waits for it to be queued (accepted).
	tok       store.Token
	held      bool
	committed bool
	// fenced is set once a write of the claim was refused as fenced (a
	// *store.FencedError): the email is another claim's, and nothing
	// more of it is written here, nor given a result (store.go: fence).
	fenced     bool
	rd         io.ReadCloser // the body, as the store gives it, for the attempt in progress
	canceled   error         // why it was withdrawn, once Cancel or its context asked
	canceledAs Outcome       // the outcome canceled gives it, if no recipient has it
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
	stateAway                       // let go of to a shared store: another record's, or no one's here (away)
)

func (e *email) urgent() bool { return e.cfg.immediate || e.cfg.priority == PriorityCritical }

// taken marks em, just popped from the queue, as in a transaction of
// session sid; withdraw, if not nil, ends the session should em be
// cancelled before its end of data. c.mu is held.
func (c *Client) taken(em *email, sid string, withdraw, hurry func()) {
	em.state = stateEnvelope
	em.pre = false
	em.attempts++
	em.session = sid
	em.inTx = true
	em.withdraw, em.hurry = withdraw, hurry
	c.inflight++
}

// endHandedOn is called right before em's end of data is written: false
// means it must not be, because em was withdrawn, or because the store
// could not record it (em is then handed back).
func (c *Client) endHandedOn(em *email) bool {
	c.mu.Lock()
	if em.canceled != nil || em.state != stateEnvelope {
		c.mu.Unlock()
		return false
	}
	em.state = stateReply
	em.withdraw = nil
	tok := em.tok
	if em.pre {
		c.mu.Unlock()
		return true // recorded with its window (endings)
	}
	c.mu.Unlock()
	// Recorded before the end of data is on the wire: a restart after a
	// crash knows the server may have the email.
	errs, err := c.st.Ending(context.Background(), []store.Token{tok})
	if err == nil {
		err = errs[0]
	}
	if errors.Is(err, store.ErrFenced) {
		// Another claim's: no end of data, and no result here.
		c.mu.Lock()
		em.state = stateEnvelope
		c.mu.Unlock()
		c.fence(em, tok)
		return false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	switch {
	case err == nil:
		em.ended = true
		return true
	case errors.Is(err, store.ErrCanceled):
		// Withdrawn from another process (a Handle's Cancel there).
		em.canceled, em.canceledAs = ErrCanceled, OutcomeFailed
	default:
		// Not sent: a restart could not tell that the server may have it.
		em.canceled, em.canceledAs = c.kept(err), OutcomeHandedBack
	}
	em.state = stateEnvelope
	return false
}

// endings records the ends of data of ems, taken together for a
// pipelined window, in one call: before their first command, so that
// each is recorded before its end of data is written (an email withdrawn
// meanwhile has its record answered by its result or progress). An email
// the call could not record is recorded alone at its end of data
// (endHandedOn), which decides what follows.
func (c *Client) endings(ems []*email) {
	toks := make([]store.Token, len(ems))
	c.mu.Lock()
	for i, em := range ems {
		toks[i] = em.tok
	}
	c.mu.Unlock()
	errs, err := c.st.Ending(context.Background(), toks)
	if err != nil {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for i, em := range ems {
		if errs[i] == nil {
			em.pre, em.ended = true, true
		}
	}
}

// kept is err for an email handed back, saying so when the store keeps it
// for the next Client (ErrSpooled).
func (c *Client) kept(err error) error {
	if c.durable {
		return fmt.Errorf("%w: %w", err, ErrSpooled)
	}
	return err
}

// cancel withdraws em (see Handle.Cancel). An email whose end of data was
// not handed on ends at once with cause, as out (OutcomeFailed, or
// OutcomeUnknown for an email the spool gave back after its end of data
// may have been written): in the queue it leaves
// the queue; in a transaction, the session withdraws it at its next step
// (before the next command or chunk, or by closing the channel in the
// middle of a DATA body) and never writes its end of data. Once the end of
// data is handed on, the reply decides, but no further attempt follows.
// It reports false, doing nothing, for an email let go of to a shared
// store (away): the store withdraws it (cancelHandle).
func (c *Client) cancel(em *email, out Outcome, cause error) bool {
	c.mu.Lock()
	if em.state == stateAway {
		c.mu.Unlock()
		return false
	}
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
		return true
	}
	c.mu.Unlock()
	c.finish(em, em.canceledAs, em.canceled)
	if withdraw != nil {
		withdraw()
	}
	c.kick()
	return true
}

// settle applies the verdict of em's attempt: its books, then a retry, a
// hand-back or its result.
func (c *Client) settle(em *email, v verdict, txTime time.Duration) {
	c.mu.Lock()
	em.inTx, em.withdraw, em.hurry = false, nil, nil
	rd := em.rd
	em.rd = nil
	if rd != nil {
		defer rd.Close() // the engine is done with it
	}
	if em.state == stateDone || em.state == stateAway {
		// Finished meanwhile (cancelled, or Close), or fenced.
		c.mu.Unlock()
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
		c.finish(em, OutcomeHandedBack, c.kept(v.err))
	case v.unknown:
		c.finish(em, OutcomeUnknown, v.err)
	default:
		c.finish(em, OutcomeFailed, v.err)
	}
}

// requeue puts em back in the queue for a retry after cause: the store
// records its progress and releases it until its retry time, when a
// client claims it again (pull): this one, for a store of its own (the
// queue keeps its place meanwhile), any, for a shared one (letGo).
func (c *Client) requeue(em *email, cause error, delay time.Duration) {
	now := time.Now()
	c.mu.Lock()
	if em.state == stateDone || em.state == stateAway {
		c.mu.Unlock()
		return
	}
	tok, p, fenced := em.tok, c.progress(em), em.fenced
	c.mu.Unlock()
	if cause != nil {
		p.Error = cause.Error() // for an operator (mxrelay-queue list)
	}
	var err error
	if !fenced {
		err = c.persist(func(ctx context.Context) error { return c.st.Requeue(ctx, tok, p, now.Add(delay)) })
		fenced = errors.Is(err, store.ErrFenced)
	}
	if err != nil && !fenced {
		// Nothing recorded: the Ending stays unanswered, so that a restart
		// takes the email for an unknown outcome, which is safe. Released
		// all the same, without its delay.
		c.log.Error("mxrelay: store", "email", em.id, "err", err)
		c.st.HandBack(context.Background(), tok, nil)
	}
	c.mu.Lock()
	if em.state == stateDone || em.state == stateAway {
		c.mu.Unlock()
		return
	}
	if fenced {
		c.drop(em)
		c.mu.Unlock()
		return
	}
	em.held = false
	if err == nil {
		em.ended = false
	}
	em.notBefore = now.Add(delay)
	em.state = stateQueued
	c.inflight--
	// Read before the email is back in the queue: another worker may take
	// it at once.
	attempt, session := em.attempts, em.session
	c.letGo(em)
	c.stats.RetriesScheduled++
	c.mu.Unlock()
	c.kick()
	c.log.Warn("mxrelay: email will be retried", "email", em.id, "attempt", attempt, "delay", delay, "err", cause)
	c.events.emit(Event{Type: EventEmailRetrying, SessionID: session, EmailID: em.id, Attempt: attempt, Duration: delay, Err: cause})
}

// drop lets go of em, fenced, wherever it was (see fence). c.mu is held.
func (c *Client) drop(em *email) {
	if em.state == stateEnvelope || em.state == stateReply {
		c.inflight--
	}
	c.away(em)
}

// progress is where em stands, for the store. c.mu is held.
func (c *Client) progress(em *email) *store.Progress {
	p := &store.Progress{Attempts: em.attempts, Unknown: em.unknown,
		Accepted: slices.Clone(em.accepted), Pending: slices.Clone(em.pending),
		Rejected: rejectedText(em.rejected), Kind: progressKind(em.rejected)}
	if em.reply != (Reply{}) {
		p.Reply = &store.Reply{Code: em.reply.Code, Enhanced: em.reply.EnhancedCode, Message: em.reply.Message}
	}
	return p
}

// rejectedText is how the store records refused recipients: each
// address with its error's text; nil for none.
func rejectedText(rs []RecipientError) map[string]string {
	var m map[string]string
	for _, r := range rs {
		if m == nil {
			m = map[string]string{}
		}
		m[r.Address] = r.Err.Error()
	}
	return m
}

// finish gives em its Result: delivered when a recipient accepted it,
// otherwise ended with err as out (OutcomeFailed, OutcomeUnknown or
// OutcomeHandedBack). Only the first call counts. The store records it
// before anyone can see it; an email handed back stays in the store (for
// the next Client, if the store is durable). An email the store gives to
// another claim (fenced) gets no result here: its Handle follows the
// store; so does one handed back to a shared store while the Client
// runs (the store could not record its end of data), which any process
// may send.
func (c *Client) finish(em *email, out Outcome, err error) {
	c.mu.Lock()
	if em.state == stateDone || em.state == stateAway {
		c.mu.Unlock()
		return
	}
	if em.fenced {
		c.drop(em)
		c.mu.Unlock()
		return
	}
	wasInflight := em.state == stateEnvelope || em.state == stateReply
	em.state = stateDone
	if wasInflight {
		c.inflight--
	}
	res := c.result(em, out, err)
	if em.timer != nil {
		em.timer.Stop()
	}
	delete(c.byID, em.sid)
	held, tok := em.held, em.tok
	em.held = false
	var p *store.Progress
	if em.ended && out == OutcomeHandedBack {
		p = c.progress(em) // answers the Ending records
	}
	release := out == OutcomeHandedBack && held && c.hold.releasesHandedBack(c.closed)
	c.mu.Unlock()

	var serr error
	sr := func() *store.Result { return c.storeResult(em.sid, res) }
	switch {
	case release:
		serr = c.persist(func(ctx context.Context) error { return c.st.HandBack(ctx, tok, p) })
	case out == OutcomeHandedBack && held && c.durable:
		serr = c.handBack(em, tok, p)
	case out == OutcomeHandedBack && held:
		// Given back to the caller: the store forgets it.
		serr = c.st.Finish(context.Background(), tok, sr())
	case out == OutcomeHandedBack:
		// Released already: it waits in the store for its retry time.
	case held:
		serr = c.persist(func(ctx context.Context) error { return c.st.Finish(ctx, tok, sr()) })
	default:
		serr = c.release(em, res)
	}
	if release || errors.Is(serr, store.ErrFenced) || c.hold.shared && errors.Is(serr, store.ErrUnavailable) {
		// Any process's to send (this one's too), or another claim's, or
		// one whose result a shared store had not taken when Close
		// stopped persist waiting for it (another process may take it
		// over, and give it a result of its own): its result is not this
		// Client's to give, but the store's.
		c.mu.Lock()
		c.away(em)
		c.mu.Unlock()
		return
	}
	if serr != nil && !errors.Is(serr, store.ErrClosed) {
		// A durable store sends it again at its next opening, or takes
		// it for an unknown outcome if its end of data was recorded.
		c.log.Error("mxrelay: store", "email", em.id, "err", serr)
	}
	c.mu.Lock()
	c.count(res, em.txTime)
	c.mu.Unlock()
	// The event is out before the Handle has the result: a caller that
	// closes the Client as soon as Send returns still gets it.
	if res.Outcome == OutcomeDelivered {
		c.events.emit(Event{Type: EventEmailProcessed, SessionID: res.SessionID, EmailID: em.id, Result: res, Duration: em.txTime})
		c.log.Debug("mxrelay: email delivered", "email", em.id, "attempts", res.Attempts, "rejected", len(res.Rejected))
	} else {
		c.events.emit(Event{Type: EventEmailFailed, SessionID: res.SessionID, EmailID: em.id, Result: res, Err: res.Err})
		c.log.Debug("mxrelay: email ended undelivered", "email", em.id, "outcome", res.Outcome.String(), "err", res.Err)
	}
	c.mu.Lock()
	c.deliver(em.handle, res)
	c.drainedLocked()
	c.mu.Unlock()
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

// handBack releases em, held by tok, in a durable store, where it stays
// for the next Client: a claim of it by this one leaves it (gone).
func (c *Client) handBack(em *email, tok store.Token, p *store.Progress) error {
	c.pullMu.Lock()
	defer c.pullMu.Unlock()
	c.gone[em.sid] = true
	return c.persist(func(ctx context.Context) error { return c.st.HandBack(ctx, tok, p) })
}

// release records the result of em, which the client does not hold: it
// waits in the store for its retry time. Unless a claim took it
// meanwhile (then adopt finishes it, as done), it is finished there.
func (c *Client) release(em *email, res *Result) error {
	c.pullMu.Lock()
	defer c.pullMu.Unlock()
	c.mu.Lock()
	held, tok := em.held, em.tok
	em.held = false
	c.mu.Unlock()
	if held {
		return c.st.Finish(context.Background(), tok, c.storeResult(em.sid, res))
	}
	_, err := c.st.Cancel(context.Background(), em.sid, c.storeResult(em.sid, res))
	if errors.Is(err, store.ErrNotFound) {
		return nil
	}
	return err
}
