package relaytest

import (
	"crypto/subtle"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
)

// Message is a message the in-process upstream accepted: it answered 250
// (or the 2xx of a ReplaceReply fault) to the end of data.
type Message struct {
	From string   // MAIL FROM address
	To   []string // RCPT TO addresses the upstream accepted, in order
	// Data is exactly what the backend received: a DATA body after
	// dot-unstuffing and without its final "." line, or the BDAT chunks
	// end to end. Line ends are as sent.
	Data []byte
	// MailOptions are the MAIL parameters as go-smtp's server parsed them;
	// RcptOptions the RCPT parameters, one per address in To.
	MailOptions smtp.MailOptions
	RcptOptions []smtp.RcptOptions
	User        string    // SMTP AUTH user, "" if none
	Session     int       // 1-based sequence number of the upstream SMTP connection that delivered it
	Received    time.Time // when the end of data was received
}

func (m Message) clone() Message {
	m.To = slices.Clone(m.To)
	m.RcptOptions = slices.Clone(m.RcptOptions)
	m.Data = slices.Clone(m.Data)
	return m
}

// Mailbox returns a copy of the messages the in-process upstream accepted,
// in order. It is empty when Options.UpstreamAddr is set.
func (s *Server) Mailbox() []Message {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]Message, len(s.mailbox))
	for i, sm := range s.mailbox {
		out[i] = sm.m.clone()
	}
	return out
}

// deliver stores m, received on the upstream connection seq from addr.
func (s *Server) deliver(addr string, seq int, m Message) {
	s.mu.Lock()
	s.nextID++
	s.mailbox = append(s.mailbox, stored{id: s.nextID, m: m})
	// Paired with a reply only while seq is the connection from addr: go-smtp
	// may finish a BDAT message after the relay closed the connection,
	// when its port may already serve another one.
	if cur, ok := s.seqByAddr[addr]; ok && cur == seq {
		s.storedBy[seq] = append(s.storedBy[seq], s.nextID)
	}
	s.mu.Unlock()
	// OnMessage and Mailbox are how a test or mockrelay sees each message:
	// logged as well, a message OnMessage prints (mockrelay) is told twice.
	if s.opts.OnMessage == nil {
		s.log.Debug("relaytest: message received", "from", m.From, "to", m.To, "bytes", len(m.Data), "session", m.Session)
		return
	}
	defer func() {
		if v := recover(); v != nil {
			s.log.Error("relaytest: OnMessage panicked", "panic", v)
		}
	}()
	s.opts.OnMessage(m.clone())
}

// stored is a message in the mailbox with the ID that pairs it with the
// reply to its end of data.
type stored struct {
	id uint64
	m  Message
}

// takeStored returns the ID of the oldest message stored through the
// upstream connection from addr whose 250 the relay has not yet seen. The
// in-process upstream stores a message exactly when it answers 2xx to its
// end of data, in order, so the n-th 2xx reply to an end of data on a
// connection is the n-th message stored through it.
func (s *Server) takeStored(addr string) (uint64, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	seq, ok := s.seqByAddr[addr]
	ids := s.storedBy[seq]
	if !ok || len(ids) == 0 {
		return 0, false
	}
	s.storedBy[seq] = ids[1:]
	return ids[0], true
}

// withdraw removes a stored message: a fault replaced the 2xx to its end of
// data with a refusal, before the client could see the 2xx.
func (s *Server) withdraw(id uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.mailbox = slices.DeleteFunc(s.mailbox, func(sm stored) bool { return sm.id == id })
}

// sessionStarted makes seq the upstream connection from addr. The relay
// knows its connections by their address, which the kernel may give to a
// new connection as soon as the old one is closed.
func (s *Server) sessionStarted(addr string, seq int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.seqByAddr[addr] = seq
}

