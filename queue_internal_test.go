package mxrelay

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func qe(seq uint64, p Priority) *email {
	return &email{id: string(rune('a' + seq)), seq: seq, cfg: sendConfig{priority: p}, qidx: -1}
}

func popAll(q *queue) []uint64 {
	var out []uint64
	for e := q.pop(); e != nil; e = q.pop() {
		out = append(out, e.seq)
	}
	return out
}

func TestQueuePriorityThenFIFO(t *testing.T) {
	var q queue
	now := time.Now()
	prios := []Priority{PriorityLow, PriorityNormal, PriorityHigh, PriorityNormal, PriorityCritical, PriorityLow, PriorityHigh, PriorityCritical}
	for i, p := range prios {
		q.push(qe(uint64(i+1), p), now)
	}
	require.Equal(t, len(prios), q.len())
	assert.Equal(t, []uint64{5, 8, 3, 7, 2, 4, 1, 6}, popAll(&q))
	assert.Equal(t, 0, q.len())
}

func TestQueueRetryWaitsBehindFreshMail(t *testing.T) {
	var q queue
	now := time.Now()
	for i := uint64(1); i <= 3; i++ {
		q.push(qe(i, PriorityNormal), now)
	}
	first := q.pop()
	require.Equal(t, uint64(1), first.seq)
	first.attempts = 1
	first.notBefore = now.Add(time.Second)
	q.push(first, now)
	assert.Equal(t, qDelayed, first.qheap)
	assert.Equal(t, 2, q.readyLen(), "two ready, one delayed")
	assert.Equal(t, 3, q.len())
	due, ok := q.nextDue()
	require.True(t, ok)
	assert.Equal(t, now.Add(time.Second), due)

	q.promote(now.Add(time.Second))
	assert.Equal(t, qRetry, first.qheap, "a due retry waits in its level's retry lane")
	assert.Equal(t, []uint64{2, 1, 3}, popAll(&q), "fresh mail first, then turns")
}

// A server that keeps refusing some recipients must not hold fresh mail
// back behind their retries (Postfix's deferred queue), nor fresh mail
// starve the retries: when both wait, they take turns, fresh first.
func TestQueueFreshAndRetriesTakeTurns(t *testing.T) {
	var q queue
	now := time.Now()
	for i := uint64(1); i <= 4; i++ { // accepted first, each tried once
		e := qe(i, PriorityNormal)
		e.attempts = 1
		q.push(e, now)
	}
	for i := uint64(5); i <= 10; i++ {
		q.push(qe(i, PriorityNormal), now)
	}
	assert.Equal(t, []uint64{5, 1, 6, 2, 7, 3, 8, 4, 9, 10}, popAll(&q))

	// Only retries, or only fresh mail: each in its order.
	for i := uint64(1); i <= 3; i++ {
		e := qe(i, PriorityHigh)
		e.attempts = 2
		q.push(e, now)
	}
	assert.Equal(t, []uint64{1, 2, 3}, popAll(&q))
}

// Priority still comes first: a HIGH retry goes before NORMAL fresh mail,
// and an email withdrawn from a lane leaves the turns as they were.
func TestQueueLanesKeepPriorityAndRemove(t *testing.T) {
	var q queue
	now := time.Now()
	r := qe(1, PriorityHigh)
	r.attempts = 1
	q.push(r, now)
	q.push(qe(2, PriorityNormal), now)
	gone := qe(3, PriorityHigh)
	gone.attempts = 1
	q.push(gone, now)
	q.remove(gone)
	assert.Equal(t, qNone, gone.qheap)
	assert.Equal(t, 2, q.len())
	assert.Equal(t, []uint64{1, 2}, popAll(&q))
}

func TestQueueRemoveAnywhere(t *testing.T) {
	var q queue
	now := time.Now()
	es := make([]*email, 6)
	for i := range es {
		es[i] = qe(uint64(i+1), Priority(i%4)-1)
		if i == 4 {
			es[i].notBefore = now.Add(time.Minute)
		}
		q.push(es[i], now)
	}
	q.remove(es[2])
	q.remove(es[4])
	assert.Equal(t, qNone, es[2].qheap)
	assert.Equal(t, 4, q.len())
	_, ok := q.nextDue()
	assert.False(t, ok)
	got := popAll(&q)
	assert.ElementsMatch(t, []uint64{1, 2, 4, 6}, got)
}

func TestQueueUrgentCount(t *testing.T) {
	var q queue
	now := time.Now()
	a := qe(1, PriorityCritical)
	b := qe(2, PriorityLow)
	b.cfg.immediate = true
	c := qe(3, PriorityNormal)
	for _, e := range []*email{a, b, c} {
		q.push(e, now)
	}
	assert.Equal(t, 2, q.urgent)
	q.remove(b)
	assert.Equal(t, 1, q.urgent)
	q.pop()
	assert.Equal(t, 0, q.urgent)
}

func TestQueueAllTakesDelayedToo(t *testing.T) {
	var q queue
	now := time.Now()
	d := qe(1, PriorityLow)
	d.notBefore = now.Add(time.Hour)
	q.push(d, now)
	q.push(qe(2, PriorityHigh), now)
	all := q.all()
	require.Len(t, all, 2)
	assert.Equal(t, uint64(2), all[0].seq)
	assert.Equal(t, 0, q.len())
}
