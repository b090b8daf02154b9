// Command observability shows the client's statistics and events exposed
// the standard library's way (expvar, at /debug/vars) and turned into
// spans, one per SMTP session and one per email, as an OpenTelemetry
// tracer would take them, without the root package depending on
// OpenTelemetry. It starts relaytest, sends a few emails, prints the spans
// and what /debug/vars shows, and exits.
//
//	go run ./examples/observability
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
	"sync"
	"sync/atomic"
	"time"

	"github.com/mxrelay/mxrelay"
	"github.com/mxrelay/mxrelay/relaytest"
)

// span is what a tracer needs: a name, a start, an end, attributes and an
// error. With OpenTelemetry: tracer.Start(ctx, name,
// trace.WithTimestamp(start)), span.SetAttributes, span.RecordError,
// span.End(trace.WithTimestamp(end)).
type span struct {
	name       string
	start, end time.Time
	attrs      map[string]any
	err        error
}

// spans turns events into spans: OnEvent gives each event's time, the
// session and email IDs, durations and results, which is all a span needs.
type spans struct {
	mu       sync.Mutex
	sessions map[string]time.Time // open session spans: their start
	done     []span
}

func (s *spans) on(e mxrelay.Event) {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch e.Type {
	case mxrelay.EventSessionStarted:
		s.sessions[e.SessionID] = e.Time
	case mxrelay.EventSessionCompleted, mxrelay.EventSessionFailed:
		start, ok := s.sessions[e.SessionID]
		if !ok {
			start = e.Time.Add(-e.Duration) // a session that failed to start
		}
		delete(s.sessions, e.SessionID)
		s.done = append(s.done, span{name: "smtp.session", start: start, end: e.Time, err: e.Err,
			attrs: map[string]any{"session.id": e.SessionID, "emails": len(e.Results)}})
	case mxrelay.EventEmailProcessed, mxrelay.EventEmailFailed:
		r := e.Result
		s.done = append(s.done, span{name: "email", start: r.Queued, end: r.Queued.Add(r.Duration), err: r.Err,
			attrs: map[string]any{"email.id": r.EmailID, "session.id": r.SessionID, "attempts": r.Attempts,
				"accepted": len(r.Accepted), "rejected": len(r.Rejected), "reply": r.Reply.Code}})
	}
}

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
}

func run(out io.Writer) error {
	relay := relaytest.NewServer(nil)
	defer relay.Close()

	sp := &spans{sessions: map[string]time.Time{}}
	c, err := mxrelay.New(relay.URL, relay.APIKey, &mxrelay.Options{
		OnEvent: func(e mxrelay.Event) {
			events.Add(e.Type.String(), 1)
			sp.on(e)
		},
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

	sp.mu.Lock()
	for _, s := range sp.done {
		fmt.Fprintf(out, "span %-12s %8v %v err=%v\n", s.name, s.end.Sub(s.start).Round(time.Microsecond), s.attrs, s.err)
	}
	sp.mu.Unlock()

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
		vars.Mxrelay.EmailsProcessed, vars.Mxrelay.SessionsProcessed, vars.Events)
	return nil
}