// sessionEnded drops the pairing state of a finished upstream connection,
// unless its address already belongs to a newer one.
func (s *Server) sessionEnded(addr string, seq int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.storedBy, seq)
	if s.seqByAddr[addr] == seq {
		delete(s.seqByAddr, addr)
	}
}

// startSMTP starts the in-process upstream on a loopback port of
// Options.Network.
func (s *Server) startSMTP() {
	ln, err := s.opts.Network.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(fmt.Sprintf("relaytest: failed to listen for the SMTP server: %v", err))
	}
	srv := smtp.NewServer(&backend{s: s})
	srv.Domain = s.opts.Domain
	srv.AllowInsecureAuth = true
	srv.EnableSMTPUTF8 = true
	srv.EnableBINARYMIME = true // 8BITMIME and CHUNKING are always on
	srv.EnableDSN = true
	srv.EnableREQUIRETLS = true // offered only after STARTTLS
	srv.MaxMessageBytes = s.opts.MaxMessageBytes
	srv.TLSConfig = s.opts.TLSConfig
	srv.ErrorLog = smtpLogger{s.log}
	s.smtp = srv
	s.smtpLn = &trackingListener{Listener: ln, s: s}
	s.SMTPAddr = ln.Addr().String()
	s.bg.Go(func() { _ = srv.Serve(s.smtpLn) })
}

// trackingListener numbers the in-process upstream's connections and keeps
// them, so that Close can close them all.
type trackingListener struct {
	net.Listener
	s *Server
}

func (l *trackingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	s := l.s
	s.mu.Lock()
	s.stats.UpstreamSessions++
	tc := &trackedConn{Conn: c, s: s, seq: s.stats.UpstreamSessions}
	s.upConns[tc] = struct{}{}
	s.mu.Unlock()
	return tc, nil
}

type trackedConn struct {
	net.Conn
	s      *Server
	seq    int
	once   sync.Once
	broken atomic.Bool // a Read failed: the client is gone
}

func (c *trackedConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if err != nil {
		c.broken.Store(true)
	}
	return n, err
}

func (c *trackedConn) Close() error {
	c.once.Do(func() {
		c.s.mu.Lock()
		delete(c.s.upConns, c)
		c.s.mu.Unlock()
	})
	return c.Conn.Close()
}

// tracked finds the trackedConn of an upstream connection, under its TLS
// layer if any.
func tracked(c net.Conn) *trackedConn {
	for {
		switch x := c.(type) {
		case *trackedConn:
			return x
		case *tls.Conn:
			c = x.NetConn()
		default:
			return nil
		}
	}
}

type smtpLogger struct{ l *slog.Logger }

func (l smtpLogger) Printf(format string, v ...any) {
	l.l.Debug("relaytest: smtp server: " + fmt.Sprintf(format, v...))
}

func (l smtpLogger) Println(v ...any) { l.l.Debug("relaytest: smtp server: " + fmt.Sprint(v...)) }

// backend is the in-process upstream's go-smtp backend.
type backend struct{ s *Server }

func (b *backend) NewSession(c *smtp.Conn) (smtp.Session, error) {
	tc := tracked(c.Conn())
	if tc == nil {
		return nil, errors.New("relaytest: untracked connection")
	}
	se := &session{s: b.s, conn: tc, addr: c.Conn().RemoteAddr().String(), seq: tc.seq}
	b.s.sessionStarted(se.addr, se.seq)
	return se, nil
}

var errTruncated = &smtp.SMTPError{
	Code:         451,
	EnhancedCode: smtp.EnhancedCode{4, 4, 2},
	Message:      "Connection lost during the data",
}

var errAuthRequired = &smtp.SMTPError{
	Code:         530,
	EnhancedCode: smtp.EnhancedCode{5, 7, 0},
	Message:      "Authentication required",
}

// session is one SMTP session of the in-process upstream. go-smtp may call
// Data from its own goroutine (BDAT), hence mu.
type session struct {
	s    *Server
	conn *trackedConn
	addr string // the relay's end of the connection
	seq  int

	mu    sync.Mutex
	user  string
	from  string
	to    []string
	mopts smtp.MailOptions
	ropts []smtp.RcptOptions
}

