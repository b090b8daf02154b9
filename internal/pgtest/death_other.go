//go:build !linux

package pgtest

import "syscall"

// setDeathSignal does nothing where the kernel has no parent death
// signal: a test binary that dies leaves its server running.
func setDeathSignal(*syscall.SysProcAttr) {}
