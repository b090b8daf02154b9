// Package alloctest measures what a function allocates, for the fuzz
// targets' bounds on memory.
package alloctest

import "runtime/metrics"

const allocs = "/gc/heap/allocs:bytes"

// Bytes returns about the bytes allocated on the heap while f ran: the
// runtime counts small objects a span at a time, so the figure may be off
// by a few spans (up to a few hundred KiB): bound it with that much slack,
// to catch allocation that grows faster than the input. Other goroutines' allocations in that time are
// counted too: call it where nothing else runs. Unlike
// runtime.ReadMemStats it does not stop the world, so a fuzz target can
// call it at every input.
func Bytes(f func()) uint64 {
	s := []metrics.Sample{{Name: allocs}}
	metrics.Read(s)
	before := s[0].Value.Uint64()
	f()
	metrics.Read(s)
	return s[0].Value.Uint64() - before
}