func (se *session) AuthMechanisms() []string {
	if len(se.s.opts.Users) == 0 {
		return nil
	}
	if m := se.s.opts.AuthMechanisms; len(m) > 0 {
		return m
	}
	return []string{sasl.Plain, sasl.Login}
}

func (se *session) Auth(mech string) (sasl.Server, error) {
	if len(se.s.opts.Users) == 0 {
		return nil, smtp.ErrAuthUnsupported
	}
	switch mech {
	case sasl.Plain:
		return sasl.NewPlainServer(func(identity, username, password string) error {
			if identity != "" && identity != username {
				return smtp.ErrAuthFailed
			}
			return se.login(username, password)
		}), nil
	case sasl.Login:
		return &loginServer{authenticate: se.login}, nil
	}
	return nil, smtp.ErrAuthUnknownMechanism
}

func (se *session) login(username, password string) error {
	want, ok := se.s.opts.Users[username]
	if !ok || subtle.ConstantTimeCompare([]byte(want), []byte(password)) != 1 {
		return smtp.ErrAuthFailed
	}
	se.mu.Lock()
	se.user = username
	se.mu.Unlock()
	return nil
}

func (se *session) Mail(from string, opts *smtp.MailOptions) error {
	se.mu.Lock()
	defer se.mu.Unlock()
	if len(se.s.opts.Users) > 0 && se.user == "" {
		return errAuthRequired
	}
	se.from = from
	se.to, se.ropts = nil, nil
	se.mopts = smtp.MailOptions{}
	if opts != nil {
		se.mopts = *opts
	}
	return nil
}

func (se *session) Rcpt(to string, opts *smtp.RcptOptions) error {
	se.mu.Lock()
	se.to = append(se.to, to)
	var o smtp.RcptOptions
	if opts != nil {
		o = *opts
	}
	se.ropts = append(se.ropts, o)
	se.mu.Unlock()
	return nil
}

func (se *session) Data(r io.Reader) error {
	data, err := io.ReadAll(r)
	if err != nil {
		return err
	}
	if se.conn.broken.Load() {
		// go-smtp ends a BDAT chunk cut short by the end of the connection
		// as if it were complete: do not keep a truncated message.
		return errTruncated
	}
	se.mu.Lock()
	m := Message{
		From:        se.from,
		To:          slices.Clone(se.to),
		Data:        data,
		MailOptions: se.mopts,
		RcptOptions: slices.Clone(se.ropts),
		User:        se.user,
		Session:     se.seq,
		Received:    time.Now(),
	}
	se.mu.Unlock()
	se.s.deliver(se.addr, se.seq, m)
	return nil
}

func (se *session) Reset() {
	se.mu.Lock()
	se.from = ""
	se.to, se.ropts = nil, nil
	se.mu.Unlock()
}

func (se *session) Logout() error {
	se.s.sessionEnded(se.addr, se.seq)
	return nil
}

// loginServer is the server side of the LOGIN mechanism
// (draft-murchison-sasl-login): "Username:" and "Password:" challenges.
// go-sasl has only the client side.
type loginServer struct {
	authenticate func(username, password string) error
	state        int
	username     string
}

func (l *loginServer) Next(response []byte) (challenge []byte, done bool, err error) {
	switch l.state {
	case 0:
		if response == nil {
			l.state = 1
			return []byte("Username:"), false, nil
		}
		// An initial response is the user name.
		l.username = string(response)
		l.state = 2
		return []byte("Password:"), false, nil
	case 1:
		l.username = string(response)
		l.state = 2
		return []byte("Password:"), false, nil
	case 2:
		l.state = 3
		return nil, true, l.authenticate(l.username, string(response))
	}
	return nil, false, sasl.ErrUnexpectedClientResponse
}
