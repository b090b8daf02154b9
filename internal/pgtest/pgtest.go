// Package pgtest runs private PostgreSQL servers for tests: a cluster of
// its own in a temporary directory, on a loopback port, never the one a
// system package may have set up. Where PostgreSQL is not installed the
// tests that need it skip, saying so, except under
// MXRELAY_REQUIRE_INTEROP=1 (as .ci/run sets), where they fail.
//
// Debian's binaries are found under /usr/lib/postgresql/*/bin (the
// newest), else on PATH. initdb and postgres refuse to run as root: when
// the test runs as root they run as the postgres user.
package pgtest

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/mxrelay/mxrelay/internal/interop"
)

// startTimeout bounds a cluster's start (initdb, then postgres until it
// accepts connections).
const startTimeout = 60 * time.Second

// Cluster is one private PostgreSQL server. Its methods are safe for
// concurrent use.
type Cluster struct {
	dir  string // ours: removed by close
	bin  string
	port int
	cred *syscall.Credential // nil: run as ourselves

	// StartTime is how long the first start took, initdb included.
	StartTime time.Duration

	mu   sync.Mutex
	proc *exec.Cmd
	done chan struct{} // closed when proc has exited
	log  *tail         // proc's last lines of log
}

var shared struct {
	once sync.Once
	c    *Cluster
	err  error
}

// Shared returns the cluster shared by the tests of this test binary,
// starting it at the first call. Run the tests through Main, which stops
// it when they end. It skips t (or fails it, see the package doc) when
// PostgreSQL is missing, and fails it when the cluster does not start.
func Shared(t testing.TB) *Cluster {
	t.Helper()
	shared.once.Do(func() { shared.c, shared.err = start() })
	check(t, shared.err)
	return shared.c
}

// New starts a cluster for t alone, stopped and removed when t ends:
// for a test that stops or restarts its server.
func New(t testing.TB) *Cluster {
	t.Helper()
	c, err := start()
	check(t, err)
	t.Cleanup(c.close)
	return c
}

// ErrMissing is wrapped by Start's error when PostgreSQL is not
// installed; Shared and New skip the test then (see the package doc).
var ErrMissing = errors.New("PostgreSQL is not installed (Debian: apt-get install postgresql)")

// Start starts a cluster for a program that is not a test (cmd/mxbench),
// as New does for a test; Close stops it and removes its directory.
func Start() (*Cluster, error) { return start() }

// Close stops the server and removes its directory. Safe to call more
// than once.
func (c *Cluster) Close() { c.close() }

func check(t testing.TB, err error) {
	t.Helper()
	if errors.Is(err, ErrMissing) {
		interop.Skip(t, "pgtest: "+err.Error())
	}
	if err != nil {
		t.Fatal("pgtest: ", err)
	}
}

// Main wraps m so that the shared cluster is stopped once the tests ran:
//
//	func TestMain(m *testing.M) { goleak.VerifyTestMain(pgtest.Main(m)) }
func Main(m *testing.M) interface{ Run() int } { return runner{m} }

type runner struct{ m *testing.M }

func (r runner) Run() int {
	code := r.m.Run()
	if shared.c != nil {
		shared.c.close()
	}
	return code
}

// ConnString is the cluster's connection string: the superuser postgres,
// the database postgres, no password (trust on loopback), no TLS.
func (c *Cluster) ConnString() string {
	return fmt.Sprintf("host=127.0.0.1 port=%d user=postgres dbname=postgres sslmode=disable connect_timeout=10", c.port)
}

// Port is the loopback port the cluster listens on.
func (c *Cluster) Port() int { return c.port }

// Stop shuts the server down (fast shutdown: client connections are
// cut) and waits for it. The data stays: Start runs it again.
func (c *Cluster) Stop() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.proc == nil {
		return nil
	}
	c.proc.Process.Signal(syscall.SIGINT) // fast shutdown
	select {
	case <-c.done:
	case <-time.After(startTimeout):
		c.proc.Process.Kill()
		<-c.done
	}
	c.proc = nil
	return nil
}

// Start runs the server again after Stop, on the same port.
func (c *Cluster) Start() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.proc != nil {
		return nil
	}
	return c.run()
}

// close stops the server and removes its directory.
func (c *Cluster) close() {
	c.Stop()
	os.RemoveAll(c.dir)
}

