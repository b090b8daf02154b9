package main

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"runtime/pprof"
)

// profiles are the files -cpuprofile and -memprofile name; "" is none.
type profiles struct{ cpu, mem string }

// startProfiles starts the CPU profile, if asked for, and returns what
// stops it and writes the allocation profile, if asked for. Both cover
// this process only: the clients of every row measured, not the servers,
// which run in a child.
func startProfiles(p profiles) (stop func() error, err error) {
	var cpu *os.File
	if p.cpu != "" {
		if cpu, err = os.Create(p.cpu); err != nil {
			return nil, fmt.Errorf("cpu profile: %w", err)
		}
		if err := pprof.StartCPUProfile(cpu); err != nil {
			return nil, errors.Join(fmt.Errorf("cpu profile: %w", err), cpu.Close())
		}
	}
	return func() error {
		var errs []error
		if cpu != nil {
			pprof.StopCPUProfile()
			if err := cpu.Close(); err != nil {
				errs = append(errs, fmt.Errorf("cpu profile: %w", err))
			}
		}
		if p.mem != "" {
			errs = append(errs, writeAllocs(p.mem))
		}
		return errors.Join(errs...)
	}, nil
}

// writeAllocs writes the allocation profile (every allocation since the
// start, sampled at runtime.MemProfileRate) to path.
func writeAllocs(path string) error {
	f, err := os.Create(path)
	if err != nil {
		return fmt.Errorf("memory profile: %w", err)
	}
	runtime.GC() // the profile is as of the last GC: bring it up to date
	if err := pprof.Lookup("allocs").WriteTo(f, 0); err != nil {
		return errors.Join(fmt.Errorf("memory profile: %w", err), f.Close())
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("memory profile: %w", err)
	}
	return nil
}
