// Package mxrelay sends email through an SMTP-over-WebSocket relay, for
// hosts where outbound SMTP ports are blocked and port 443 is open.
//
// A relay accepts a WebSocket, checks an API key and forwards an SMTP
// session to a real mail server; the client speaks SMTP end to end with
// that server through it. The wire contract is the mxrelay protocol,
// version 1 (docs/protocol.md).
//
// A Client holds a bounded priority queue (CRITICAL > HIGH > NORMAL > LOW,
// first in first out within a level, retries in turns with fresh mail, never
// ahead of it) and session workers (one by default,
// MaxConcurrentSessions in all): each connects when there is work, sends up to MaxEmailsPerSession emails in one SMTP
// session (EHLO, AUTH, MAIL/RCPT/DATA for each, QUIT), keeps the WebSocket
// authenticated while work keeps coming, and disconnects when idle. Under
// it, a reconnect loop with exponential backoff and jitter; over it,
// per-email results, events, statistics and states.
//
// Over a relay every round trip costs the relay's latency, so the session
// pipelines: with PIPELINING and CHUNKING (RFC 2920, RFC 3030) whole
// transactions go out with BDAT without waiting, up to PipelineWindow in
// flight; with PIPELINING alone each email costs one round trip; with
// neither, or with DisablePipelining, it goes lock-step. Replies are
// matched to commands in order, and each email's fate is decided by its
// own replies. MaxConcurrentSessions runs several sessions, each on its own
// WebSocket, from the same queue.
//
//	c, err := mxrelay.New("wss://relay.example.com/smtp", apiKey, nil)
//	...
//	defer c.Close(ctx)
//	res, err := c.Send(ctx, mxrelay.Email{From: from, To: to, Body: msg})
//
// # Guarantees
//
// Every email accepted by Send or Enqueue gets exactly one Result, whose
// Outcome says how it ended: delivered, failed with an *EmailError,
// unknown, or handed back by Close with ErrClosed. An email is reported
// delivered only when the upstream answered 2xx to the end of its data, on
// a reply a later reply in step confirmed as its own. When the end of data
// was sent and no trusted reply decided it, the outcome is unknown: the
// email ends with an *UnknownOutcomeError (matching ErrUnknownOutcome), or
// with Options.RetryUnknown is retried, and its Result says
// MaybeDelivered. The README's Guarantees section has the
// whole table, and what no client can tell.
//
// # Where each step lives
//
// The root package's files follow an email's way:
//
//   - email.go, body.go: the email as given (its checks, its per-email
//     settings) and its body, read once at Enqueue and read again at each
//     attempt;
//   - send.go: Send, Enqueue and EnqueueWait, the way into the queue;
//   - record.go: the email record, the one writer of an email's state,
//     from accepted to its result;
//   - queue.go: the bounded priority queue, fresh mail and retries in
//     lanes of their own;
//   - pace.go: how fast emails go (Options.RateLimit) and throttle
//     feedback (Options.Throttle);
//   - worker.go: a session worker, waiting for work, opening a session
//     through its dialer, backing off;
//   - session.go: one SMTP session over one stream: taking emails,
//     lingering for the next, draining at its deadline, QUIT;
//   - verdict.go: the outcome of one attempt, a pure function of its
//     replies;
//   - result.go: what the caller gets back, Result and Handle;
//   - client.go: the Client's lifecycle (New, Close), Stats and states;
//   - the store (internal/store, chosen once in New): where accepted
//     emails live and what is recorded of their attempts, in memory
//     (internal/store/memstore), with Options.SpoolDir in the spool
//     directory (internal/spool, docs/spool.md), or with Options.Store in
//     a queue several processes share (package pgstore,
//     docs/postgres.md); store.go says how the Client claims there,
//     stored.go how a Result is kept and read back (Client.Result);
//   - events.go, state.go, errors.go, options.go: events, states and
//     Stats, errors, options;
//   - netsmtp.go, transport.go, sender.go, env.go: the drop-ins.
//
// Under them, internal/relayconn holds both transports behind one dialer
// (the mxrelay protocol's WebSocket and its channels, or a raw tunnel),
// internal/smtpc the SMTP engine (the handshake policy, pipelined
// transactions, the adaptive window, which replies are confirmed) and
// internal/wire the protocol's messages. docs/architecture.md follows an
// email through them, with who owns each goroutine.
//
// # Drop-ins
//
// SendMail, and Transport's SendMail method, take the arguments of net/smtp's
// SendMail, so code written for net/smtp changes one line. Sender has the
// methods of gomail's Sender and SendCloser, and sends any message that
// writes itself out (io.WriterTo), such as wneessen/go-mail's Msg. Command
// mxrelay-sendmail is a sendmail-compatible command for cron, git
// send-email and PHP's mail().
//
// # Testing
//
// Package relaytest runs a relay that follows the protocol, in front of an
// in-memory SMTP server, on a loopback port, with fault injection: point a
// Client at its URL in your own tests and read what arrived in its Mailbox.
//
// # Standards
//
//   - RFC 6455, The WebSocket Protocol (github.com/coder/websocket)
//   - RFC 5321, Simple Mail Transfer Protocol (github.com/emersion/go-smtp)
//   - RFC 3207, SMTP STARTTLS, end to end through the relay
//   - RFC 4954, SMTP AUTH, with RFC 4616 PLAIN and the LOGIN mechanism
//     (github.com/emersion/go-sasl)
//   - RFC 1870, SIZE: the body's size is declared when the server offers it
//   - RFC 3463, enhanced status codes, in SMTPError and Reply
//   - RFC 1047, duplicate messages and the unknown outcome
//
// # What it does not do
//
// It does not build messages (no MIME, no attachments, no headers), sign
// them (no DKIM) or resolve MX records: compose messages with the library
// you like and hand the bytes to Email.Body. It does not rewrite bodies: a
// body goes out as given, dot-stuffed. It keeps nothing on disk unless
// Options.SpoolDir names a durable queue (docs/spool.md), and nothing
// outside the process unless Options.Store is one, besides a
// temporary copy of a body that cannot be read twice, unlinked as soon as
// it is made where the system allows it.
package mxrelay
