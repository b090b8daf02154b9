package mxrelay

import (
	"container/heap"
	"time"
)

// queue holds the emails waiting to be sent: a FIFO per priority of the
// emails that may go now, and the emails waiting for a retry time. It knows
// nothing of sessions or transports. It is not safe for concurrent use: the
// Client guards it with its mutex.
type queue struct {
	ready   [numPriorities]fifo
	delayed delayHeap
	urgent  int // ready emails that skip BatchWait
}

// An email is in at most one heap at a time: qheap says which, qidx is its
// index there. The queue writes nothing else of an email.
const (
	qNone int8 = iota
	qReady
	qDelayed
)

// fifo orders emails of one priority by their sequence number, so that an
// email coming back for a retry keeps its place among later ones.
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
	n := q.delayed.Len()
	for i := range q.ready {
		n += q.ready[i].Len()
	}
	return n
}

// push adds e, delayed if its notBefore is after now.
func (q *queue) push(e *email, now time.Time) {
	if e.notBefore.After(now) {
		e.qheap = qDelayed
		heap.Push(&q.delayed, e)
		return
	}
	e.qheap = qReady
	heap.Push(&q.ready[level(e.cfg.priority)], e)
	if e.urgent() {
		q.urgent++
	}
}

// promote moves the delayed emails that are due to their ready queue.
func (q *queue) promote(now time.Time) {
	for q.delayed.Len() > 0 && !q.delayed[0].notBefore.After(now) {
		e := heap.Pop(&q.delayed).(*email)
		q.push(e, now)
	}
}

// depth fills in the queue's part of Stats. The oldest email of a
// priority is its FIFO's first (the lowest sequence number, accepted
// first); the delayed ones are looked at one by one.
func (q *queue) depth(s *Stats, now time.Time) {
	var oldest time.Time
	older := func(e *email) {
		if oldest.IsZero() || e.queuedAt.Before(oldest) {
			oldest = e.queuedAt
		}
	}
	s.QueuedByPriority = make(map[Priority]int, numPriorities)
	for i := range q.ready {
		s.QueuedByPriority[PriorityLow+Priority(i)] += q.ready[i].Len()
		if q.ready[i].Len() > 0 {
			older(q.ready[i][0])
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
		n += q.ready[i].Len()
	}
	return n
}

// pop takes the first ready email of the highest priority, or nil.
func (q *queue) pop() *email {
	for i := numPriorities - 1; i >= 0; i-- {
		if q.ready[i].Len() > 0 {
			e := heap.Pop(&q.ready[i]).(*email)
			if e.urgent() {
				q.urgent--
			}
			return e
		}
	}
	return nil
}

// remove takes e out of the queue wherever it is.
func (q *queue) remove(e *email) {
	switch e.qheap {
	case qReady:
		heap.Remove(&q.ready[level(e.cfg.priority)], e.qidx)
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
