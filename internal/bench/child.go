package bench

import (
	"bufio"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"sync"
	"time"

	"github.com/mxrelay/mxrelay/internal/smtpsink"
	"github.com/mxrelay/mxrelay/relaytest"
)

// ChildArg, as a program's first argument, asks it to serve an Env for its
// parent process instead of doing its own work: see ServeIfChild.
const ChildArg = "-mxbench-serve-env"

// How long the parent waits for the child: to say where it listens, to
// answer a question, and to end after its standard input closed (then it
// is killed).
const (
	childStartTimeout = 30 * time.Second
	childReplyTimeout = 10 * time.Second
	childStopTimeout  = 10 * time.Second
)

// The child's pipes carry one JSON object a line. Its first line on
// standard output is a childHello; then, for each statsRequest line the
// parent writes on its standard input, it writes the sink's
// smtpsink.Stats, and for each relayRequest line the relay's
// relaytest.Stats. When its standard input ends, it stops its servers and
// exits.
type childHello struct {
	RelayURL, APIKey, DirectAddr string
	Addrs                        []string
}

const (
	statsRequest = "stats\n"
	relayRequest = "relay\n"
)

// ServeIfChild returns at once unless the program was started by StartEnv
// (its first argument is ChildArg); then it serves an Env for the parent
// until the parent closes the pipe, or ends, and exits the program. As a
// sender of the PostgreSQL table (its first argument is SenderArg), it
// sends for the parent until the pipe closes, and exits. A
// program whose path is given to StartEnv (Run's default: the running
// program) must call it first in main, and a test binary first in
// TestMain.
func ServeIfChild() {
	if len(os.Args) >= 2 && os.Args[1] == SenderArg {
		signal.Ignore(os.Interrupt) // as below
		os.Exit(serveSender(os.Args[2:], os.Stdin, os.Stdout, os.Stderr))
	}
	if len(os.Args) < 2 || os.Args[1] != ChildArg {
		return
	}
	// ^C at a terminal reaches the whole process group: the parent stops
	// its children itself, after the row in progress.
	signal.Ignore(os.Interrupt)
	os.Exit(serveChild(os.Args[2:], os.Stdin, os.Stdout, os.Stderr))
}

// serveChild is the child's whole work: it starts the Env that args ask
// for (setupArgs), says where it listens on out, answers each
// request read from in, and closes the Env when in ends. It returns the
// exit status: 0 after a clean stop, 1 when the Env failed, 2 for bad
// arguments or an unknown request.
func serveChild(args []string, in io.Reader, out, errOut io.Writer) int {
	fs := flag.NewFlagSet(ChildArg, flag.ContinueOnError)
	fs.SetOutput(errOut)
	var s Setup
	fs.DurationVar(&s.RTT, "rtt", 0, "injected round-trip time")
	pipeliningOnly := fs.Bool("pipelining-only", false, "an upstream without CHUNKING")
	fs.Func("throttle", "the relay's Throttle, in JSON", func(v string) error {
		s.Throttle = new(relaytest.Throttle)
		return json.Unmarshal([]byte(v), s.Throttle)
	})
	fs.Func("fault", "a fault to inject into the relay, in JSON (repeatable)", func(v string) error {
		var f relaytest.Fault
		err := json.Unmarshal([]byte(v), &f)
		s.Faults = append(s.Faults, f)
		return err
	})
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *pipeliningOnly {
		s.Upstream = PipeliningOnly
	}
	e, err := NewEnvFor(s)
	if err != nil {
		fmt.Fprintln(errOut, "mxbench servers:", err)
		return 1
	}
	code := 0
	defer func() {
		if err := e.close(); err != nil && code == 0 {
			fmt.Fprintln(errOut, "mxbench servers: closing:", err)
			code = 1
		}
	}()
	enc := json.NewEncoder(out)
	if err := enc.Encode(childHello{RelayURL: e.RelayURL, APIKey: e.APIKey, DirectAddr: e.DirectAddr, Addrs: e.Addrs}); err != nil {
		return 1
	}
	r := bufio.NewReader(in)
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			return code // the parent closed the pipe, or died
		}
		var answer any
		switch line {
		case statsRequest:
			answer = e.Sink.Stats()
		case relayRequest:
			answer = e.Relay.Stats()
		default:
			fmt.Fprintf(errOut, "mxbench servers: unknown request %q\n", line)
			code = 2
			return code
		}
		if err := enc.Encode(answer); err != nil {
			return code
		}
	}
}

// StartEnv starts an Env whose servers run in a child process, for
// Setup{RTT: rtt, Upstream: up}: see StartEnvFor.
func StartEnv(exe string, rtt time.Duration, up Upstream) (*Env, error) {
	return StartEnvFor(exe, Setup{RTT: rtt, Upstream: up})
}

