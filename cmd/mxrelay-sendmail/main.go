// Command mxrelay-sendmail is a sendmail-compatible command that sends the
// message on its standard input through an mxrelay relay, so that cron,
// git send-email, PHP's mail() and anything else that pipes mail into
// /usr/sbin/sendmail can use a relay.
//
//	mxrelay-sendmail [-t] [-i] [-f sender] [-F name] [options] [--] [recipient ...]
//
// The relay comes from the environment, MXRELAY_URL and MXRELAY_API_KEY (or
// MXRELAY_API_KEY_FILE, a file holding the key), or from --url and
// --api-key-file, or from the administrator's configuration file,
// /etc/mxrelay/sendmail.conf ("url = ...", "api-key-file = ...",
// "starttls = ...", "tls-server-name = ...", "domain = ..."): what the
// file sets, an option or the environment cannot change (64, 78).
// MXRELAY_STARTTLS, MXRELAY_TLS_SERVER_NAME and MXRELAY_DOMAIN give the
// other three in the environment. Once the relay is configured (url in the
// file, or MXRELAY_URL), those five settings come from the file or the
// environment only, and an option for one is refused unless it repeats
// what they say (64); a user who gives --url with neither may give them
// all. The file must be a regular file, owned by root or by the user
// running the command, that only its owner may write, in directories
// (on its path as given and with links resolved) owned by root or that
// user that no one else may write unless they are sticky, like /tmp
// (78);
// MXRELAY_SENDMAIL_CONFIG names another one only when nothing is at that
// path (tests). The key itself is never taken from the command line; a
// key file must be a regular file of one line of printable ASCII that
// other users cannot read. Options end at the first recipient or at "--";
// --url, --api-key-file, --tls-server-name, --starttls and --domain may be
// given once, and may not contradict their environment variables; and
// --help is honoured alone:
// so that an argument appended to the administrator's command line cannot
// send the mail or the key elsewhere, nor make a message vanish with exit
// 0.
// MXRELAY_SMTP_USERNAME and MXRELAY_SMTP_PASSWORD are credentials for SMTP
// AUTH with the relay's upstream server, refused with --starttls never
// unless MXRELAY_SMTP_PASSWORD_IN_CLEAR=yes.
//
// The message is read up to the end of the input or, without -i (or -oi),
// up to a line holding only "."; LF and CRLF line ends both become CRLF. A
// message with a bare CR or a line over 998 octets is refused (65).
// The header is read as RFC 5322 says, obsolete syntax included ("Bcc :",
// white space before the colon), field names in any case, folded lines
// kept with their field. The recipients are the operands and, with -t, the
// addresses in the To, Cc and Bcc headers, or in the Resent-To, Resent-Cc
// and Resent-Bcc headers of a message that has a Resent- field, as with
// sendmail (with -t the operands are added to those, as with Postfix). Bcc
// and Resent-Bcc headers are always removed. A line that is not a header
// field ends the header, and the body starts there; a Bcc or Resent-Bcc
// field after it, before the first empty line, is refused (65) rather
// than sent as text. A From and a Date header are
// added when missing. The envelope sender is -f (or -r), a full address
// (a bare name such as "-f root" is refused, 64: bounces go there), "<>"
// for none, else the From header's address, else $LOGNAME@domain. A bare
// user name such as "root" among the recipients or in a header is
// qualified with --domain, $MXRELAY_DOMAIN or the host name; a user or
// domain name with a character that has no place in an address (CR, LF,
// a space) is refused (78). Addresses keep their meaning:
// a quoted local part ("john doe"@example.com) is sent quoted, and an
// address that cannot be written as an SMTP path is refused (65).
//
// sendmail options that mean nothing here are accepted and ignored: -B, -C,
// -d, -e, -h, -L, -M, -N, -O, -o (but -oi), -p, -R, -V, -X with their
// argument, and -c, -G, -m, -n, -s, -U, -x, -bm. Other modes (-bs, -bp,
// -bv, -q, -I) are refused: there is no queue and no daemon.
//
// The message is delivered or not before the command exits; nothing is
// queued on disk, and the copy of the message kept for a retry has no
// name. SIGTERM, SIGINT or SIGHUP withdraws the message and exits with 75;
// once its end of data is sent the reply decides, and when it is not there
// within two seconds the command says the message may have been delivered
// (75). --timeout ends the send the same way, after the end of data too,
// and no reply is awaited longer than it. It prints nothing on success (-v reports the delivery and
// logs the SMTP dialogue, credentials masked). The exit status is from
// sysexits.h: 0 delivered to every recipient; 64 (EX_USAGE) a bad command
// line or no recipient; 65 (EX_DATAERR) a malformed message or address; 67
// (EX_NOUSER) a recipient refused with 5xx (even if others got the message:
// standard error says who did); 69 (EX_UNAVAILABLE) the server refused the
// message for good; 70 (EX_SOFTWARE) an error it does not know; 74
// (EX_IOERR) standard input could not be read; 75 (EX_TEMPFAIL) a
// temporary failure, the relay unreachable, the time out, or an unknown
// outcome (the message may have been delivered); 76 (EX_PROTOCOL) the relay
// broke the protocol; 78 (EX_CONFIG) the relay URL, the API key or the SMTP
// credentials are missing or refused.
package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/mail"
	"os"
	"os/signal"
	"os/user"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unicode/utf8"

	"github.com/mxrelay/mxrelay"
)

