//go:build !unix

package bench

import "time"

// processCPU is not measured on this system: negative.
func processCPU() time.Duration { return -1 }
