package mxrelay

import (
	"strconv"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/emersion/go-smtp"
	"github.com/stretchr/testify/require"

	"github.com/mxrelay/mxrelay/internal/fakesmtp"
	"github.com/mxrelay/mxrelay/internal/smtpc"
)

// engineOffering returns an SMTP engine whose server offered exts in its
// EHLO reply, for building commands; the server is gone once it has.
func engineOffering(tb testing.TB, exts ...string) *smtpc.Client {
	tb.Helper()
	cc, srv := fakesmtp.Pipe(tb, func(c *fakesmtp.Conn) { c.Hello(append(exts, "HELP")...) })
	c := smtpc.New(cc, smtpc.Config{})
	require.NoError(tb, c.Greet())
	require.NoError(tb, c.Hello("localhost"))
	srv.Close()
	cc.Close()
	return c
}

// unXtext undoes RFC 6533's utf-8-addr-xtext and -unitext: \x{HEX} is a rune.
func unXtext(s string) string {
	var b strings.Builder
	for {
		i := strings.Index(s, `\x{`)
		if i < 0 {
			return b.String() + s
		}
		b.WriteString(s[:i])
		hex, rest, _ := strings.Cut(s[i+3:], "}")
		r, _ := strconv.ParseUint(hex, 16, 32)
		b.WriteRune(rune(r))
		s = rest
	}
}

// FuzzCheckAddress: an address checkAddress accepts cannot break out of
// its command. It has no CR, LF, NUL or other control, no space or angle
// bracket outside a leading quoted local part, is valid UTF-8 and at most
// 254 octets; and the MAIL and RCPT commands the engine builds with it
// (SMTPUTF8 and DSN offered, NOTIFY and ORCPT asked for) are each one
// line, whose path, read as a server reads it (a quoted string to its
// closing quote, then up to a space or ">"), is the address, and whose
// parameters are the ones asked for, ORCPT decoding back to the address.
// MAIL, and RCPT without parameters, fit RFC 5321's 512 octets with CRLF
// (DSN's parameters may make RCPT longer).
func FuzzCheckAddress(f *testing.F) {
	for _, s := range []string{"a@example.com", "", "postmaster", "a@b>\r\nRCPT TO:<c@d", "ü@exämple.com", "a b@c", "a@b\x00", strings.Repeat("x", 300) + "@y",
		`"john doe"@example.com`, `"alice@evil.example"@example.com`, `"a>b"@c`, `"a\"b"@c`, `"a"b@c`, `"a`, `"a\`, `"a` + "\r\n" + `"@c`} {
		f.Add(s, true)
		f.Add(s, false)
	}
	engine := engineOffering(f, "SMTPUTF8", "DSN", "8BITMIME", "SIZE")
	f.Fuzz(func(t *testing.T, a string, recipient bool) {
		role := "sender"
		if recipient {
			role = "recipient"
		}
		if err := checkAddress(role, a); err != nil {
			require.ErrorIs(t, err, ErrInvalidEmail)
			return
		}
		require.True(t, utf8.ValidString(a))
		require.LessOrEqual(t, len(a), maxPath-2)
		for _, c := range []byte(a) {
			require.GreaterOrEqual(t, c, byte(' '), "%q", a)
			require.NotEqual(t, byte(0x7f), c, "%q", a)
		}
		_, tail := splitQuoted(a)
		require.False(t, strings.ContainsAny(tail, " <>"), "outside the quotes: %q", a)

		var cmd string
		var want []string
		var err error
		if recipient {
			plain, err := engine.RcptCommand(a, nil)
			require.NoError(t, err)
			require.Equal(t, "RCPT TO:<"+a+">", plain)
			require.LessOrEqual(t, len(plain)+2, 512, "RFC 5321 §4.5.3.1.4")
			cmd, err = engine.RcptCommand(a, &RcptOptions{Notify: []smtp.DSNNotify{smtp.DSNNotifyNever},
				OriginalRecipientType: smtp.DSNAddressTypeUTF8, OriginalRecipient: a})
			require.NoError(t, err)
			want = []string{"RCPT TO:", "NOTIFY=NEVER", "ORCPT=" + string(smtp.DSNAddressTypeUTF8) + ";"}
		} else {
			cmd, err = engine.MailCommand(a, nil, 12345, []string{"b@example.com"})
			require.NoError(t, err)
			require.LessOrEqual(t, len(cmd)+2, 512, "RFC 5321 §4.5.3.1.4")
			want = []string{"MAIL FROM:", "BODY=8BITMIME", "SIZE=12345"}
			if strings.ContainsFunc(a, func(r rune) bool { return r >= utf8.RuneSelf }) {
				want = append(want, "SMTPUTF8")
			}
		}
		require.False(t, strings.ContainsAny(cmd, "\r\n\x00"), "one line: %q", cmd)
		verb, rest, ok := strings.Cut(cmd, "<")
		require.True(t, ok)
		require.Equal(t, want[0], verb)
		path, params := serverPath(rest)
		require.Equal(t, a, path, "the path reads back as the address")
		params, ok = strings.CutPrefix(params, ">")
		require.True(t, ok, "%q", cmd)
		fields := strings.Split(params, " ")[1:] // parameters are separated by SP
		require.Len(t, fields, len(want)-1, "%q", params)
		for i, p := range fields {
			require.True(t, strings.HasPrefix(p, want[i+1]), "%q", p)
		}
		if recipient {
			require.Equal(t, a, unXtext(strings.TrimPrefix(fields[1], want[2])))
		}
	})
}

func TestCheckAddressQuotedLocalPart(t *testing.T) {
	for _, a := range []string{
		`"john doe"@example.com`,
		`"alice@evil.example"@example.com`,
		`"a\"b\\c"@example.com`,
		`"<a>"@example.com`,
		`"jürgen müller"@example.com`,
	} {
		require.NoError(t, checkAddress("recipient", a), a)
		require.NoError(t, checkAddress("sender", a), a)
	}
	for _, a := range []string{
		`"john doe"@example.com x`,
		`"unterminated@example.com`,
		`"no at"example.com`,
		`"a\`,
		`"tab\` + "\t" + `"@example.com`,
		`"cr` + "\r" + `"@example.com`,
		`"lf` + "\n" + `"@example.com`,
		`"del` + "\x7f" + `"@example.com`,
		`"ok"@exa<mple.com`,
		`"ok"@example.com>`,
		`"bad` + "\xff" + `"@example.com`,
	} {
		require.ErrorIs(t, checkAddress("recipient", a), ErrInvalidEmail, "%q", a)
	}
}

// serverPath reads a path from s as a server does: a leading quoted
// string up to its closing quote (a backslash escapes one octet), then up
// to a space or ">". It returns the path and what follows it.
func serverPath(s string) (path, rest string) {
	quoted, tail := splitQuoted(s)
	j := strings.IndexAny(tail, " >")
	if j < 0 {
		return s, ""
	}
	return quoted + tail[:j], tail[j:]
}

// splitQuoted splits the leading quoted string, if any, off s.
func splitQuoted(s string) (quoted, tail string) {
	if !strings.HasPrefix(s, `"`) {
		return "", s
	}
	i := 1
	for ; i < len(s) && s[i] != '"'; i++ {
		if s[i] == '\\' {
			i++
		}
	}
	i = min(i+1, len(s))
	return s[:i], s[i:]
}