func main() {
	// SIGTERM, SIGINT or SIGHUP withdraws the message, unless its end of
	// data was sent, and exits with EX_TEMPFAIL. The copy of the message
	// the library holds has no name on disk; nothing is left behind.
	ctx, cancel := context.WithCancelCause(context.Background())
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP)
	go func() { cancel(fmt.Errorf("%w (%v)", errSignal, <-sigs)) }() // lives as long as the process
	stderr := &lockedWriter{w: os.Stderr}
	p := newProgress()
	done := make(chan int, 1)
	go func() { done <- runWith(ctx, os.Args[1:], os.Getenv, os.Stdin, stderr, p) }()
	select {
	case code := <-done:
		os.Exit(code)
	case <-ctx.Done():
	}
	// run sees the end of ctx and returns the outcome; reading stdin it
	// cannot be interrupted, waiting for the reply to an end of data it
	// should not be, and closing after the outcome it need not be: it is
	// given a moment only.
	select {
	case code := <-done:
		os.Exit(code)
	case code := <-p.reported: // the outcome is known and said; the QUIT can go
		os.Exit(code)
	case <-time.After(signalGrace):
	}
	// The library returns at once from a withdrawn email whose end of
	// data was not sent: once it had the message, its end of data went
	// out, and the reply is late.
	fmt.Fprintf(stderr, "mxrelay-sendmail: %s\n", withdrawn(context.Cause(ctx), p.handedOver.Load()))
	os.Exit(exTempFail)
}

// errSignal is the cause of the end of main's context; errTimedOut, of
// the end of --timeout.
var (
	errSignal   = errors.New("stopped by a signal")
	errTimedOut = errors.New("timed out")
)

// errNoReply is send's error when the email was withdrawn after its end
// of data and the reply did not come within signalGrace.
var errNoReply = errors.New("no reply to the end of data")

// withdrawn says what the end of the command's context, for cause (a
// signal, the time out), left of the message: not sent, or, when its end
// of data went out and the reply is not known, perhaps delivered.
func withdrawn(cause error, endOfData bool) string {
	if endOfData {
		return fmt.Sprintf("%v while the reply to the end of data was awaited: the message may have been delivered: check before sending it again", cause)
	}
	return fmt.Sprintf("%v: the message was not sent", cause)
}

// progress is how far run got with the message, for main to say what a
// signal left behind when run does not return within signalGrace.
type progress struct {
	handedOver atomic.Bool // the library has the message: it may send its end of data
	reported   chan int    // the exit status, once the outcome is reported; buffered
}