// StartEnvFor starts an Env with the servers s describes in a child
// process: exe run with ChildArg, which must call ServeIfChild. The child
// serves until Close, or until this process ends (its standard input then
// closes); its standard error is this process's. The Env's Relay is nil;
// its Sink and RelayStats ask the child. The caller must Close it.
func StartEnvFor(exe string, s Setup) (*Env, error) {
	args, err := setupArgs(s)
	if err != nil {
		return nil, err
	}
	c, err := startChild("the servers' process", exe, append([]string{ChildArg}, args...))
	if err != nil {
		return nil, fmt.Errorf("bench: starting the servers' process: %w", err)
	}
	var h childHello
	if err := c.read(&h, childStartTimeout); err != nil {
		return nil, errors.Join(
			fmt.Errorf("bench: the servers' process (%s %s) did not say where it listens (does it call bench.ServeIfChild?): %w", exe, ChildArg, err),
			c.stop())
	}
	return &Env{
		RTT: s.RTT, Sink: c, RelayURL: h.RelayURL, APIKey: h.APIKey,
		DirectAddr: h.DirectAddr, Addrs: h.Addrs, stop: c.stop, relayStats: c.relayStats,
	}, nil
}

// setupArgs are the child's arguments (after ChildArg) for s.
func setupArgs(s Setup) ([]string, error) {
	args := []string{"-rtt", s.RTT.String()}
	if s.Upstream == PipeliningOnly {
		args = append(args, "-pipelining-only")
	}
	if s.Throttle != nil {
		b, err := json.Marshal(s.Throttle)
		if err != nil {
			return nil, err
		}
		args = append(args, "-throttle", string(b))
	}
	for _, f := range s.Faults {
		b, err := json.Marshal(f)
		if err != nil {
			return nil, err
		}
		args = append(args, "-fault", string(b))
	}
	return args, nil
}

// startChild starts exe with args, its standard input and output pipes
// to this process (one JSON object a line), its standard error this
// process's; name says what it is, in errors.
func startChild(name, exe string, args []string) (*child, error) {
	cmd := exec.Command(exe, args...)
	cmd.Stderr = os.Stderr
	in, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	// A pipe of our own, so that reads from it can have a deadline.
	outR, outW, err := os.Pipe()
	if err != nil {
		in.Close()
		return nil, err
	}
	cmd.Stdout = outW
	err = cmd.Start()
	outW.Close()
	if err != nil {
		in.Close()
		outR.Close()
		return nil, err
	}
	c := &child{name: name, cmd: cmd, in: in, out: outR, r: bufio.NewReader(outR), done: make(chan struct{})}
	go func() {
		c.waitErr = cmd.Wait()
		close(c.done)
	}()
	return c, nil
}

// child is a child process seen from its parent: the one that serves an
// Env, or a sender of the PostgreSQL table (sender). The first is the
// Env's Sink: Stats asks the child. Safe for concurrent use.
type child struct {
	name    string // what it is, in errors
	cmd     *exec.Cmd
	in      io.WriteCloser
	out     *os.File
	r       *bufio.Reader
	done    chan struct{} // closed when the process has ended and been reaped
	waitErr error         // how it ended, set before done closes

	mu       sync.Mutex // one request at a time
	stopOnce sync.Once
	stopErr  error
}

// Stats asks the child for its sink's counts: -1 each when it does not
// answer.
func (c *child) Stats() smtpsink.Stats {
	var st smtpsink.Stats
	if c.ask(statsRequest, &st) != nil {
		return smtpsink.Stats{Sessions: -1, Messages: -1, Bytes: -1}
	}
	return st
}

// relayStats asks the child for its relay's counts.
func (c *child) relayStats() (relaytest.Stats, error) {
	var st relaytest.Stats
	if err := c.ask(relayRequest, &st); err != nil {
		return relaytest.Stats{}, fmt.Errorf("bench: the servers' process did not give the relay's counts: %w", err)
	}
	return st, nil
}

// ask writes the request line req and decodes the answer into v.
func (c *child) ask(req string, v any) error { return c.askWithin(req, v, childReplyTimeout) }

// askWithin is ask, waiting at most d for the answer.
func (c *child) askWithin(req string, v any, d time.Duration) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, err := io.WriteString(c.in, req); err != nil {
		return err
	}
	return c.read(v, d)
}

// read decodes the child's next line into v, waiting at most d.
func (c *child) read(v any, d time.Duration) error {
	if err := c.out.SetReadDeadline(time.Now().Add(d)); err != nil {
		return err
	}
	line, err := c.r.ReadBytes('\n')
	if err != nil {
		return err
	}
	return json.Unmarshal(line, v)
}

// stop closes the child's standard input, which makes it stop its servers
// and exit, waits for that (killing it after childStopTimeout), and reaps
// it. It says how the child ended when not cleanly. Calling it again
// returns the same.
func (c *child) stop() error {
	c.stopOnce.Do(func() {
		c.in.Close()
		t := time.NewTimer(childStopTimeout)
		defer t.Stop()
		select {
		case <-c.done:
		case <-t.C:
			c.cmd.Process.Kill()
			<-c.done
			c.stopErr = fmt.Errorf("bench: %s did not end within %v of its input closing: killed", c.name, childStopTimeout)
		}
		c.out.Close()
		if c.stopErr == nil && c.waitErr != nil {
			c.stopErr = fmt.Errorf("bench: %s: %w", c.name, c.waitErr)
		}
	})
	return c.stopErr
}
