package mxrelay

import (
	"fmt"
	"time"
)

// ConnState is the state of the relay connection, as in the original
// client's connection diagram.
type ConnState int32

// The connection states.
const (
	StateDisconnected   ConnState = iota // no WebSocket
	StateConnecting                      // dialing
	StateConnected                       // WebSocket open, not authenticated
	StateAuthenticating                  // AUTHENTICATE sent
	StateAuthenticated                   // ready to open a channel
	StateChannelOpening                  // SMTP_CHANNEL_OPEN sent
	StateChannelReady                    // an SMTP session runs
	StateChannelClosed                   // the session's channel closed
	StateReconnecting                    // waiting to try again after a failure
	StateFailed                          // gave up: key refused, or reconnect attempts used up
)

var connStateNames = [...]string{
	"DISCONNECTED", "CONNECTING", "CONNECTED", "AUTHENTICATING", "AUTHENTICATED",
	"CHANNEL_OPENING", "CHANNEL_READY", "CHANNEL_CLOSED", "RECONNECTING", "FAILED",
}

func (s ConnState) String() string { return enumName(connStateNames[:], s, "ConnState") }

// enumName is names[v], or "Type(v)" for a value without a name.
func enumName[T ~int | ~int32](names []string, v T, typ string) string {
	if v >= 0 && int64(v) < int64(len(names)) && names[v] != "" {
		return names[v]
	}
	return fmt.Sprintf("%s(%d)", typ, int64(v))
}

// connRank orders the connection states from the least advanced to the
// most, for Client.ConnState's aggregate.
var connRank = [...]int{
	StateFailed: 0, StateDisconnected: 1, StateReconnecting: 2, StateChannelClosed: 3,
	StateConnecting: 4, StateConnected: 5, StateAuthenticating: 6, StateAuthenticated: 7,
	StateChannelOpening: 8, StateChannelReady: 9,
}

// mostAdvanced is the most advanced of states (see Client.ConnState);
// FAILED for none.
func mostAdvanced(states []ConnState) ConnState {
	best := StateFailed
	for _, s := range states {
		if connRank[s] > connRank[best] {
			best = s
		}
	}
	return best
}

// SessionState is the state of a session worker.
type SessionState int32

// The session states.
const (
	SessionIdle       SessionState = iota // no session runs
	SessionProcessing                     // a session runs
	SessionFailed                         // a session failed and will be retried
)

// busiest is the aggregate of states (see Client.SessionState): PROCESSING
// if any is, else FAILED if any is, else IDLE.
func busiest(states []SessionState) SessionState {
	out := SessionIdle
	for _, s := range states {
		switch {
		case s == SessionProcessing:
			return SessionProcessing
		case s == SessionFailed:
			out = SessionFailed
		}
	}
	return out
}

// WorkerState is one session worker's states (Client.Workers).
type WorkerState struct {
	Worker       int          // its number, from 1 to MaxConcurrentSessions, as in Event.Worker
	ConnState    ConnState    // the state of its relay connection
	SessionState SessionState // the state of its session
}

func (s SessionState) String() string {
	return enumName([]string{SessionIdle: "IDLE", SessionProcessing: "PROCESSING", SessionFailed: "FAILED"}, s, "SessionState")
}

// Stats are the client's counters. Sessions are SMTP sessions; emails are
// counted once, by their final Result's Outcome: EmailsDelivered +
// EmailsFailed is how many have ended, and EmailsUnknown and
// EmailsHandedBack are the parts of EmailsFailed with those outcomes.
type Stats struct {
	SessionsQueued    int64 // sessions planned
	SessionsCompleted int64 // sessions that ended with QUIT
	SessionsFailed    int64 // sessions that could not start or broke
	EmailsQueued      int64 // emails accepted by Send and Enqueue
	EmailsDelivered   int64 // emails delivered (OutcomeDelivered)
	// EmailsFailed counts the emails not delivered: OutcomeFailed,
	// OutcomeUnknown and OutcomeHandedBack, as EventEmailFailed reports
	// them.
	EmailsFailed     int64
	RetriesScheduled int64 // retries scheduled
	// EmailsUnknown counts the emails that ended with OutcomeUnknown: the
	// final attempt's end of data went out and no trusted reply decided
	// it. EmailsHandedBack counts those that ended with OutcomeHandedBack
	// (Close gave them back unsent, or they stay in the spool for the next
	// Client). EmailsMaybeDelivered counts the emails whose Result says
	// MaybeDelivered, whatever their outcome: every unknown one, and those
	// delivered, failed or handed back after an earlier attempt's unknown
	// end of data (Options.RetryUnknown), which the upstream may hold twice.
	EmailsUnknown        int64
	EmailsHandedBack     int64
	EmailsMaybeDelivered int64
	// EmailsReleased counts, with Options.Store, the emails the Client let
	// go of without a result of its own, for whichever process claims them
	// next: accepted and not claimed by this Client (its queue was full,
	// or a claim in progress when its Enqueue committed missed it), a
	// retry waiting for its time, one that another process took over once
	// its lease ran out. One this Client claims again counts in
	// EmailsQueued again. With Store, EmailsQueued = EmailsDelivered +
	// EmailsFailed + EmailsReleased once the Client is closed; without it,
	// EmailsReleased is 0.
	EmailsReleased int64
	// AverageSessionTime is the mean duration of processed sessions;
	// AverageEmailTime the mean duration of the SMTP transactions of
	// delivered emails (MAIL to the reply to the end of data).
	AverageSessionTime time.Duration
	AverageEmailTime   time.Duration
	QueueSize          int // emails waiting, including those waiting for a retry
	InFlight           int // emails in a session now
	// QueuedByPriority is QueueSize by priority, each of the four levels
	// present; Delayed is how many of them wait for a retry's delay.
	// OldestQueued is the age of the oldest email waiting (since it was
	// accepted), 0 when none waits.
	QueuedByPriority map[Priority]int
	Delayed          int
	OldestQueued     time.Duration
	EventsDropped    int64 // events lost because OnEvent was too slow
	// SendRate is the rate, in emails per second, that throttle feedback
	// holds the client to now (see Options.Throttle), 0 when it does not;
	// ThrottleCuts counts the times an upstream's "slow down" lowered it.
	SendRate     float64
	ThrottleCuts int64
	// Window is the pipeline window of the sessions now (the largest; the
	// last sessions' between them): how many transactions may be in
	// flight, PipelineWindow with FixedWindow, else what the link needs.
	// 0 before the first email is taken.
	Window int
}
