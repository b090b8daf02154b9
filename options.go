package mxrelay

import (
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/mxrelay/mxrelay/internal/smtpc"
)

// StartTLS says whether the client runs STARTTLS with the upstream SMTP
// server, end to end through the relay, so that the relay sees only
// ciphertext.
type StartTLS int

const (
	// StartTLSNever does not run STARTTLS (the zero value): the relay sees
	// the SMTP dialogue, which it forwards over its own connection.
	StartTLSNever StartTLS = iota
	// StartTLSOpportunistic runs STARTTLS when the server offers it and
	// the channel carries binary frames (TLS records cannot travel in JSON
	// strings); otherwise it goes on in clear and logs a warning.
	StartTLSOpportunistic
	// StartTLSRequired runs STARTTLS and refuses to send anything (AUTH
	// included) when the server does not offer it, the handshake fails, or
	// the relay only agreed to JSON text frames. A server without
	// STARTTLS, a 5xx to it, a certificate that does not verify and a
	// relay without binary frames are permanent: the waiting emails fail
	// at once. A 4xx to STARTTLS or a connection that ends in the
	// handshake (a restart, a timeout) is temporary and retried, as
	// Postfix defers it.
	StartTLSRequired
)

// Options configures a Client. The zero value is useful: every field's
// comment says what its zero value does. New applies defaults to a copy,
// never to the caller's struct.
type Options struct {
	// HTTPClient dials the WebSocket: set it for a proxy or custom TLS to the
	// relay. Nil uses http.DefaultClient (or, with InsecureSkipVerify, a
	// client of its own).
	HTTPClient *http.Client
	// InsecureSkipVerify accepts any TLS certificate from a wss:// relay,
	// so that anyone on the path can read the API key and the mail: for
	// tests against a relay with a self-signed certificate only. It cannot
	// be combined with HTTPClient (set it in that client's transport). The
	// client logs a warning once, as it does when HTTPClient's transport or
	// TLSConfig skips the check. Zero: the relay's certificate must be valid
	// for its host name; a certificate that is not fails the waiting emails
	// at once, without reconnect attempts (it will not fix itself), with an
	// error wrapping *tls.CertificateVerificationError.
	InsecureSkipVerify bool
	// Header is added to the WebSocket upgrade request. Never put the API key
	// here: it travels only in AUTHENTICATE.
	Header http.Header
	// RawTunnel treats the relay URL as a raw WebSocket tunnel to an SMTP
	// server, as Debian's websockify provides in front of any TCP server:
	// the SMTP byte stream travels in binary frames from the first byte,
	// with no mxrelay control messages, one WebSocket per session. The API
	// key, if not empty, is sent as "Authorization: Bearer <key>" on the
	// upgrade request; websockify itself checks none, so put such a gateway
	// behind something that does. Queue, sessions, pipelining and results
	// are the same. Zero: the mxrelay protocol.
	RawTunnel bool
	// APIKeyInClear allows a ws:// relay URL whose host is not a loopback
	// address: the API key and the SMTP dialogue then cross the network
	// as readable text. Zero: New refuses such a URL (use wss://).
	APIKeyInClear bool
	// DisableBinary stops the client from asking for binary data frames.
	// Zero: the client asks for them and falls back to JSON text frames when
	// the relay does not agree.
	DisableBinary bool

	// LocalName is the name sent with EHLO. Zero: "localhost".
	LocalName string
	// Username and Password are SMTP AUTH credentials for the upstream
	// server. Zero: no AUTH. With credentials the client uses PLAIN, or LOGIN
	// when the server does not offer PLAIN, and only on a session that
	// STARTTLS protects end to end (see PasswordInClear): New refuses
	// credentials with StartTLSNever, and a session on which STARTTLS did
	// not run fails before AUTH, permanently.
	Username string
	Password string
	// PasswordInClear lets AUTH run on a session that STARTTLS does not
	// protect: the password then crosses the relay, and the relay's own
	// connection to the upstream, as readable text. For a relay and an
	// upstream on a network you trust (a test relay on loopback). Zero:
	// AUTH only under STARTTLS.
	PasswordInClear bool
	// StartTLS is the STARTTLS policy. Zero: StartTLSNever.
	StartTLS StartTLS
	// TLSConfig configures STARTTLS. With StartTLSOpportunistic or
	// StartTLSRequired it is required and its ServerName must be set: the
	// upstream's certificate is checked against that name, the server the
	// caller means to reach, never against a name the relay or the server
	// announce. Its RootCAs nil means the system roots.
	TLSConfig *tls.Config

	// FixLineEndings makes every bare CR and bare LF in a body a CRLF as it
	// is sent (and counts SIZE accordingly), for bodies written with "\n".
	// Zero: a body with a bare CR or LF is refused by Send and Enqueue with
	// ErrBareLineEnding, since RFC 5321 §2.3.8 forbids sending them and
	// guessing what they meant is how SMTP smuggling gets through.
	FixLineEndings bool
	// AllowLongLines sends body lines longer than 998 octets as they are.
	// Zero: such a body is refused by Send and Enqueue with ErrLineTooLong,
	// since RFC 5322 §2.1.1 and RFC 5321 §4.5.3.1.6 forbid them and servers
	// truncate, split or refuse them. Encode long lines (quoted-printable,
	// base64) rather than set this.
	AllowLongLines bool

	// MaxQueueSize bounds the emails waiting to be sent; Send and Enqueue
	// return ErrQueueFull past it. Zero: 1000.
	MaxQueueSize int
	// RateLimit caps how fast emails are sent, across every session of
	// the Client (an upstream's quota: Amazon SES's per-second rate, a
	// provider's 30 a minute). Zero: no limit. Waiting for it is not a
	// failure and spends no retry; only the email's own timeout runs.
	RateLimit RateLimit
	// Throttle is how the client answers an upstream that asks it to slow
	// down (421, 450, 451, 452 or 454 with 4.7.x or a throttling text; a
	// 5xx with one of Throttle.Texts): the sending rate and the sessions
	// allowed go down, and come back while replies are clean; an email
	// refused that way goes again without spending its retries (8 times
	// at most), after the delay a retry would wait (RetryInterval,
	// doubling), so that its free tries outlast a quota per minute. On by
	// default.
	Throttle Throttle
	// MaxEmailsPerSession bounds the emails sent in one SMTP session. Zero: 10.
	MaxEmailsPerSession int
	// MaxConcurrentSessions is how many SMTP sessions may run at once, each
	// on its own WebSocket and channel, all draining the same priority queue.
	// Zero: 1, the original client's one-session rule.
	MaxConcurrentSessions int
	// PipelineWindow bounds the transactions a session keeps in flight
	// (written, end of data not yet answered) when the upstream offers
	// PIPELINING and CHUNKING. Zero: 256, enough to keep a 50 ms link busy
	// at about 5,000 emails/s (see the README). Within it the window
	// adapts: it starts at 32 and holds what the link needs, twice the
	// highest reply rate measured times the shortest round trip of the
	// last 10 s (the bandwidth-delay product), never under 32, or a
	// larger floor where more in flight goes faster (at a short round
	// trip the CPUs are the limit, not the link): a link's first rounds
	// raise it to hold 5 ms of the reply rate where the bandwidth-delay
	// product holds less, and probing keeps a floor twice or half as
	// large only where the reply rates show it beyond their scatter. So
	// a cut leaves no more emails unknown than sending needed in flight.
	// A session starts where the last one on its relay connection left
	// off.
	// Without CHUNKING
	// a pipelined session has one email's end of data in flight at a time.
	PipelineWindow int
	// FixedWindow keeps PipelineWindow transactions in flight whatever the
	// link needs (the window does not adapt).
	FixedWindow bool
	// DisablePipelining sends lock-step (one command, wait for its reply)
	// even when the upstream offers PIPELINING; BDAT is still used when
	// offered. For servers whose PIPELINING is broken.
	DisablePipelining bool
	// BatchWait holds a new session back until MaxEmailsPerSession emails
	// wait or this long has passed, so that emails arriving close together
	// share a session (the original client's sessionBatchTimeout). CRITICAL
	// emails and emails sent with Immediate skip the wait. Zero: no wait
	// (emails that arrive while a session runs join it anyway).
	BatchWait time.Duration
	// Linger is how long a session whose emails all have their results
	// stays open with an empty queue, waiting for the next email, which
	// then goes out at once: MAIL, RCPT and BDAT in one write, with the
	// greeting, EHLO and AUTH done. Keep it under the upstream's idle
	// timeout (RFC 5321 asks for at least 5 minutes; a busy Postfix may
	// cut it to 10 s): a session the upstream ends while it lingers is
	// not a failure, and the next email opens another. A session lingers
	// only where a NOOP's 250 confirms the replies before it (a server
	// that offers PIPELINING and words it unlike MAIL's and RCPT's, as
	// Postfix, Exim with enhanced codes and Exchange do); against a server
	// that answers every command alike (go-smtp, relaytest) only QUIT
	// confirms, and the session ends with the queue. A session stops
	// lingering CommandTimeout before its SessionTimeout, so that its QUIT
	// is answered in time. Zero: 10s. Negative: none.
	Linger time.Duration
	// IdleTimeout is how long the authenticated WebSocket stays open with an
	// empty queue before the client disconnects. Zero: 30s. Negative:
	// disconnect as soon as the queue is empty.
	IdleTimeout time.Duration

	// Retries is how many times an email is retried after a temporary
	// failure, unless its Email.Retries (or WithRetries) says otherwise.
	// Zero: 3. Negative: none.
	Retries int
	// RetryInterval is the first delay before an email is retried; it doubles
	// with each attempt, with jitter, up to MaxRetryInterval. Zero: 1s.
	RetryInterval time.Duration
	// MaxRetryInterval caps the retry delay. Zero: 1m.
	MaxRetryInterval time.Duration
	// RetryUnknown allows retrying an email whose end of data was sent but
	// never answered. Such an email may then be delivered twice; its Result
	// says so. Zero: it fails with an *UnknownOutcomeError.
	RetryUnknown bool

	// ReconnectInterval is the first delay before the client tries again to
	// set up a session (dial, AUTHENTICATE, channel, SMTP greeting) after a
	// failure; it doubles, with jitter, up to MaxReconnectInterval. Zero: 5s.
	ReconnectInterval time.Duration
	// MaxReconnectInterval caps the reconnect delay. Zero: 1m.
	MaxReconnectInterval time.Duration
	// MaxReconnectAttempts is how many set-up attempts in a row may fail
	// before the waiting emails fail with a *ConnectError. The next Send
	// starts a new cycle. Zero: 10.
	MaxReconnectAttempts int

	// DialTimeout bounds the WebSocket handshake. Zero: 30s.
	DialTimeout time.Duration
	// AuthTimeout bounds the wait for AUTHENTICATE_RESPONSE. Zero: 30s.
	AuthTimeout time.Duration
	// ChannelTimeout bounds the wait for SMTP_CHANNEL_READY. Zero: 10s.
	ChannelTimeout time.Duration
	// CommandTimeout bounds the wait for each SMTP reply, including the
	// greeting and the reply to the end of data. Zero: 1m.
	CommandTimeout time.Duration
	// SessionTimeout bounds how long one SMTP session takes emails, from
	// the channel open; past it the session takes no more and writes no
	// more ends of data. If emails whose end of data is out have no result
	// yet, their replies get CommandTimeout to come and the session ends
	// with QUIT, whose 221 confirms them; otherwise the channel is closed
	// at once. The emails not finished go in the next session. Zero: 5m.
	SessionTimeout time.Duration
	// EmailTimeout is each email's deadline from Enqueue, unless its
	// Email.Timeout (or WithTimeout) says otherwise: past it, an email that
	// has not reached the end of its data is withdrawn and fails with an
	// error matching ErrCanceled and context.DeadlineExceeded. Zero: none
	// (the Send context still applies).
	EmailTimeout time.Duration
	// HeartbeatInterval is how often the client pings the relay. Zero: 30s.
	// Negative: no heartbeat.
	HeartbeatInterval time.Duration
	// HeartbeatTimeout is how long a ping may go unanswered before the
	// connection counts as dead. Zero: 10s.
	HeartbeatTimeout time.Duration

	// Logger receives the client's logs: debug for the SMTP dialogue (AUTH
	// payloads and bodies masked) and state changes, warn for retries. Nil:
	// silent.
	Logger *slog.Logger
	// OnEvent receives the client's events on one goroutine of its own, in
	// order. A slow OnEvent never stalls sending: past EventBuffer waiting
	// events, new ones are dropped and counted in Stats.EventsDropped. A
	// panic in OnEvent is recovered and logged. OnEvent must not call Close,
	// which waits for the events to be delivered. Nil: no events.
	OnEvent func(Event)
	// EventBuffer is how many events may wait for OnEvent. Zero: 1024.
	EventBuffer int
	// TempDir holds copies of bodies that cannot be read twice (see
	// Email.Body). Zero: os.TempDir().
	TempDir string

	// SpoolDir makes the queue durable. Send and Enqueue return only once
	// the email (envelope, options, body) is written to a file in this
	// directory and fsync'd with the directory; the end of each email's
	// data and each result are recorded there too. New takes the
	// directory's lock (one Client per directory) and sends again every
	// email a previous Client accepted and did not finish, so a crash loses
	// nothing that was accepted: Recovered returns their Handles. An email
	// whose end of data the previous Client may have written is not sent
	// again unless RetryUnknown: it fails as an unknown outcome. Emails
	// that Close hands back stay in the spool (ErrSpooled). The format and
	// the cost are in docs/spool.md. A relative path is taken relative to
	// the working directory when New runs. Zero: the queue is in memory
	// only.
	SpoolDir string
	// SpoolSyncAll also fsyncs each end-of-data marker, each progress
	// record and each result before going on. Without it they are written before the step they
	// record and survive the process's crash (SIGKILL, panic, OOM), but a
	// power loss may take the last of them: an email may then be sent
	// again without MaybeDelivered. Costs one fsync per email sent.
	SpoolSyncAll bool
	// ResultRetention is how long the store keeps each result after it
	// was recorded, for Client.Result and for Handle.Wait on a Handle of
	// an email found again by its Email.IdempotencyKey; the key stays
	// taken as long. It applies to the spool (SpoolDir) and to the
	// memory store; a Store has an option of its own (pgstore's
	// Options.ResultRetention). Zero: 7 days in the spool; none in
	// memory, where a result lives in its Handle only.
	ResultRetention time.Duration

	// Store is where the emails are kept when several processes share one
	// queue: a *pgstore.Store (package pgstore, PostgreSQL), opened by the
	// caller, who closes it after Close (the Client never closes it).
	// Every process whose Client is given a store on the same schema
	// sends from the same queue, in one priority order: an email any of
	// them accepts may be sent by any, and a process that dies leaves
	// its emails to the others once their leases run out. Each Client
	// claims only what its sessions can start soon, about
	// MaxConcurrentSessions × min(MaxEmailsPerSession, PipelineWindow),
	// and claims again as it sends; Close hands back what it holds and
	// has not started. MaxQueueSize, QueueSize and Stats then count what
	// this Client holds, not the store's queue, which has no bound of its
	// own; Recovered is empty (what a process left is claimed as any
	// email is). It cannot be combined with SpoolDir. Zero: the Client's
	// own store, in memory or in SpoolDir.
	Store Store
	// Lease is how long a claim of an email in Store lasts unless
	// renewed: the Client renews the leases of every email it holds, in
	// one round trip, every Lease/3. A process that stops renewing (it
	// died, or cannot reach the database) loses its emails to the other
	// processes once it has passed: a longer lease is slower to take over
	// after a crash, a shorter one costs more renewals. An email whose
	// end of data was written and which was taken over without a result
	// is an unknown outcome (see RetryUnknown). It applies only with
	// Store: the stores a Client opens are its own. At least 100ms. Zero:
	// 30s.
	Lease time.Duration
}

