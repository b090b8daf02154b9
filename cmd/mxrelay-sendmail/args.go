package main

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/mxrelay/mxrelay"
)

// config is what the command line asks for.
type config struct {
	extract    bool     // -t: recipients from To, Cc and Bcc
	ignoreDots bool     // -i, -oi: a line holding only "." does not end the input
	sender     string   // -f, -r
	senderSet  bool     //
	fullName   string   // -F
	verbose    bool     // -v
	recipients []string // the operands
	ignored    []string // options accepted and ignored, for -v

	url         string
	keyFile     string
	helo        string
	startTLS    mxrelay.StartTLS
	startTLSSet bool
	tlsName     string
	timeout     time.Duration
	retries     int
	domain      string
	from        map[string]string // where a setting was set, when not by its option
	help        bool
}

const (
	defaultTimeout = 2 * time.Minute
	defaultRetries = 3
)

// withArg are sendmail's one-letter options that take an argument, attached
// ("-fuser@example.com", "-oi") or as the next word ("-f user@example.com").
const withArg = "BbCdeFfhLMNOopqRrVX"

// ignoredFlags are sendmail options without an argument that change nothing
// here: -c, -G, -m, -n, -s, -U, -x.
const ignoredFlags = "cGmnsUx"

// errUsage is wrapped by every command line error.
var errUsage = errors.New("usage")

func usageErr(format string, a ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{errUsage}, a...)...)
}

// parseArgs reads sendmail's command line: one-letter options, alone or
// grouped ("-ti"), and this command's own options, spelled with two
// dashes, then the recipients. Options end at the first operand or at
// "--", as with POSIX getopt and Postfix's sendmail, so that a word
// appended after the administrator's command line ("--url=...") is not
// an option; an operand that starts with "-" is refused unless it comes
// after "--". --url, --api-key-file, --tls-server-name, --starttls and
// --domain may be given once only, and --help only alone: an appended
// --help would keep the message from being sent.
func parseArgs(args []string) (*config, error) {
	cfg := &config{timeout: defaultTimeout, retries: defaultRetries}
	if len(args) == 1 && args[0] == "-h" {
		// sendmail's -h takes a hop count; alone, it can only be a
		// person asking for the usage.
		cfg.help = true
		return cfg, nil
	}
	i := 0
	// nextWord is the argument of option opt given as the next word.
	nextWord := func(opt string) (string, error) {
		if i+1 == len(args) {
			return "", usageErr("option %s needs an argument", opt)
		}
		i++
		return args[i], nil
	}
	for ; i < len(args); i++ {
		a := args[i]
		switch {
		case a == "--":
			cfg.recipients = append(cfg.recipients, args[i+1:]...)
			i = len(args)
		case strings.HasPrefix(a, "--"):
			name, value, hasValue := strings.Cut(a[2:], "=")
			var err error
			if !hasValue && longTakesValue(name) {
				value, err = nextWord("--" + name)
			}
			if err == nil {
				err = cfg.setLong(name, value)
			}
			if err != nil {
				return nil, err
			}
		case len(a) > 1 && a[0] == '-':
			for j := 1; j < len(a); j++ {
				c := a[j]
				if strings.IndexByte(withArg, c) < 0 {
					if err := cfg.setFlag(c); err != nil {
						return nil, err
					}
					continue
				}
				if c == 'q' {
					return nil, usageErr("-q: there is no queue to run: mail is sent at once or not at all")
				}
				value, err := a[j+1:], error(nil)
				if value == "" {
					value, err = nextWord("-" + string(c))
				}
				if err == nil {
					err = cfg.setOption(c, value)
				}
				if err != nil {
					return nil, err
				}
				break
			}
		default:
			for _, op := range args[i:] {
				if strings.HasPrefix(op, "-") {
					return nil, usageErr("%q after the recipient %q: options end at the first recipient, so it is neither an option nor a recipient (a recipient that starts with \"-\" goes after --)", op, a)
				}
			}
			cfg.recipients = append(cfg.recipients, args[i:]...)
			i = len(args)
		}
	}
	if cfg.help && len(args) > 1 {
		return nil, usageErr("--help is honoured alone: given with other arguments it would keep the message from being sent")
	}
	return cfg, nil
}

// checkTLS refuses STARTTLS without the name to check the server's
// certificate against: a usage error when --starttls asked for it, a
// configuration error when the file or the environment did.
func (cfg *config) checkTLS() error {
	if cfg.startTLS == mxrelay.StartTLSNever || cfg.tlsName != "" {
		return nil
	}
	const why = "the name the SMTP server's certificate is checked against"
	if from := cfg.origin("starttls"); from != "--starttls" {
		return fmt.Errorf("%w: %s asks for STARTTLS without tls-server-name (or %s), %s", errConfig, from, envTLSServerName, why)
	}
	return usageErr("--starttls needs --tls-server-name, %s", why)
}

// origin says where the setting name was set: its option, unless the
// configuration file or the environment set it.
func (cfg *config) origin(name string) string {
	return firstOf(cfg.from[name], "--"+name)
}

// once sets *dst to value, refusing a second value for the option.
func once(dst *string, name, value string) error {
	if *dst != "" {
		return givenTwice(name)
	}
	if value == "" {
		return usageErr("--%s needs a value", name)
	}
	*dst = value
	return nil
}

// givenTwice is the error of an option that may be given once only.
func givenTwice(name string) error {
	return usageErr("--%s given twice: it may be given once only, so that an argument appended to the command line cannot change it", name)
}

