package mxrelay

import (
	"container/heap"
	"time"
)

// queue holds the emails waiting to be sent: per priority, a lane of the
// emails that may go now, and the emails waiting for a retry time. It knows
// nothing of sessions or transports. It is not safe for concurrent use: the
// Client guards it with its mutex.
type queue struct {
	ready   [numPriorities]lane
	delayed delayHeap
	urgent  int // ready emails that skip BatchWait
}

// lane holds the ready emails of one priority in two FIFOs, as Postfix
// keeps an active and a deferred queue: fresh mail (never attempted) and
// retries. A retry never goes ahead of fresh mail accepted after it; when
// both wait, they take turns, fresh first, so that neither mail a server
// keeps refusing nor a flood of new mail holds the other back.
type lane struct {
	fresh, retry fifo
	retryNext    bool // the next pop takes a retry, if one waits
}

func (l *lane) len() int { return l.fresh.Len() + l.retry.Len() }

// An email is in at most one heap at a time: qheap says which, qidx is its
// index there. The queue writes nothing else of an email.
const (
	qNone int8 = iota
	qFresh
	qRetry
	qDelayed
)

// fifo orders emails by their sequence number: the order they were
// accepted in.
type fifo []*email

func (h fifo) Len() int           { return len(h) }
func (h fifo) Less(i, j int) bool { return h[i].seq < h[j].seq }
func (h fifo) Swap(i, j int)      { h[i], h[j] = h[j], h[i]; h[i].qidx = i; h[j].qidx = j }
func (h *fifo) Push(x any)        { e := x.(*email); e.qidx = len(*h); *h = append(*h, e) }
func (h *fifo) Pop() any          { return popLast((*[]*email)(h)) }

type delayHeap []*email

func (h delayHeap) Len() int { return len(h) }
func (h delayHeap) Less(i, j int) bool {
	if !h[i].notBefore.Equal(h[j].notBefore) {
		return h[i].notBefore.Before(h[j].notBefore)
	}
	return h[i].seq < h[j].seq
}
func (h delayHeap) Swap(i, j int) { h[i], h[j] = h[j], h[i]; h[i].qidx = i; h[j].qidx = j }
func (h *delayHeap) Push(x any)   { e := x.(*email); e.qidx = len(*h); *h = append(*h, e) }
func (h *delayHeap) Pop() any     { return popLast((*[]*email)(h)) }

func popLast(s *[]*email) any {
	old := *s
	e := old[len(old)-1]
	old[len(old)-1] = nil
	*s = old[:len(old)-1]
	e.qidx, e.qheap = -1, qNone
	return e
}

func level(p Priority) int { return int(p - PriorityLow) }

// len is the number of emails in the queue, ready or delayed.
func (q *queue) len() int {
	return q.delayed.Len() + q.readyLen()
}

// push adds e, delayed if its notBefore is after now.
func (q *queue) push(e *email, now time.Time) {
	if e.notBefore.After(now) {
		e.qheap = qDelayed
		heap.Push(&q.delayed, e)
		return
	}
	l := &q.ready[level(e.cfg.priority)]
	if e.attempts > 0 {
		e.qheap = qRetry
		heap.Push(&l.retry, e)
	} else {
		e.qheap = qFresh
		heap.Push(&l.fresh, e)
	}
	if e.urgent() {
		q.urgent++
	}
}

// wait adds e to the emails waiting for their retry time, whenever that
// is: e was released to the store, which holds it until then, and comes
// back when the client claims it again.
func (q *queue) wait(e *email) {
	e.qheap = qDelayed
	heap.Push(&q.delayed, e)
}

// promote moves the delayed emails that are due to their ready queue.
func (q *queue) promote(now time.Time) {
	for q.delayed.Len() > 0 && !q.delayed[0].notBefore.After(now) {
		e := heap.Pop(&q.delayed).(*email)
		q.push(e, now)
	}
}

// depth fills in the queue's part of Stats. The oldest email of a lane's
// FIFO is its first (the lowest sequence number, accepted first); the
// delayed ones are looked at one by one.
func (q *queue) depth(s *Stats, now time.Time) {
	var oldest time.Time
	older := func(e *email) {
		if oldest.IsZero() || e.queuedAt.Before(oldest) {
			oldest = e.queuedAt
		}
	}
	s.QueuedByPriority = make(map[Priority]int, numPriorities)
	for i := range q.ready {
		l := &q.ready[i]
		s.QueuedByPriority[PriorityLow+Priority(i)] += l.len()
		for _, f := range []fifo{l.fresh, l.retry} {
			if f.Len() > 0 {
				older(f[0])
			}
		}
	}
	for _, e := range q.delayed {
		s.QueuedByPriority[e.cfg.priority]++
		older(e)
	}
	s.Delayed = q.delayed.Len()
	if !oldest.IsZero() {
		s.OldestQueued = now.Sub(oldest)
	}
}

// readyLen is the number of emails that may go now (after promote).
func (q *queue) readyLen() int {
	n := 0
	for i := range q.ready {
		n += q.ready[i].len()
	}
	return n
}

// pop takes the next ready email of the highest priority (see lane), or
// nil.
func (q *queue) pop() *email {
	for i := numPriorities - 1; i >= 0; i-- {
		if e := q.ready[i].pop(); e != nil {
			if e.urgent() {
				q.urgent--
			}
			return e
		}
	}
	return nil
}

// pop takes fresh mail and retries in turns, fresh first, or nil.
func (l *lane) pop() *email {
	switch {
	case l.fresh.Len() > 0 && (l.retry.Len() == 0 || !l.retryNext):
		l.retryNext = l.retry.Len() > 0
		return heap.Pop(&l.fresh).(*email)
	case l.retry.Len() > 0:
		l.retryNext = false
		return heap.Pop(&l.retry).(*email)
	}
	return nil
}

// remove takes e out of the queue wherever it is.
func (q *queue) remove(e *email) {
	switch e.qheap {
	case qFresh, qRetry:
		l := &q.ready[level(e.cfg.priority)]
		if e.qheap == qFresh {
			heap.Remove(&l.fresh, e.qidx)
		} else {
			heap.Remove(&l.retry, e.qidx)
		}
		if e.urgent() {
			q.urgent--
		}
	case qDelayed:
		heap.Remove(&q.delayed, e.qidx)
	}
}

// nextDue is when the first delayed email becomes ready.
func (q *queue) nextDue() (time.Time, bool) {
	if q.delayed.Len() == 0 {
		return time.Time{}, false
	}
	return q.delayed[0].notBefore, true
}

// all removes and returns every email, highest priority first.
func (q *queue) all() []*email {
	var out []*email
	q.promote(time.Unix(1<<62, 0))
	for e := q.pop(); e != nil; e = q.pop() {
		out = append(out, e)
	}
	return out
}