func newProgress() *progress { return &progress{reported: make(chan int, 1)} }

// libraryCommandTimeout is Options.CommandTimeout's default.
const libraryCommandTimeout = time.Minute

// closeTimeout bounds the QUIT and the WebSocket close after the result.
const closeTimeout = 10 * time.Second

// signalGrace is how long run has, after a signal or the time out, to
// withdraw the message and say what became of it.
const signalGrace = 2 * time.Second

// run is the command: it reads the message on stdin, sends it and returns
// the exit status, reporting errors on stderr. The end of ctx (a signal)
// withdraws the message, if its end of data has not been sent, and the
// status is EX_TEMPFAIL.
func run(ctx context.Context, args []string, env func(string) string, stdin io.Reader, stderr io.Writer) int {
	return runWith(ctx, args, env, stdin, stderr, newProgress())
}

// runWith is run, telling p how far it got.
func runWith(ctx context.Context, args []string, env func(string) string, stdin io.Reader, stderr io.Writer, p *progress) int {
	stderr = &lockedWriter{w: stderr} // the client's logger writes from its own goroutines
	fail := func(code int, format string, a ...any) int {
		fmt.Fprintf(stderr, "mxrelay-sendmail: "+format+"\n", a...)
		return code
	}
	cfg, err := parseArgs(args)
	if err != nil {
		fmt.Fprintf(stderr, "mxrelay-sendmail: %v\n%s", err, usage)
		return exUsage
	}
	if cfg.help {
		fmt.Fprint(stderr, usage)
		return exOK
	}
	path := configFile(env)
	conf, err := readConfig(path)
	if err == nil {
		err = applyConfig(cfg, conf, path, env)
	}
	if err == nil {
		err = cfg.checkTLS()
	}
	switch {
	case errors.Is(err, errUsage):
		return fail(exUsage, "%v", err)
	case err != nil:
		return fail(exConfig, "%v", err)
	}
	if hasControl(cfg.fullName) {
		return fail(exUsage, "-F %q: a control character in the full name", cfg.fullName)
	}
	domain, local, err := identity(cfg, env)
	switch {
	case errors.Is(err, errUsage):
		return fail(exUsage, "%v", err)
	case err != nil:
		return fail(exConfig, "%v", err)
	}

	// The configuration is checked before stdin is read, so that a
	// misconfigured command fails at once.
	relayURL, apiKey, err := mxrelay.RelayFromEnv(func(k string) string {
		switch {
		case k == mxrelay.EnvURL && cfg.url != "":
			return cfg.url
		case k == mxrelay.EnvAPIKeyFile && cfg.keyFile != "":
			return cfg.keyFile
		case k == mxrelay.EnvAPIKey && cfg.keyFile != "":
			return "" // the file named on the command line wins
		}
		return env(k)
	})
	if err != nil {
		return fail(exConfig, "%v", err)
	}
	inClear, err := passwordInClear(cfg, env)
	if err != nil {
		return fail(exConfig, "%v", err)
	}
	opts := &mxrelay.Options{
		LocalName:            cfg.helo,
		Username:             env(envUsername),
		Password:             env(envPassword),
		PasswordInClear:      inClear,
		StartTLS:             cfg.startTLS,
		Retries:              cfg.retries,
		RetryInterval:        time.Second,
		ReconnectInterval:    time.Second,
		MaxReconnectAttempts: cfg.retries + 1,
		IdleTimeout:          -1,
		// One email per run gains nothing from pipelining, and lock-step
		// knows more after a failure: a stall before the end of data is
		// "not sent" (EX_TEMPFAIL, safe to retry), not "unknown".
		DisablePipelining: true,
	}
	if cfg.timeout < libraryCommandTimeout {
		// A reply, that to the end of data included, is not awaited
		// longer than the command may take.
		opts.CommandTimeout = cfg.timeout
	}
	if cfg.retries == 0 {
		opts.Retries = -1 // Options' zero means the default
	}
	if cfg.tlsName != "" {
		opts.TLSConfig = &tls.Config{ServerName: cfg.tlsName}
	}
	if cfg.verbose {
		opts.Logger = slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
		for _, o := range cfg.ignored {
			fmt.Fprintf(stderr, "mxrelay-sendmail: ignoring %s\n", o)
		}
	}
	c, err := mxrelay.New(relayURL, apiKey, opts)
	if err != nil {
		return fail(exConfig, "%v", err)
	}
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), closeTimeout)
		defer cancel()
		c.Close(ctx)
	}()

	msg, err := readMessage(stdin, !cfg.ignoreDots)
	switch {
	case errors.Is(err, errData):
		return fail(exDataErr, "%v", err)
	case err != nil:
		return fail(exIOErr, "reading the message: %v", err)
	}
	email, err := envelope(cfg, msg, local, domain)
	switch {
	case errors.Is(err, errUsage):
		return fail(exUsage, "%v", err)
	case err != nil:
		return fail(exDataErr, "%v", err)
	}

	if ctx.Err() != nil { // a signal came while the message was read
		return fail(exTempFail, "%s", withdrawn(context.Cause(ctx), false))
	}
	ctx, cancel := context.WithTimeoutCause(ctx, cfg.timeout, fmt.Errorf("%w after %v", errTimedOut, cfg.timeout))
	defer cancel()
	res, err := send(ctx, c, email, p)
	switch rerr := msg.readErr(); { // Enqueue copies the body before anything is sent
	case errors.Is(rerr, errData):
		return fail(exDataErr, "%v (nothing was sent)", rerr)
	case rerr != nil:
		return fail(exIOErr, "reading the message: %v (nothing was sent)", rerr)
	}
	var code int
	switch {
	case errors.Is(err, errNoReply):
		code = fail(exTempFail, "%s", withdrawn(context.Cause(ctx), true))
	case errors.Is(err, mxrelay.ErrCanceled) && ctx.Err() != nil:
		code = fail(exTempFail, "%s", withdrawn(context.Cause(ctx), false))
	default:
		code = exitCode(res, err)
		report(stderr, cfg.verbose, res, err, code)
	}
	p.reported <- code // before the deferred Close, which a stalled QUIT holds up
	return code
}

