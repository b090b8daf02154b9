package bench

import (
	"runtime"
	"time"
)

// Usage is what this process spent during a run: its CPU time and its
// heap allocations, whichever goroutine spent them. With the servers in a
// child process (StartEnv), that is the client's alone, with the run's own
// bookkeeping (timestamps, the handles or replies it checks).
type Usage struct {
	// CPU is the user and system CPU time of the process, every thread;
	// negative where the system does not give it (not unix).
	CPU time.Duration
	// Mallocs counts the heap objects allocated (MemStats.Mallocs).
	Mallocs uint64
	// Bytes counts the heap bytes allocated (MemStats.TotalAlloc).
	Bytes uint64
}

// meter is Usage from its start.
type meter struct {
	cpu time.Duration
	ms  runtime.MemStats
}

// startMeter reads the counters. The memory statistics are read first and
// the CPU time last, so that the meter's own stop of the world is left out
// of the CPU time as far as it can be.
func startMeter() *meter {
	m := new(meter)
	runtime.ReadMemStats(&m.ms)
	m.cpu = processCPU()
	return m
}

// stop returns what was spent since startMeter.
func (m *meter) stop() Usage {
	cpu := processCPU()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	u := Usage{CPU: -1, Mallocs: ms.Mallocs - m.ms.Mallocs, Bytes: ms.TotalAlloc - m.ms.TotalAlloc}
	if cpu >= 0 && m.cpu >= 0 {
		u.CPU = cpu - m.cpu
	}
	return u
}
