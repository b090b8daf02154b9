package testkit

import (
	"sync"
	"testing"
	"testing/synctest"

	"github.com/mxrelay/mxrelay"
	"github.com/mxrelay/mxrelay/internal/fakesmtp"
	"github.com/mxrelay/mxrelay/internal/memnet"
	"github.com/mxrelay/mxrelay/relaytest"
)

var (
	bubbles sync.Map // the t of a Bubble → its *memnet.Network
	inMem   sync.Map // *relaytest.Server made in a Bubble → its *memnet.Network
)

// Bubble runs f under testing/synctest, in a bubble of its own whose clock
// advances only when every goroutine in it is blocked: a timeout, a
// backoff or a slow server's pause takes no time, and synctest.Wait
// returns when everything that can happen has happened. The relays
// (NewRelay), upstreams (NewUpstream) and clients (NewClient,
// ClientOptions) that f makes with its t meet on a network in memory
// (internal/memnet): a goroutine blocked on a real socket would keep the
// clock from advancing. Those of f's subtests do not.
func Bubble(t *testing.T, f func(t *testing.T)) {
	synctest.Test(t, func(t *testing.T) {
		bubbles.Store(t, &memnet.Network{})
		t.Cleanup(func() { bubbles.Delete(t) })
		f(t)
	})
}

// network is the network in memory of t's Bubble, or nil.
func network(t testing.TB) *memnet.Network {
	if n, ok := bubbles.Load(t); ok {
		return n.(*memnet.Network)
	}
	return nil
}

// NewUpstream starts a fakesmtp server running script: on loopback TCP,
// or in a Bubble on its network in memory. It is closed when the test
// ends.
func NewUpstream(t testing.TB, script func(c *fakesmtp.Conn)) *fakesmtp.Server {
	t.Helper()
	n := network(t)
	if n == nil {
		return fakesmtp.Listen(t, script)
	}
	ln, err := n.Listen("tcp", "")
	if err != nil {
		t.Fatal(err)
	}
	return fakesmtp.Serve(t, ln, script)
}

// ClientOptions is Fast(o) for a client of s: one that dials s through
// its network in memory if s was made in a Bubble.
func ClientOptions(s *relaytest.Server, o *mxrelay.Options) *mxrelay.Options {
	o = Fast(o)
	if n, ok := inMem.Load(s); ok {
		o.HTTPClient = n.(*memnet.Network).HTTPClient()
	}
	return o
}
