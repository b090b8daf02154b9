// Package bench measures how fast emails go through the client, the relay
// and plain SMTP, for cmd/mxbench and the go test benchmarks: one
// implementation serves both. An Env is the set-up of one measurement: a
// discarding SMTP server (internal/smtpsink), relaytest in front of it with
// an injected round-trip time (and, as its Setup says, a sending limit or
// faults), and a latency proxy giving a plain SMTP connection the same
// round-trip time, in this process or in a child process (StartEnv) so
// that the client's own CPU time and allocations can be told apart. The
// Run functions send a batch of emails through one path (our client,
// go-smtp lock-step, or the floor: a minimal pipelined BDAT client), or
// Sends one at a time (RunWarm), check that every one arrived (or was
// refused as the run expects: RunBatch), and time them and meter them.
// The PostgreSQL table runs its clients in sender processes of their own
// on one queue (pg.go). Nothing here asserts anything about speed.
package bench

import (
	"context"
	"fmt"
	"net"
	"net/url"
	"os"
	"time"

	"github.com/mxrelay/mxrelay"
	"github.com/mxrelay/mxrelay/internal/latencyproxy"
	"github.com/mxrelay/mxrelay/internal/relayconn"
	"github.com/mxrelay/mxrelay/internal/smtpsink"
	"github.com/mxrelay/mxrelay/relaytest"
)

// Upstream is the kind of SMTP server behind the relay.
type Upstream int

const (
	// Chunking offers PIPELINING and CHUNKING (BDAT).
	Chunking Upstream = iota
	// PipeliningOnly offers PIPELINING but not CHUNKING, as Postfix's
	// smtp-sink and many servers do.
	PipeliningOnly
)

func (u Upstream) String() string {
	if u == PipeliningOnly {
		return "PIPELINING without CHUNKING"
	}
	return "PIPELINING and CHUNKING"
}

// Counter tells what a discarding SMTP server accepted: *smtpsink.Server in
// this process, or the sink of a child process (StartEnv), asked over its
// pipe. A count below zero means the sink could not be asked; no run passes
// its check then.
type Counter interface {
	Stats() smtpsink.Stats
}

// Setup is what the servers of an Env are. The zero Setup is an upstream
// with PIPELINING and CHUNKING, no latency, no limit and no fault.
type Setup struct {
	RTT      time.Duration
	Upstream Upstream
	// Throttle, if set, is the relay's Options.Throttle: an upstream that
	// accepts Throttle.Limit transactions per Throttle.Per and answers
	// MAIL past it with Throttle.Reply (451 4.7.0 by default).
	Throttle *relaytest.Throttle
	// Faults are injected into the relay, in order, before the Env is
	// handed over.
	Faults []relaytest.Fault
}

// Env is a sink, a relay in front of it and a latency proxy to it, all on
// loopback, for one round-trip time: in this process (NewEnv), or in a
// child process (StartEnv), so that this process's CPU time and
// allocations are the client's alone.
type Env struct {
	RTT time.Duration
	// Sink counts the messages the sink accepted.
	Sink Counter
	// RelayURL and APIKey reach the relay, which forwards to the sink, each
	// frame delayed by RTT/2 in each direction, and grants binary frames
	// when asked.
	RelayURL, APIKey string
	// Relay is the relay of an Env in this process (NewEnv), for tests
	// that inject faults; nil when the servers are in a child.
	Relay *relaytest.Server
	// DirectAddr is where a plain SMTP client connects to reach the sink
	// with the same RTT: the latency proxy, or the sink itself when RTT is
	// 0.
	DirectAddr string
	// Addrs are all the addresses the servers listen on, until Close.
	Addrs []string

	stop       func() error                    // stops the servers and waits for them
	relayStats func() (relaytest.Stats, error) // the relay's counts
	spools     []string                        // SpoolDirs of the clients, removed by Close
}

// NewEnv starts an Env in this process with the servers of Setup{RTT:
// rtt, Upstream: up}. The caller must Close it.
func NewEnv(rtt time.Duration, up Upstream) (*Env, error) {
	return NewEnvFor(Setup{RTT: rtt, Upstream: up})
}

// NewEnvFor starts an Env in this process with the servers s describes;
// a malformed Throttle or Fault is an error. The caller must Close it.
func NewEnvFor(s Setup) (*Env, error) {
	rtt := s.RTT
	sink, err := smtpsink.New(&smtpsink.Options{DisableChunking: s.Upstream == PipeliningOnly})
	if err != nil {
		return nil, err
	}
	var proxy *latencyproxy.Proxy
	direct := sink.Addr
	if rtt > 0 {
		proxy, err = latencyproxy.New(sink.Addr, rtt/2)
		if err != nil {
			sink.Close()
			return nil, err
		}
		direct = proxy.Addr
	}
	relay, err := newRelay(&relaytest.Options{
		UpstreamAddr: sink.Addr,
		Latency:      relaytest.Latency{ToServer: rtt / 2, ToClient: rtt / 2},
		Throttle:     s.Throttle,
	}, s.Faults)
	if err != nil {
		if proxy != nil {
			proxy.Close()
		}
		sink.Close()
		return nil, err
	}
	u, err := url.Parse(relay.URL)
	if err != nil {
		panic("bench: relaytest's URL does not parse: " + err.Error())
	}
	e := &Env{
		RTT: rtt, Sink: sink, RelayURL: relay.URL, APIKey: relay.APIKey, Relay: relay,
		DirectAddr: direct, Addrs: []string{u.Host, sink.Addr},
		relayStats: func() (relaytest.Stats, error) { return relay.Stats(), nil },
	}
	if proxy != nil {
		e.Addrs = append(e.Addrs, proxy.Addr)
	}
	e.stop = func() error {
		relay.Close()
		if proxy != nil {
			proxy.Close()
		}
		return sink.Close()
	}
	return e, nil
}

