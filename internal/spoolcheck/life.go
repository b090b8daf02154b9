package spoolcheck

import (
	"bufio"
	"io/fs"
	"os"
	"os/exec"
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
