package smtpc

import (
	"net"
	"testing"
	"time"
)

// startClient greets and says EHLO over nc (the client's end of a
// fakesmtp.Pipe).
func startClient(t *testing.T, nc net.Conn, cfg Config) *Client {
	t.Helper()
	c := New(nc, cfg)
	if err := c.Greet(); err != nil {
		t.Fatal(err)
	}
	if err := c.Hello("client.example"); err != nil {
		t.Fatal(err)
	}
	return c
}

// within fails the test when fn does not return in d.
func within(t *testing.T, d time.Duration, what string, fn func()) bool {
	t.Helper()
	done := make(chan struct{})
	go func() { defer close(done); fn() }()
	select {
	case <-done:
		return true
	case <-time.After(d):
		t.Errorf("%s: no return in %v", what, d)
		return false
	}
}

// runTx sends tx on c and returns where its Result will come.
func runTx(t *testing.T, c *Client, tx *Tx) chan *Result {
	t.Helper()
	out := make(chan *Result, 1)
	tx.Done = func(r *Result) { out <- r }
	if err := c.Send(tx); err != nil {
		t.Logf("Send: %v", err)
	}
	return out
}
