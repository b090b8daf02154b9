// Package alloctest measures what a function allocates, for the fuzz
// targets' bounds on memory.
package alloctest

import "runtime"

// Bytes returns the bytes allocated on the heap while f ran. Other
// goroutines' allocations in that time are counted too: call it where
// nothing else runs.
func Bytes(f func()) uint64 {
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	f()
	runtime.ReadMemStats(&after)
	return after.TotalAlloc - before.TotalAlloc
}
