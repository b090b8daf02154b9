//go:build unix

package main

import (
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
)

// checkConfigPath refuses the configuration file at path, whose opened
// file is fi, when a user other than root and the one running the command
// could change what it says: when it is owned by another user, or when a
// directory on its path, as given or with its symbolic links resolved,
// may be written by group or others without the sticky bit, or is owned
// by another user (anyone who may write a directory may rename a file of
// theirs over the configuration), as ssh's StrictModes does.
func checkConfigPath(path string, fi fs.FileInfo) error {
	uid := os.Getuid()
	owner := func(fi fs.FileInfo) (uint32, bool) {
		st, ok := fi.Sys().(*syscall.Stat_t)
		if !ok {
			return 0, false
		}
		return st.Uid, st.Uid == 0 || int(st.Uid) == uid
	}
	if o, ok := owner(fi); !ok {
		return fmt.Errorf("%w: %s is owned by uid %d, neither root nor the user running the command (uid %d): its owner chooses where the mail and the API key go", errConfig, path, o, uid)
	}
	abs, err := filepath.Abs(path)
	if err != nil {
		return fmt.Errorf("%w: %s: %w", errConfig, path, err)
	}
	resolved, err := filepath.EvalSymlinks(abs)
	if err != nil {
		return fmt.Errorf("%w: %s: %w", errConfig, path, err)
	}
	for _, p := range []string{abs, resolved} {
		for dir := filepath.Dir(p); ; dir = filepath.Dir(dir) {
			di, err := os.Stat(dir)
			if err != nil {
				return fmt.Errorf("%w: %s: %w", errConfig, dir, err)
			}
			if m := di.Mode(); m.Perm()&0o022 != 0 && m&fs.ModeSticky == 0 {
				return fmt.Errorf("%w: %s is in %s, which users other than its owner may write (mode %v): they could put another file in its place; make it writable by its owner only (chmod go-w)", errConfig, path, dir, m.Perm())
			}
			if o, ok := owner(di); !ok {
				return fmt.Errorf("%w: %s is in %s, owned by uid %d, neither root nor the user running the command (uid %d): its owner could put another file in its place", errConfig, path, dir, o, uid)
			}
			if dir == filepath.Dir(dir) {
				break
			}
		}
	}
	return nil
}
