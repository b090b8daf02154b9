//go:build !unix

package mxrelay

import (
	"io/fs"
	"os"
)

func openKeyFile(name string) (*os.File, error) { return os.Open(name) }

// worldReadable is false: permissions other than Unix mode bits (Windows'
// ACLs) are not checked.
func worldReadable(fs.FileInfo) bool { return false }
