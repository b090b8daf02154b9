package pgtest

import "syscall"

// setDeathSignal makes the kernel stop the server (immediate shutdown) if
// the test binary dies without stopping it.
func setDeathSignal(attr *syscall.SysProcAttr) { attr.Pdeathsig = syscall.SIGQUIT }
