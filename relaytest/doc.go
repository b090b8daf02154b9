// Package relaytest provides a test relay for the mxrelay WebSocket protocol
// (docs/protocol.md), in the spirit of net/http/httptest.
//
// A Server listens on a loopback port (or on Options.Network, a network
// of the caller's: one in memory lets a test run under testing/synctest),
// accepts WebSockets at /smtp, checks API keys, and for every SMTP channel
// dials an upstream SMTP server and forwards the byte stream both ways, in
// JSON text or in binary frames. The
// upstream is either an in-process go-smtp server that keeps what it
// accepts in a mailbox, or an SMTP server the caller names.
//
//	srv := relaytest.NewServer(nil)
//	defer srv.Close()
//	// point the client at srv.URL with srv.APIKey, send, then look at srv.Mailbox()
//
// The in-process upstream answers 250 to the end of data only after the
// message is in the mailbox, so a client that was told "delivered" finds
// its message in Mailbox at once, with no waiting.
//
// Faults (Inject) make the relay misbehave on purpose at a precise point:
// reject or ignore authentication, fail a channel, replace or swallow the
// reply to one SMTP command, cut the connection after a RCPT, after the end
// of data or after a number of bytes. Latency delays every frame in one
// direction. CloseClientConnections and SetDown simulate a relay restart.
//
// To apply its faults the relay follows the SMTP dialogue on both streams:
// commands (one per line), DATA bodies up to "<CRLF>.<CRLF>", BDAT chunks
// (RFC 3030), SASL exchanges after AUTH, and pipelined groups (RFC 2920),
// whose replies it keeps in order even when it answers some commands
// itself. After STARTTLS the stream is opaque: bytes still flow and
// DropAfterBytes still counts, but command faults can no longer match.
//
// What relaytest does not do: it is not a production relay (no rate
// limits, no TLS on the WebSocket side, keys compared in memory), and it
// never retries anything itself.
//
// Once started, every method of Server is safe for concurrent use. Close
// closes every connection and waits for every goroutine the Server
// started.
package relaytest
