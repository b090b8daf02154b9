package mxrelay

import (
	"fmt"
	"log/slog"
	"sync"
	"time"
)

// EventType names an event.
type EventType int

// The events, named as in the original TypeScript client.
const (
	EventSessionQueued    EventType = iota + 1 // a session is planned: QueueSize
	EventSessionStarted                        // its SMTP dialogue is ready: EmailCount ready emails
	EventSessionCompleted                      // it ended with QUIT: Results, Duration
	EventSessionFailed                         // it could not start or broke: Err, Duration
	EventEmailProcessed                        // an email was delivered (OutcomeDelivered; the original's emailProcessed): Result, Duration (its transaction)
	EventEmailFailed                           // an email ended undelivered (OutcomeFailed, OutcomeUnknown, OutcomeHandedBack): Result, Err
	EventEmailRetrying                         // an email will be retried: Attempt, Duration (delay), Err
	EventConnecting                            // dialing the relay: the state entered CONNECTING (From, To)
	EventConnected                             // the WebSocket is open: the state entered CONNECTED (From, To)
	EventAuthenticated                         // the relay accepted the API key: AUTHENTICATING to AUTHENTICATED (From, To)
	EventDisconnected                          // the WebSocket closed: Err (nil when the client closed it)
	EventReconnecting                          // a set-up failed and will be tried again: Attempt, Duration (delay), Err
	// EventStateChanged announces every change of a worker's connection
	// state (From, To) that the three events above do not: each change
	// is announced by exactly one event. The connection's way back to
	// AUTHENTICATED when a channel closed is an EventStateChanged.
	EventStateChanged
	EventError // an error that concerns no single email: Err
	// Appended, so that the values above keep their numbers.
	EventQueueProcessingStarted   // the client went from no email to one: QueueSize
	EventQueueProcessingCompleted // every accepted email has its result: QueueSize (0)
	EventRateChanged              // throttle feedback changed the sending rate: Rate (0: unthrottled)
)

var eventNames = map[EventType]string{
	EventSessionQueued: "sessionQueued", EventSessionStarted: "sessionStarted",
	EventSessionCompleted: "sessionCompleted", EventSessionFailed: "sessionFailed",
	EventEmailProcessed: "emailProcessed", EventEmailFailed: "emailFailed", EventEmailRetrying: "emailRetrying",
	EventConnecting: "connecting", EventConnected: "connected", EventAuthenticated: "authenticated",
	EventDisconnected: "disconnected", EventReconnecting: "reconnecting",
	EventStateChanged: "stateChanged", EventError: "error",
	EventQueueProcessingStarted: "queueProcessingStarted", EventQueueProcessingCompleted: "queueProcessingCompleted",
	EventRateChanged: "rateChanged",
}

func (t EventType) String() string {
	if s, ok := eventNames[t]; ok {
		return s
	}
	return fmt.Sprintf("EventType(%d)", int(t))
}

// announcement is the event that announces a connection's change from
// state from to state to: each change has one.
func announcement(from, to ConnState) EventType {
	switch {
	case to == StateConnecting:
		return EventConnecting
	case to == StateConnected:
		return EventConnected
	case to == StateAuthenticated && from == StateAuthenticating:
		return EventAuthenticated
	}
	return EventStateChanged
}

// Event is something that happened in the client. Which fields are set
// depends on Type (see the constants).
type Event struct {
	Type EventType
	Time time.Time
	// Worker is the session worker the event comes from, from 1 to
	// MaxConcurrentSessions (as in Client.Workers): set on connection
	// events (connecting to stateChanged, error) and session events
	// (sessionQueued to sessionFailed); zero on the events of emails, of
	// the queue and of the rate.
	Worker     int
	SessionID  string
	EmailID    string
	QueueSize  int
	EmailCount int
	Result     *Result
	Results    []*Result
	Duration   time.Duration
	Attempt    int
	From, To   ConnState
	Err        error
	// Rate is EventRateChanged's new rate in emails per second; 0 when
	// the client is no longer throttled.
	Rate float64
}

// dispatcher hands events to the user's callback on a goroutine of its own,
// through a bounded buffer: a slow callback loses events (counted), it never
// slows the sender.
type dispatcher struct {
	fn  func(Event)
	max int
	log *slog.Logger

	mu      sync.Mutex
	buf     []Event
	wake    chan struct{} // buffered 1
	closed  bool
	dropped int64
	done    chan struct{}
	once    sync.Once
}

func newDispatcher(fn func(Event), max int, log *slog.Logger) *dispatcher {
	d := &dispatcher{fn: fn, max: max, log: log, wake: make(chan struct{}, 1), done: make(chan struct{})}
	if fn == nil {
		close(d.done)
		return d
	}
	go d.run()
	return d
}

// emit queues e; it never blocks.
func (d *dispatcher) emit(e Event) {
	if d.fn == nil {
		return
	}
	if e.Time.IsZero() {
		e.Time = time.Now()
	}
	d.mu.Lock()
	switch {
	case d.closed:
	case len(d.buf) >= d.max:
		d.dropped++
	default:
		d.buf = append(d.buf, e)
	}
	d.mu.Unlock()
	select {
	case d.wake <- struct{}{}:
	default:
	}
}

func (d *dispatcher) droppedCount() int64 {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.dropped
}

func (d *dispatcher) run() {
	defer close(d.done)
	for {
		d.mu.Lock()
		batch := d.buf
		d.buf = nil
		closed := d.closed
		d.mu.Unlock()
		for _, e := range batch {
			d.call(e)
		}
		if len(batch) == 0 {
			if closed {
				return
			}
			<-d.wake
		}
	}
}

func (d *dispatcher) call(e Event) {
	defer func() {
		if r := recover(); r != nil {
			d.log.Error("mxrelay: OnEvent panicked", "event", e.Type.String(), "panic", r)
		}
	}()
	d.fn(e)
}

// close delivers what is buffered, then stops the goroutine and waits for
// it. Every caller waits.
func (d *dispatcher) close() {
	d.once.Do(func() {
		d.mu.Lock()
		d.closed = true
		d.mu.Unlock()
		select {
		case d.wake <- struct{}{}:
		default:
		}
	})
	<-d.done
}