// given reports whether the command line gave the option for one of the
// settings of the configuration file, and its value.
func (cfg *config) given(name string) (bool, string) {
	switch name {
	case "url":
		return cfg.url != "", cfg.url
	case "api-key-file":
		return cfg.keyFile != "", cfg.keyFile
	case "starttls":
		for mode, v := range startTLSModes {
			if cfg.startTLSSet && v == cfg.startTLS {
				return true, mode
			}
		}
		return false, ""
	case "tls-server-name":
		return cfg.tlsName != "", cfg.tlsName
	case "domain":
		return cfg.domain != "", cfg.domain
	}
	return false, ""
}

// startTLSModes are the values of --starttls.
var startTLSModes = map[string]mxrelay.StartTLS{
	"never":         mxrelay.StartTLSNever,
	"opportunistic": mxrelay.StartTLSOpportunistic,
	"required":      mxrelay.StartTLSRequired,
}

func (cfg *config) setFlag(c byte) error {
	switch {
	case c == 't':
		cfg.extract = true
	case c == 'i':
		cfg.ignoreDots = true
	case c == 'v':
		cfg.verbose = true
	case strings.IndexByte(ignoredFlags, c) >= 0:
		cfg.ignored = append(cfg.ignored, "-"+string(c))
	default:
		return usageErr("unknown option -%c", c)
	}
	return nil
}

func (cfg *config) setOption(c byte, value string) error {
	switch c {
	case 'f', 'r':
		cfg.sender, cfg.senderSet = value, true
	case 'F':
		cfg.fullName = value
	case 'o':
		if value == "i" {
			cfg.ignoreDots = true
		} else {
			cfg.ignored = append(cfg.ignored, "-o"+value)
		}
	case 'b':
		if value != "m" {
			return usageErr("-b%s: only -bm (read a message and deliver it) is supported", value)
		}
	default: // B C d e h L M N O p R V X
		cfg.ignored = append(cfg.ignored, "-"+string(c)+value)
	}
	return nil
}

func longTakesValue(name string) bool {
	switch name {
	case "help":
		return false
	}
	return true
}

func (cfg *config) setLong(name, value string) error {
	switch name {
	case "url":
		return once(&cfg.url, name, value)
	case "api-key-file":
		return once(&cfg.keyFile, name, value)
	case "api-key", "key":
		return usageErr("--%s: the API key is never taken from the command line, where other users can read it: set %s, or %s to a file holding it",
			name, mxrelay.EnvAPIKey, mxrelay.EnvAPIKeyFile)
	case "helo":
		cfg.helo = value
	case "starttls":
		mode, ok := startTLSModes[value]
		switch {
		case cfg.startTLSSet:
			return givenTwice(name)
		case !ok:
			return usageErr("--starttls %q: want never, opportunistic or required", value)
		}
		cfg.startTLS, cfg.startTLSSet = mode, true
	case "tls-server-name":
		return once(&cfg.tlsName, name, value)
	case "timeout":
		d, err := time.ParseDuration(value)
		if err != nil || d <= 0 {
			return usageErr("--timeout %q: want a positive duration such as 30s or 2m", value)
		}
		cfg.timeout = d
	case "retries":
		n, err := strconv.Atoi(value)
		if err != nil || n < 0 {
			return usageErr("--retries %q: want a number, 0 or more", value)
		}
		cfg.retries = n
	case "domain":
		return once(&cfg.domain, name, value)
	case "help":
		cfg.help = true
	default:
		return usageErr("unknown option --%s", name)
	}
	return nil
}

const usage = `usage: mxrelay-sendmail [-t] [-i] [-f sender] [-F full name] [sendmail options] [--] [recipient ...]

Reads a message on standard input and sends it through an mxrelay relay.

  -t              also send to the addresses in the To, Cc and Bcc headers
                  (Resent-To, Resent-Cc, Resent-Bcc in a resent message)
  -i, -oi         a line holding only "." does not end the message
  -f, -r sender   envelope sender, a full address (default: the From header's address, else user@domain)
  -F name         full name for a From header added to a message without one
  -v              report the delivery, and log the SMTP dialogue, on standard error

  --url URL              relay URL (default: $MXRELAY_URL)
  --api-key-file FILE    file holding the API key (default: $MXRELAY_API_KEY, then $MXRELAY_API_KEY_FILE)
  --starttls MODE        never, opportunistic or required (default: $MXRELAY_STARTTLS, else never)
  --tls-server-name NAME the SMTP server's name in its certificate (default: $MXRELAY_TLS_SERVER_NAME)
  --helo NAME            the EHLO name (default: localhost)
  --domain DOMAIN        qualifies bare user names (default: $MXRELAY_DOMAIN, else the host name)
  --timeout DURATION     give up after this long, even waiting for the reply to the end of data (default: 2m)
  --retries N            retries after a temporary failure (default: 3)

Options end at the first recipient (or at --); --url, --api-key-file,
--tls-server-name, --starttls and --domain may be given once, and may not
contradict their environment variables. Settings in
/etc/mxrelay/sendmail.conf (url, api-key-file, starttls, tls-server-name,
domain) cannot be changed by options or the environment. Once the
administrator has configured the relay (url in that file, or $MXRELAY_URL),
those five come from the file or the environment only: an option for one
must repeat what they say. --help goes alone.

SMTP AUTH with the upstream: $MXRELAY_SMTP_USERNAME and $MXRELAY_SMTP_PASSWORD,
under --starttls (or with $MXRELAY_SMTP_PASSWORD_IN_CLEAR=yes).
Accepted and ignored: -B -C -d -e -h -L -M -N -O -o<x> -p -R -V -X (with their argument), -c -G -m -n -s -U -x, -bm.
`
