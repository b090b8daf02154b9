// Package mxrelayotel reports an mxrelay Client to OpenTelemetry: metrics
// from its events and its Stats, and a span per SMTP session and per email
// from its events. It is a module of its own, so that the mxrelay module
// does not depend on OpenTelemetry (as go-redis keeps redisotel apart).
//
// Wire it before New, observe the Client after:
//
//	opts := mxrelay.Options{}
//	inst, err := mxrelayotel.Instrument(&opts, mxrelayotel.Config{})
//	...
//	c, err := mxrelay.New(url, key, &opts)
//	...
//	err = inst.Observe(c)
//	...
//	c.Close(ctx)  // delivers the last events
//	inst.Close()
//
// # Metrics
//
// Counters, from the events:
//
//	mxrelay.emails.delivered  {email}    mxrelay.email.priority: Outcome delivered
//	mxrelay.emails.failed     {email}    mxrelay.email.priority, error.type, mxrelay.email.outcome: not delivered
//	mxrelay.emails.unknown    {email}    mxrelay.email.priority: Outcome unknown
//	mxrelay.emails.maybe_delivered {email} mxrelay.email.priority: any outcome with MaybeDelivered
//	mxrelay.email.retries     {retry}    retries scheduled
//	mxrelay.sessions.completed {session} sessions that ended with QUIT
//	mxrelay.sessions.failed   {session}  sessions that could not start or broke
//
// Histograms, in seconds:
//
//	mxrelay.email.send.duration         from Enqueue to the result; mxrelay.email.priority, error.type when failed
//	mxrelay.email.transaction.duration  the delivering SMTP transaction; mxrelay.email.priority
//
// Gauges and an observable counter, read from Client.Stats at each
// collection once Observe is called:
//
//	mxrelay.queue.depth        {email}  emails waiting, by mxrelay.email.priority (all four levels)
//	mxrelay.queue.oldest_age   s        age of the oldest waiting email, 0 when none waits
//	mxrelay.emails.in_flight   {email}  emails in a session now
//	mxrelay.pipeline.window    {transaction}  transactions a session may keep in flight (the adaptive window)
//	mxrelay.send.rate          {email}/s  the rate throttle feedback holds the client to, 0 when it does not
//	mxrelay.events.dropped     {event}  events lost because OnEvent fell behind (the counters above miss them)
//
// These follow the Result's Outcome and count as Client.Stats does
// (EmailsDelivered, EmailsFailed, EmailsUnknown, EmailsMaybeDelivered).
// mxrelay.email.outcome is failed, unknown or handed_back. error.type is
// the semantic conventions' attribute: unknown_outcome for an unknown
// outcome, closed for an email handed back, otherwise the SMTP reply code
// ("550"), or canceled, timeout, connect, auth_failed, invalid_email, or
// _OTHER. Priorities are low, normal, high and critical.
//
// # Traces
//
// A span "mxrelay.session" (kind client) per SMTP session, from
// EventSessionQueued (so it covers dialing, AUTHENTICATE and the channel)
// to EventSessionCompleted or EventSessionFailed, with an event
// "mxrelay.session.started" when the SMTP dialogue is ready. Its
// attributes: mxrelay.session.id, network.protocol.name "smtp",
// mxrelay.session.emails (ready at its start),
// mxrelay.session.emails.delivered and .failed; status Error with
// error.type when it failed.
//
// A span "mxrelay.email" per email, from its Queued time to its result, a
// root span linked to the span of the session of its last attempt. Its
// attributes: mxrelay.email.id, mxrelay.email.priority,
// mxrelay.email.attempts, mxrelay.email.outcome (delivered, failed,
// unknown, handed_back), mxrelay.email.maybe_delivered,
// mxrelay.email.recipients.accepted and .rejected (counts),
// mxrelay.smtp.reply.code when there is one (the reply to the delivering
// end of data, or the refusal); status Error with error.type when it was
// not delivered.
//
// Spans carry no address, no message text, no error text (SMTP replies
// quote addresses) and no credential. Their timestamps are the events'
// times, so a slow OnEvent does not stretch them.
//
// Session spans are kept by session ID, open and recently ended (for the
// links of late email results), up to Config.MaxSessions: past it the
// oldest is forgotten, and ended if still open. Close ends those still
// open.
package mxrelayotel