// newRelay starts relaytest with o and injects faults; relaytest's panic
// on a malformed Throttle or Fault is returned as an error, with nothing
// left running.
func newRelay(o *relaytest.Options, faults []relaytest.Fault) (relay *relaytest.Server, err error) {
	defer func() {
		if p := recover(); p != nil {
			if relay != nil {
				relay.Close()
			}
			relay, err = nil, fmt.Errorf("bench: %v", p)
		}
	}()
	relay = relaytest.NewServer(o)
	for _, f := range faults {
		relay.Inject(f)
	}
	return relay, nil
}

// RelayStats returns the relay's counts (channels opened, MAIL commands
// throttled...), or an error when the child serving the relay does not
// answer.
func (e *Env) RelayStats() (relaytest.Stats, error) { return e.relayStats() }

// Close stops the relay, the proxy and the sink (the child process of an
// Env from StartEnv: killed if it does not end in time) and waits for
// them.
func (e *Env) Close() { _ = e.close() }

// close is Close, and says why the servers did not stop cleanly.
func (e *Env) close() error {
	for _, d := range e.spools {
		os.RemoveAll(d)
	}
	return e.stop()
}

// Client is how our client is configured for a run: as a user who wants
// throughput would, everything else left at its default.
type Client struct {
	// JSON makes the client use JSON text frames (DisableBinary).
	JSON bool
	// Sessions is Options.MaxConcurrentSessions; zero: the default (1).
	Sessions int
	// Window is Options.PipelineWindow; zero: the default.
	Window int
	// FixedWindow is Options.FixedWindow: Window transactions in flight
	// whatever the link needs, the window before it adapted.
	FixedWindow bool
	// PerSession is Options.MaxEmailsPerSession; zero: 1000.
	PerSession int
	// Linger is Options.Linger; zero: the default (10s), negative: none.
	Linger time.Duration
	// Spool gives the client a SpoolDir (a new temporary directory), so
	// that each Enqueue writes and fsyncs the email.
	Spool bool
}

// Options returns the client options for a queue of up to queue emails.
func (c Client) Options(queue int) mxrelay.Options {
	per := c.PerSession
	if per == 0 {
		per = 1000
	}
	return mxrelay.Options{
		DisableBinary:         c.JSON,
		MaxQueueSize:          queue,
		MaxEmailsPerSession:   per,
		MaxConcurrentSessions: c.Sessions,
		PipelineWindow:        c.Window,
		FixedWindow:           c.FixedWindow,
		Linger:                c.Linger,
	}
}

// NewClient returns our client pointed at the Env's relay, for up to queue
// emails queued at once. The caller must Close it.
func (e *Env) NewClient(c Client, queue int) (*mxrelay.Client, error) {
	o := c.Options(queue)
	if c.Spool {
		d, err := os.MkdirTemp("", "mxbench-spool-*")
		if err != nil {
			return nil, err
		}
		e.spools = append(e.spools, d)
		o.SpoolDir = d
	}
	return e.NewClientWith(o)
}

// NewClientWith returns our client with options o pointed at the Env's
// relay. The caller must Close it.
func (e *Env) NewClientWith(o mxrelay.Options) (*mxrelay.Client, error) {
	return mxrelay.New(e.RelayURL, e.APIKey, &o)
}

// closeClient closes c, handing back within 10s what a failed run left
// in its queue.
func closeClient(c *mxrelay.Client) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_ = c.Close(ctx)
}

// DialRelay opens an authenticated WebSocket to the Env's relay, whose
// channels go-smtp's Client can use as connections. binary asks for binary
// frames. The caller must Close it.
func (e *Env) DialRelay(ctx context.Context, binary bool) (*relayconn.Conn, error) {
	c, err := relayconn.Dial(ctx, relayconn.Config{
		URL:            e.RelayURL,
		APIKey:         e.APIKey,
		Binary:         binary,
		AuthTimeout:    10 * time.Second,
		ChannelTimeout: 10 * time.Second,
	})
	if err != nil {
		return nil, fmt.Errorf("bench: dialing the relay: %w", err)
	}
	if err := c.Authenticate(ctx); err != nil {
		c.Close(1000, "")
		return nil, fmt.Errorf("bench: authenticating: %w", err)
	}
	return c, nil
}

// Dialer opens the connection of one SMTP session.
type Dialer func(ctx context.Context) (net.Conn, error)

// RelayChannels opens SMTP channels on an authenticated WebSocket.
func RelayChannels(c *relayconn.Conn) Dialer {
	return func(ctx context.Context) (net.Conn, error) {
		ch, err := c.OpenChannel(ctx)
		if err != nil {
			return nil, fmt.Errorf("bench: opening a channel: %w", err)
		}
		return ch, nil
	}
}

// Direct dials the Env's sink over TCP, through the latency proxy when the
// RTT is not zero.
func (e *Env) Direct() Dialer {
	return func(ctx context.Context) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "tcp", e.DirectAddr)
	}
}
