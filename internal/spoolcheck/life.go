package spoolcheck

import (
	"bufio"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// Life runs one life of a crash test's child process, cmd: each line it
// prints goes to line, which reports whether it was the child's DONE.
// killAt is asked at the start (with 0) and after each line (with the
// lines so far) when the child is SIGKILLed: the first channel it returns
// that is not nil arms the kill. A life longer than limit fails t. Life
// reports whether the child said DONE; one that did and was not killed
// must have exited cleanly, and the last life (last) must say DONE.
func Life(t testing.TB, cmd *exec.Cmd, last bool, limit time.Duration, killAt func(lines int) <-chan time.Time, line func(string) (done bool)) bool {
	t.Helper()
	out, err := cmd.StdoutPipe()
	require.NoError(t, err)
	cmd.Stderr = os.Stderr
	require.NoError(t, cmd.Start())
	lines := make(chan string)
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			lines <- sc.Text()
		}
	}()
	var kill <-chan time.Time
	armed := false
	arm := func(n int) {
		if !armed && !last {
			if kill = killAt(n); kill != nil {
				armed = true
			}
		}
	}
	arm(0)
	timeout := time.After(limit)
	done, killed, n := false, false, 0
read:
	for {
		select {
		case l, ok := <-lines:
			if !ok {
				break read
			}
			n++
			if line(l) {
				done = true
			}
			arm(n)
		case <-kill:
			require.NoError(t, cmd.Process.Signal(syscall.SIGKILL))
			kill, killed = nil, true
		case <-timeout:
			cmd.Process.Kill()
			for range lines {
			}
			cmd.Wait()
			t.Fatalf("a life did not finish within %v", limit)
		}
	}
	err = cmd.Wait()
	if done && !killed { // else it may have been killed on its way out
		require.NoError(t, err)
	}
	require.False(t, last && !done, "the last life ended without DONE: %v", err)
	return done
}

// Private asserts that dir is 0700 and every file in it 0600 at most:
// emails are private.
func Private(t testing.TB, dir string) {
	t.Helper()
	st, err := os.Stat(dir)
	require.NoError(t, err)
	assert.Equal(t, fs.FileMode(0o700), st.Mode().Perm(), "directory")
	entries, err := os.ReadDir(dir)
	require.NoError(t, err)
	for _, e := range entries {
		info, err := e.Info()
		require.NoError(t, err)
		assert.Zero(t, info.Mode().Perm()&0o077, "%s: %v", e.Name(), info.Mode())
	}
}

// StaysInItsDirectory writes a spool directory whose journal (named
// journal) names files outside it, by ../ and by an absolute path, opens
// it with open, and asserts that nothing outside was removed and that the
// journal no longer names them. open reports what the spool recovered.
func StaysInItsDirectory(t testing.TB, journal string, open func(dir string) int) {
	t.Helper()
	root := t.TempDir()
	dir := filepath.Join(root, "spool")
	require.NoError(t, os.Mkdir(dir, 0o700))
	victim := filepath.Join(root, "victim.msg")
	require.NoError(t, os.WriteFile(victim, []byte("not the spool's"), 0o600))
	abs := filepath.Join(root, "abs.msg")
	require.NoError(t, os.WriteFile(abs, []byte("not the spool's"), 0o600))
	lines := "B 0\n" +
		"E ../victim.msg\n" +
		`R {"file":"../victim.msg","id":"x","delivered":true}` + "\n" +
		`R {"file":"` + abs + `","id":"y","delivered":true}` + "\n" +
		`R {"file":"..","id":"z","delivered":true}` + "\n"
	require.NoError(t, os.WriteFile(filepath.Join(dir, journal), []byte(lines), 0o600))

	assert.Zero(t, open(dir), "emails recovered from a journal naming files outside")
	assert.FileExists(t, victim, "a journal line naming ../ removed a file outside the directory")
	assert.FileExists(t, abs, "a journal line naming an absolute path removed a file outside the directory")
	j, err := os.ReadFile(filepath.Join(dir, journal))
	require.NoError(t, err)
	assert.NotContains(t, string(j), "..", "names that are not the spool's are dropped")
}
