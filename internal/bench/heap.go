package bench

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"runtime"
	"runtime/metrics"
	"time"

	"github.com/mxrelay/mxrelay"
	"github.com/mxrelay/mxrelay/relaytest"
)

// QueueHeap measures the client's heap per queued email: n emails are
// enqueued on a client configured as c whose relay is down (HTTP 503), so
// nothing drains them, and the live heap after a GC is compared before and
// after. An email enqueued first has made the worker try the relay and
// wait out its backoff (state RECONNECTING), so its failed dial is not
// counted. The bodies (one
// shared message, a *bytes.Reader each) and the slice of handles are
// allocated before, so only what the client itself holds is counted.
func QueueHeap(c Client, m Mail, n int) (float64, error) {
	relay := relaytest.NewServer(nil)
	defer relay.Close()
	relay.SetDown(true)
	o := c.Options(n + 1)
	if c.Spool {
		dir, err := os.MkdirTemp("", "mxbench-spool-*")
		if err != nil {
			return 0, err
		}
		defer os.RemoveAll(dir)
		o.SpoolDir = dir
	}
	o.ReconnectInterval = time.Hour // no second try during the measurement
	client, err := mxrelay.New(relay.URL, relay.APIKey, &o)
	if err != nil {
		return 0, err
	}
	defer func() {
		ctx, cancel := context.WithCancel(context.Background())
		cancel() // hand every email back at once
		_ = client.Close(ctx)
	}()
	emails := make([]mxrelay.Email, n)
	for i := range emails {
		emails[i] = mxrelay.Email{From: m.From, To: m.To, Body: bytes.NewReader(m.Body)}
	}
	handles := make([]*mxrelay.Handle, 0, n)
	if _, err := client.Enqueue(mxrelay.Email{From: m.From, To: m.To, Body: bytes.NewReader(m.Body)}); err != nil {
		return 0, err
	}
	// A local 503 takes milliseconds; past a second, measure anyway.
	for deadline := time.Now().Add(time.Second); client.ConnState() != mxrelay.StateReconnecting && time.Now().Before(deadline); {
		time.Sleep(time.Millisecond)
	}

	before := liveHeap()
	for i := range emails {
		h, err := client.Enqueue(emails[i])
		if err != nil {
			return 0, fmt.Errorf("bench: enqueue: %w", err)
		}
		handles = append(handles, h)
	}
	after := liveHeap()
	runtime.KeepAlive(emails)
	runtime.KeepAlive(handles)
	return float64(int64(after)-int64(before)) / float64(n), nil
}

// liveHeap is the heap in use by live objects, after a full collection.
func liveHeap() uint64 {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc
}

// heapObjects is the runtime/metrics name of the bytes in heap objects,
// live or not yet swept: what the process holds for its heap data.
const heapObjects = "/memory/classes/heap/objects:bytes"

// heapPeak samples heapObjects until stopped and keeps the highest value.
type heapPeak struct {
	base uint64
	stop chan struct{}
	done chan uint64
}

// watchHeap collects garbage, takes the heap as the baseline and samples
// it every interval on a goroutine of its own.
func watchHeap(every time.Duration) *heapPeak {
	runtime.GC()
	w := &heapPeak{base: readHeap(), stop: make(chan struct{}), done: make(chan uint64, 1)}
	go func() {
		t := time.NewTicker(every)
		defer t.Stop()
		peak := w.base
		for {
			peak = max(peak, readHeap())
			select {
			case <-t.C:
			case <-w.stop:
				w.done <- max(peak, readHeap())
				return
			}
		}
	}()
	return w
}

// Stop ends the sampling and returns the peak above the baseline.
func (w *heapPeak) Stop() uint64 {
	close(w.stop)
	peak := <-w.done
	return peak - w.base
}

func readHeap() uint64 {
	s := []metrics.Sample{{Name: heapObjects}}
	metrics.Read(s)
	if s[0].Value.Kind() != metrics.KindUint64 {
		return 0
	}
	return s[0].Value.Uint64()
}