// start finds the binaries, makes a cluster and starts it.
func start() (*Cluster, error) {
	begin := time.Now()
	bin, err := findBin()
	if err != nil {
		return nil, err
	}
	c := &Cluster{bin: bin}
	if os.Geteuid() == 0 {
		u, err := user.Lookup("postgres")
		if err != nil {
			return nil, fmt.Errorf("running as root, and no postgres user to run the server as: %w", err)
		}
		uid, _ := strconv.ParseUint(u.Uid, 10, 32)
		gid, _ := strconv.ParseUint(u.Gid, 10, 32)
		c.cred = &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
	}
	// Not t.TempDir: its parents are root's alone, and the postgres
	// user must reach the directory.
	c.dir, err = os.MkdirTemp("", "mxrelay-pgtest-*")
	if err != nil {
		return nil, err
	}
	if c.cred != nil {
		if err := os.Chown(c.dir, int(c.cred.Uid), int(c.cred.Gid)); err != nil {
			os.RemoveAll(c.dir)
			return nil, err
		}
	}
	initdb := c.command("initdb", "-D", c.data(), "-U", "postgres", "--auth=trust",
		"--no-sync", "--encoding=UTF8", "--locale=C")
	if out, err := initdb.CombinedOutput(); err != nil {
		os.RemoveAll(c.dir)
		return nil, fmt.Errorf("initdb: %w\n%s", err, out)
	}
	// A free port can be taken between our look and the server's bind:
	// then another one.
	for range 3 {
		if c.port, err = freePort(); err != nil {
			break
		}
		c.mu.Lock()
		err = c.run()
		c.mu.Unlock()
		if err == nil || !strings.Contains(err.Error(), "could not bind") {
			break
		}
	}
	if err != nil {
		os.RemoveAll(c.dir)
		return nil, err
	}
	c.StartTime = time.Since(begin)
	return c, nil
}

func (c *Cluster) data() string { return filepath.Join(c.dir, "data") }

// command is an exec.Cmd of the binary name, run as the postgres user if
// we are root. The server dies with us if we die (the parent death
// signal is set after the change of user).
func (c *Cluster) command(name string, args ...string) *exec.Cmd {
	cmd := exec.Command(filepath.Join(c.bin, name), args...)
	cmd.Dir = c.dir
	cmd.Env = append(os.Environ(), "LC_ALL=C")
	attr := &syscall.SysProcAttr{Credential: c.cred}
	setDeathSignal(attr)
	cmd.SysProcAttr = attr
	return cmd
}

// run starts postgres and waits until it accepts connections. c.mu is
// held.
func (c *Cluster) run() error {
	cmd := c.command("postgres", "-D", c.data(),
		"-c", "listen_addresses=127.0.0.1",
		"-c", "port="+strconv.Itoa(c.port),
		"-c", "unix_socket_directories=",
		// A throwaway cluster: durability against power loss buys nothing.
		"-c", "fsync=off", "-c", "full_page_writes=off",
		"-c", "max_connections=200",
	)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		return err
	}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("postgres: %w", err)
	}
	done := make(chan struct{})
	ready := make(chan struct{})
	log := &tail{}
	go func() {
		// Reads the log to its end, which is the server's exit.
		sc := bufio.NewScanner(stderr)
		signalled := false
		for sc.Scan() {
			log.add(sc.Text())
			if !signalled && strings.Contains(sc.Text(), "ready to accept connections") {
				signalled = true
				close(ready)
			}
		}
		cmd.Wait()
		close(done)
	}()
	timer := time.NewTimer(startTimeout)
	defer timer.Stop()
	select {
	case <-ready:
		c.proc, c.done, c.log = cmd, done, log
		return nil
	case <-done:
		return fmt.Errorf("postgres exited at start:\n%s", log)
	case <-timer.C:
		cmd.Process.Kill()
		<-done
		return fmt.Errorf("postgres did not start in %v:\n%s", startTimeout, log)
	}
}

// findBin returns the directory of initdb and postgres.
func findBin() (string, error) {
	if runtime.GOOS == "windows" {
		return "", fmt.Errorf("%w: not run on Windows", ErrMissing)
	}
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	slices.SortFunc(dirs, func(a, b string) int { return version(b) - version(a) })
	for _, d := range dirs {
		if isFile(filepath.Join(d, "initdb")) && isFile(filepath.Join(d, "postgres")) {
			return d, nil
		}
	}
	if p, err := exec.LookPath("initdb"); err == nil {
		d := filepath.Dir(p)
		if isFile(filepath.Join(d, "postgres")) {
			return d, nil
		}
	}
	return "", ErrMissing
}

// version is the major version in a path /usr/lib/postgresql/N/bin.
func version(dir string) int {
	n, _ := strconv.Atoi(filepath.Base(filepath.Dir(dir)))
	return n
}

func isFile(path string) bool {
	fi, err := os.Stat(path)
	return err == nil && fi.Mode().IsRegular()
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// tail keeps the last lines of a server's log, for error messages.
type tail struct {
	mu    sync.Mutex
	lines []string
}

func (t *tail) add(line string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if len(t.lines) == 40 {
		t.lines = t.lines[1:]
	}
	t.lines = append(t.lines, line)
}

func (t *tail) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return strings.Join(t.lines, "\n")
}
