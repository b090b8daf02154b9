//go:build unix

package mxrelay

import (
	"io/fs"
	"os"
	"syscall"
)

// openKeyFile opens an API key file without blocking: a FIFO's open would
// wait for a writer, and it is refused once open as not a regular file.
func openKeyFile(name string) (*os.File, error) {
	return os.OpenFile(name, os.O_RDONLY|syscall.O_NONBLOCK|syscall.O_NOCTTY, 0)
}

// worldReadable reports whether every user may read the file.
func worldReadable(fi fs.FileInfo) bool { return fi.Mode().Perm()&0o004 != 0 }
