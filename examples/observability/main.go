// Command observability shows the client's statistics and events two ways:
// the standard library's (expvar, at /debug/vars) and OpenTelemetry's,
// through the module github.com/mxrelay/mxrelay/otel (metrics and a span
// per session and per email, printed from the SDK's in-memory readers). It
// starts relaytest, sends a few emails each way, prints what it sees, and
// exits. It is a module of its own, so that mxrelay itself does not depend
// on OpenTelemetry:
//
//	cd examples/observability && go run .
package main

import (
	"context"
	"encoding/json"
	"expvar"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"strings"
	"sync/atomic"

	"github.com/mxrelay/mxrelay"
	"github.com/mxrelay/mxrelay/relaytest"
)

// Counters by event type, and the client's Stats, in expvar (published
// once per process, as expvar wants).
var (
	events = expvar.NewMap("mxrelay_events")
	client atomic.Pointer[mxrelay.Client]
)

func init() {
	expvar.Publish("mxrelay", expvar.Func(func() any {
		if c := client.Load(); c != nil {
			return c.Stats()
		}
		return nil
	}))
}

func main() {
	if err := run(os.Stdout); err != nil {
		log.Fatal(err)
	}
	if err := runOTel(os.Stdout); err != nil {
		log.Fatal(err)
	}
}

func run(out io.Writer) error {
	relay := relaytest.NewServer(nil)
	defer relay.Close()

	c, err := mxrelay.New(relay.URL, relay.APIKey, &mxrelay.Options{
		OnEvent: func(e mxrelay.Event) { events.Add(e.Type.String(), 1) },
	})
	if err != nil {
		return err
	}
	client.Store(c)

	ctx := context.Background()
	for i := range 3 {
		if _, err := c.Send(ctx, mxrelay.Email{From: "app@example.com", To: []string{fmt.Sprintf("user%d@example.com", i)},
			Body: strings.NewReader(fmt.Sprintf("Subject: %d\r\n\r\nHello.\r\n", i))}); err != nil {
			return err
		}
	}
	if err := c.Close(ctx); err != nil {
		return err
	}

	// What a scraper sees at /debug/vars (expvar's handler, on loopback).
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: expvar.Handler()}
	go srv.Serve(ln)
	defer srv.Close()
	resp, err := http.Get("http://" + ln.Addr().String() + "/debug/vars")
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	var vars struct {
		Mxrelay mxrelay.Stats  `json:"mxrelay"`
		Events  map[string]int `json:"mxrelay_events"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&vars); err != nil {
		return err
	}
	fmt.Fprintf(out, "/debug/vars: %d emails delivered, %d sessions; events %v\n",
		vars.Mxrelay.EmailsDelivered, vars.Mxrelay.SessionsCompleted, vars.Events)
	return nil
}
