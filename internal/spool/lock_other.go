//go:build !unix

package spool

import "os"

// Without flock, two Stores on one directory are not detected, and a
// directory's names are as durable as the system makes them.

func lockFile(*os.File) error { return nil }

func unlockFile(*os.File) {}

func syncDir(string) error { return nil }