// send hands email to c and waits for its result, as Client.Send does,
// telling p once the library has it (Enqueue reads the rest of stdin):
// from then on the end of ctx withdraws the email only if its end of data
// has not been sent, and otherwise the reply decides. When ctx ends by
// the time out (errTimedOut), the reply is given signalGrace, as main
// gives it after a signal, and then send returns errNoReply: the outcome
// is unknown.
func send(ctx context.Context, c *mxrelay.Client, email mxrelay.Email, p *progress) (*mxrelay.Result, error) {
	h, err := c.Enqueue(email)
	if err != nil {
		return nil, err
	}
	p.handedOver.Store(true)
	stop := context.AfterFunc(ctx, h.Cancel)
	defer stop()
	select {
	case <-h.Done():
	case <-ctx.Done():
		if !errors.Is(context.Cause(ctx), errTimedOut) {
			<-h.Done() // a signal: main decides when to stop waiting
			break
		}
		select {
		case <-h.Done():
		case <-time.After(signalGrace):
			return nil, errNoReply
		}
	}
	return h.Wait(context.Background())
}

// envelope prepares the email: its recipients, its sender, its header
// (Bcc and Resent-Bcc removed, From and Date added when missing) and its
// body. local is the user's own address, for a message without a sender.
func envelope(cfg *config, msg *message, local, domain string) (mxrelay.Email, error) {
	var to []string
	for _, arg := range cfg.recipients {
		list, err := parseAddresses(arg, domain)
		if err != nil {
			return mxrelay.Email{}, fmt.Errorf("%w: recipient %w", errData, err)
		}
		to = append(to, list...)
	}
	fields := msg.recipientFields()
	if cfg.extract {
		list, err := msg.addresses(domain, fields...)
		if err != nil {
			return mxrelay.Email{}, err
		}
		to = append(to, list...)
	}
	to = dedupe(to)
	if len(to) == 0 {
		if cfg.extract {
			return mxrelay.Email{}, fmt.Errorf("%w: no recipient: none given and none in the %s, %s or %s headers", errUsage, fields[0], fields[1], fields[2])
		}
		return mxrelay.Email{}, fmt.Errorf("%w: no recipient given (use -t to read them from the headers)", errUsage)
	}
	msg.remove(blindFields...)

	var from string
	switch {
	case cfg.senderSet:
		f, err := senderAddress(cfg.sender, domain)
		if err != nil {
			return mxrelay.Email{}, err
		}
		from = f
	default:
		from = local
		if list, err := msg.addresses(domain, "From"); err == nil && len(list) > 0 {
			from = list[0]
		}
	}
	if !msg.has("From") {
		addr := firstOf(from, local)
		if cfg.fullName != "" {
			a, err := mail.ParseAddress(addr) // the path read back: its local part unquoted, as mail.Address wants it
			if err != nil {
				return mxrelay.Email{}, fmt.Errorf("%w: sender %q: %w", errData, addr, err)
			}
			addr = (&mail.Address{Name: cfg.fullName, Address: a.Address}).String()
		}
		msg.add("From", addr)
	}
	if !msg.has("Date") {
		msg.add("Date", time.Now().Format(time.RFC1123Z))
	}
	return mxrelay.Email{From: from, To: to, Body: msg.reader()}, nil
}