// minLease is the shortest Options.Lease: renewed every third of it.
const minLease = 100 * time.Millisecond

// maxLine is the longest body line the options allow; zero: no limit.
func (o *Options) maxLine() int {
	if o.AllowLongLines {
		return 0
	}
	return smtpc.MaxLineLength
}

// withDefaults returns a copy of o with every zero field set to its default.
func (o Options) withDefaults() Options {
	def := func(d *time.Duration, v time.Duration) {
		if *d == 0 {
			*d = v
		}
	}
	switch {
	case o.HTTPClient == nil && o.InsecureSkipVerify:
		t := http.DefaultTransport.(*http.Transport).Clone()
		t.TLSClientConfig = &tls.Config{InsecureSkipVerify: true}
		o.HTTPClient = &http.Client{Transport: t}
	case o.HTTPClient == nil:
		o.HTTPClient = http.DefaultClient
	}
	if o.LocalName == "" {
		o.LocalName = "localhost"
	}
	if o.MaxQueueSize == 0 {
		o.MaxQueueSize = 1000
	}
	if o.MaxEmailsPerSession == 0 {
		o.MaxEmailsPerSession = 10
	}
	if o.MaxConcurrentSessions == 0 {
		o.MaxConcurrentSessions = 1
	}
	if o.PipelineWindow == 0 {
		o.PipelineWindow = 256
	}
	def(&o.IdleTimeout, 30*time.Second)
	def(&o.Linger, 10*time.Second)
	if o.Throttle.Texts == nil {
		o.Throttle.Texts = DefaultThrottleTexts
	}
	o.Throttle.Texts = slices.Clone(o.Throttle.Texts)
	if o.Retries == 0 {
		o.Retries = 3
	} else if o.Retries < 0 {
		o.Retries = 0
	}
	def(&o.RetryInterval, time.Second)
	def(&o.MaxRetryInterval, time.Minute)
	def(&o.ReconnectInterval, 5*time.Second)
	def(&o.MaxReconnectInterval, time.Minute)
	if o.MaxReconnectAttempts == 0 {
		o.MaxReconnectAttempts = 10
	}
	def(&o.DialTimeout, 30*time.Second)
	def(&o.AuthTimeout, 30*time.Second)
	def(&o.ChannelTimeout, 10*time.Second)
	def(&o.CommandTimeout, time.Minute)
	def(&o.SessionTimeout, 5*time.Minute)
	def(&o.HeartbeatInterval, 30*time.Second)
	def(&o.HeartbeatTimeout, 10*time.Second)
	def(&o.Lease, 30*time.Second)
	if o.EventBuffer == 0 {
		o.EventBuffer = 1024
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	return o
}

// validate checks the options and the relay address.
func (o Options) validate(relayURL, apiKey string) error {
	u, err := url.Parse(relayURL)
	if err != nil {
		return fmt.Errorf("mxrelay: relay URL: %w", err)
	}
	if u.Scheme != "ws" && u.Scheme != "wss" {
		return fmt.Errorf("mxrelay: relay URL %q: scheme must be ws or wss", relayURL)
	}
	if u.Host == "" {
		return fmt.Errorf("mxrelay: relay URL %q has no host", relayURL)
	}
	if u.User != nil || u.Query().Has("apiKey") || u.Query().Has("key") {
		return errors.New("mxrelay: relay URL must not carry credentials: the API key travels only in AUTHENTICATE")
	}
	if apiKey == "" && !o.RawTunnel {
		return errors.New("mxrelay: API key is empty")
	}
	if u.Scheme == "ws" && !o.APIKeyInClear && !isLoopback(u.Hostname()) {
		return fmt.Errorf("mxrelay: relay URL %q is ws:// to a host that is not loopback: the API key would cross the network in clear (use wss://, or set Options.APIKeyInClear)", relayURL)
	}
	if o.StartTLS != StartTLSNever && (o.TLSConfig == nil || o.TLSConfig.ServerName == "") {
		return errors.New("mxrelay: STARTTLS needs Options.TLSConfig with ServerName set: the name the upstream's certificate is checked against (the greeting's name is chosen by the party TLS protects against)")
	}
	if o.Username != "" && o.StartTLS == StartTLSNever && !o.PasswordInClear {
		return errors.New("mxrelay: SMTP AUTH without STARTTLS would send the password in clear through the relay: set StartTLS (with TLSConfig.ServerName), or Options.PasswordInClear")
	}
	switch {
	case o.Throttle.MinRate < 0:
		return errors.New("mxrelay: Throttle.MinRate is negative")
	case o.RateLimit.Emails < 0 || o.RateLimit.Per < 0 || o.RateLimit.Burst < 0:
		return errors.New("mxrelay: RateLimit has a negative field")
	case o.RateLimit.Emails > 0 && o.RateLimit.Per == 0:
		return errors.New("mxrelay: RateLimit.Emails is set without Per")
	case o.MaxQueueSize < 0:
		return errors.New("mxrelay: MaxQueueSize is negative")
	case o.MaxEmailsPerSession < 0:
		return errors.New("mxrelay: MaxEmailsPerSession is negative")
	case o.MaxConcurrentSessions < 0:
		return errors.New("mxrelay: MaxConcurrentSessions is negative")
	case o.PipelineWindow < 0:
		return errors.New("mxrelay: PipelineWindow is negative")
	case o.MaxReconnectAttempts < 0:
		return errors.New("mxrelay: MaxReconnectAttempts is negative")
	case o.EventBuffer < 0:
		return errors.New("mxrelay: EventBuffer is negative")
	case o.StartTLS < StartTLSNever || o.StartTLS > StartTLSRequired:
		return fmt.Errorf("mxrelay: unknown StartTLS policy %d", o.StartTLS)
	case (o.Username == "") != (o.Password == ""):
		return errors.New("mxrelay: Username and Password go together")
	case o.BatchWait < 0:
		return errors.New("mxrelay: BatchWait is negative")
	case o.InsecureSkipVerify && o.HTTPClient != nil:
		return errors.New("mxrelay: InsecureSkipVerify applies only without HTTPClient: set it in the HTTPClient's transport")
	case o.Store != nil && o.SpoolDir != "":
		return errors.New("mxrelay: Store and SpoolDir cannot be combined: a Client keeps its emails in one store")
	case o.Lease != 0 && o.Lease < minLease:
		return fmt.Errorf("mxrelay: a Lease of %v is too short to be renewed: at least %v", o.Lease, minLease)
	}
	for name, d := range map[string]time.Duration{
		"RetryInterval": o.RetryInterval, "MaxRetryInterval": o.MaxRetryInterval,
		"ReconnectInterval": o.ReconnectInterval, "MaxReconnectInterval": o.MaxReconnectInterval,
		"DialTimeout": o.DialTimeout, "AuthTimeout": o.AuthTimeout, "ChannelTimeout": o.ChannelTimeout,
		"CommandTimeout": o.CommandTimeout, "SessionTimeout": o.SessionTimeout, "EmailTimeout": o.EmailTimeout,
		"HeartbeatTimeout": o.HeartbeatTimeout, "ResultRetention": o.ResultRetention, "Lease": o.Lease,
	} {
		if d < 0 {
			return fmt.Errorf("mxrelay: %s is negative", name)
		}
	}
	if err := checkLocalName(o.LocalName); err != nil {
		return err
	}
	return nil
}

// isLoopback reports whether host (a URL's host name, without brackets)
// is "localhost" or a loopback address.
func isLoopback(host string) bool {
	if strings.EqualFold(host, "localhost") || strings.HasSuffix(strings.ToLower(host), ".localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

func checkLocalName(s string) error {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c <= ' ' || c >= 0x7f {
			return fmt.Errorf("mxrelay: LocalName %q has a space or control character", s)
		}
	}
	return nil
}

// insecureTLS says which certificate checks the options turn off, for the
// warning New logs once: none is the normal case.
func (o Options) insecureTLS() []string {
	var off []string
	if o.InsecureSkipVerify {
		off = append(off, "Options.InsecureSkipVerify: the relay's certificate")
	} else if t, ok := o.HTTPClient.Transport.(*http.Transport); ok && t.TLSClientConfig != nil && t.TLSClientConfig.InsecureSkipVerify {
		off = append(off, "Options.HTTPClient: the relay's certificate")
	}
	if o.TLSConfig != nil && o.TLSConfig.InsecureSkipVerify && o.StartTLS != StartTLSNever {
		off = append(off, "Options.TLSConfig: the SMTP server's certificate (STARTTLS)")
	}
	return off
}
