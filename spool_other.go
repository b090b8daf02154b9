//go:build !unix

package mxrelay

import "os"

// Without flock, two Clients on one SpoolDir are not detected, and a
// directory's names are as durable as the system makes them.

func lockFile(*os.File) error { return nil }

func unlockFile(*os.File) {}

func syncDir(string) error { return nil }