// senderAddress reads -f's argument: an address, with or without angle
// brackets or a display name, a bare user name, or "<>" (or "") for the
// null sender.
func senderAddress(s, domain string) (string, error) {
	if hasControl(s) {
		return "", fmt.Errorf("%w: sender %q has a control character", errData, s)
	}
	s = strings.TrimSpace(s)
	if s == "" || s == "<>" {
		return "", nil
	}
	list, err := parseAddresses(s, domain)
	if err != nil || len(list) != 1 {
		return "", fmt.Errorf("%w: sender %q is not one address", errData, s)
	}
	if !strings.Contains(s, "@") {
		// A bare name would be qualified with a domain the upstream may
		// refuse or, worse, accept for someone else's mailbox: the
		// envelope sender is where bounces go, so it is given whole.
		return "", fmt.Errorf("%w: -f %s: the envelope sender must be a full address (user@domain), such as %s", errUsage, s, list[0])
	}
	return list[0], nil
}

// The environment variables for SMTP AUTH with the relay's upstream.
const (
	envUsername        = "MXRELAY_SMTP_USERNAME"
	envPassword        = "MXRELAY_SMTP_PASSWORD"
	envPasswordInClear = "MXRELAY_SMTP_PASSWORD_IN_CLEAR"
)

// passwordInClear reports whether SMTP AUTH may run without STARTTLS. It
// refuses credentials with --starttls never (the password would cross the
// relay and its hop to the upstream in clear) unless
// MXRELAY_SMTP_PASSWORD_IN_CLEAR is "yes".
func passwordInClear(cfg *config, env func(string) string) (bool, error) {
	switch v := env(envPasswordInClear); {
	case v == "yes":
		return true, nil
	case v != "":
		return false, fmt.Errorf("%w: %s=%q: want yes, or leave it unset", errConfig, envPasswordInClear, v)
	case (env(envUsername) != "" || env(envPassword) != "") && cfg.startTLS == mxrelay.StartTLSNever:
		return false, fmt.Errorf("%w: %s is set and --starttls is never: SMTP AUTH would send the password in clear; use --starttls=required with --tls-server-name, or set %s=yes",
			errConfig, envUsername, envPasswordInClear)
	}
	return false, nil
}