// An email's settings come from its fields, the SendOptions over them,
// and the Client's Options for the fields left at zero.
func TestSendConfigResolvesPerEmailSettings(t *testing.T) {
	o := Options{Retries: 3, EmailTimeout: time.Minute}
	for _, tc := range []struct {
		name  string
		email Email
		opts  []SendOption
		want  sendConfig
	}{
		{"zero fields: the Options", Email{}, nil, sendConfig{priority: PriorityNormal, retries: 3, timeout: time.Minute}},
		{"fields", Email{Priority: PriorityHigh, Retries: 5, Timeout: time.Second, Immediate: true}, nil,
			sendConfig{priority: PriorityHigh, retries: 5, timeout: time.Second, immediate: true}},
		{"negative fields: none", Email{Retries: -1, Timeout: -1}, nil, sendConfig{}},
		{"options over fields", Email{Priority: PriorityLow, Retries: 5, Timeout: time.Second},
			[]SendOption{WithPriority(PriorityCritical), WithRetries(1), WithTimeout(time.Hour), Immediate()},
			sendConfig{priority: PriorityCritical, retries: 1, timeout: time.Hour, immediate: true}},
		{"zero in an option: none", Email{Retries: 5, Timeout: time.Second},
			[]SendOption{WithRetries(0), WithTimeout(0)}, sendConfig{}},
		{"negative in an option: none", Email{}, []SendOption{WithRetries(-2), WithTimeout(-time.Second)}, sendConfig{}},
		{"the last option wins", Email{}, []SendOption{WithPriority(PriorityLow), WithPriority(PriorityHigh)},
			sendConfig{priority: PriorityHigh, retries: 3, timeout: time.Minute}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := tc.email
			for _, opt := range tc.opts {
				opt(&e)
			}
			require.Equal(t, tc.want, o.sendConfig(&e))
		})
	}
}