// errConfig is wrapped by errors about the environment or the
// configuration (EX_CONFIG).
var errConfig = errors.New("configuration")

// identity returns the domain that qualifies bare user names (--domain,
// the configuration's domain or $MXRELAY_DOMAIN, as applyConfig chose,
// else the host name) and the user's own address
// ($LOGNAME, $USER, else the account's name, at that domain), which goes
// into a generated From line and the envelope: each is checked, so that a
// CR, LF or other character that is not in a user or domain name cannot
// add header fields or change the address.
func identity(cfg *config, env func(string) string) (domain, local string, err error) {
	domain, from := cfg.domain, cfg.origin("domain")
	if domain == "" {
		domain, from = hostname(), "the host name"
	}
	if err := checkDomain(from, domain); err != nil {
		return "", "", err
	}
	user, from := env("LOGNAME"), "LOGNAME"
	if user == "" {
		user, from = env("USER"), "USER"
	}
	if user == "" {
		user, from = currentUser(), "the user name"
	}
	if !isUserName(user) {
		return "", "", fmt.Errorf("%w: %s %q is not a user name that can be put in an address (set LOGNAME, or give -f)", errConfig, from, user)
	}
	local, err = smtpPath(user + "@" + domain)
	if err != nil {
		return "", "", fmt.Errorf("%w: %s %q: %w", errConfig, from, user, err)
	}
	return domain, local, nil
}

// checkDomain refuses a domain for bare user names that is not a domain
// name (config); from says where it was set.
func checkDomain(from, domain string) error {
	if !isDotAtom(domain) || !isASCII(domain) {
		return fmt.Errorf("%w: %s %q is not a domain name", errConfig, from, domain)
	}
	return nil
}

func hasControl(s string) bool {
	return strings.ContainsFunc(s, func(r rune) bool { return r < ' ' || r == 0x7f })
}

func isASCII(s string) bool {
	return !strings.ContainsFunc(s, func(r rune) bool { return r >= utf8.RuneSelf })
}

// report tells stderr what happened: nothing on success unless verbose.
func report(w io.Writer, verbose bool, res *mxrelay.Result, err error, code int) {
	if res != nil && len(res.Accepted) > 0 && (verbose || code != exOK) {
		fmt.Fprintf(w, "mxrelay-sendmail: delivered to %s (%d %s)\n", strings.Join(res.Accepted, ", "), res.Reply.Code, res.Reply.Message)
	}
	if res != nil {
		for _, r := range res.Rejected {
			fmt.Fprintf(w, "mxrelay-sendmail: not delivered to %s: %v\n", r.Address, r.Err)
		}
	}
	if err != nil {
		fmt.Fprintf(w, "mxrelay-sendmail: not delivered: %v\n", err)
		if res != nil && res.MaybeDelivered {
			fmt.Fprintln(w, "mxrelay-sendmail: the message may have been delivered: check before sending it again")
		}
	}
}

// lockedWriter serialises writes to w.
type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// dedupe removes the second and later copies of each address (SMTP
// paths). Only the domain is compared without regard to case: a local
// part is the destination's to interpret (RFC 5321 §2.4), and
// "Alice@example.com" and "alice@example.com" may be two mailboxes.
func dedupe(addrs []string) []string {
	seen := map[string]bool{}
	out := addrs[:0]
	for _, a := range addrs {
		k := a
		if at := strings.LastIndexByte(a, '@'); at >= 0 {
			k = a[:at] + strings.ToLower(a[at:])
		}
		if !seen[k] {
			seen[k] = true
			out = append(out, a)
		}
	}
	return out
}

func firstOf(s ...string) string {
	for _, v := range s {
		if v != "" {
			return v
		}
	}
	return ""
}

func hostname() string {
	if h, err := os.Hostname(); err == nil && h != "" {
		return h
	}
	return "localhost"
}

func currentUser() string {
	if u, err := user.Current(); err == nil && u.Username != "" {
		return u.Username
	}
	return "nobody"
}
