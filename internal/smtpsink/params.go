package smtpsink

import (
	"bytes"
	"strconv"
	"strings"
)

// cutPath parses `FROM:<path> params` (prefix "FROM:") or `TO:<path>
// params`, case-insensitively and allowing spaces after the colon, and
// returns the parameters. The null path <> is allowed only when null is.
func cutPath(arg []byte, prefix string, null bool) ([]byte, bool) {
	if len(arg) < len(prefix) || !bytes.EqualFold(arg[:len(prefix)], []byte(prefix)) {
		return nil, false
	}
	rest := bytes.TrimLeft(arg[len(prefix):], " ")
	if len(rest) == 0 || rest[0] != '<' {
		return nil, false
	}
	end := bytes.IndexByte(rest, '>')
	if end < 0 {
		return nil, false
	}
	path := rest[1:end]
	if len(path) == 0 && !null {
		return nil, false
	}
	for _, c := range path {
		if c <= ' ' || c == 0x7f || c == '<' {
			return nil, false
		}
	}
	params := rest[end+1:]
	if len(params) > 0 && params[0] != ' ' {
		return nil, false
	}
	return params, true
}

// param is one ESMTP parameter, KEY or KEY=value.
type param struct {
	key, value string
	hasValue   bool
}

// splitParams splits a parameter list, upper-casing the keys. It reports a
// reply when a key appears twice or one is empty.
func splitParams(b []byte) ([]param, string) {
	var ps []param
	for _, f := range bytes.Fields(b) {
		k, v, has := bytes.Cut(f, []byte("="))
		p := param{key: strings.ToUpper(string(k)), value: string(v), hasValue: has}
		if p.key == "" {
			return nil, "501 5.5.4 Empty parameter name"
		}
		for _, q := range ps {
			if q.key == p.key {
				return nil, "501 5.5.4 Duplicate " + p.key + " parameter"
			}
		}
		ps = append(ps, p)
	}
	return ps, ""
}

// rule is what a server accepts of one parameter: off says whether its
// extension is switched off, valid checks its value.
type rule struct {
	off   func(*Options) bool
	valid func(param) bool
}

func neverOff(*Options) bool { return false }
func noValue(p param) bool   { return !p.hasValue }
func oneOf(vs ...string) func(param) bool {
	return func(p param) bool {
		for _, v := range vs {
			if strings.EqualFold(p.value, v) {
				return true
			}
		}
		return false
	}
}

func dsnOff(o *Options) bool { return o.DisableDSN }

var mailRules = map[string]rule{
	"SIZE":       {func(o *Options) bool { return o.DisableSize }, func(p param) bool { return isDigits(p.value) && len(p.value) <= 18 }},
	"BODY":       {func(o *Options) bool { return o.Disable8BitMIME }, oneOf("7BIT", "8BITMIME")},
	"SMTPUTF8":   {func(o *Options) bool { return o.DisableSMTPUTF8 }, noValue},
	"RET":        {dsnOff, oneOf("FULL", "HDRS")},
	"ENVID":      {dsnOff, func(p param) bool { return len(p.value) <= 100 && isXtext(p.value) }},
	"REQUIRETLS": {neverOff, noValue},
	"AUTH":       {neverOff, func(p param) bool { return p.value == "<>" || isXtext(p.value) }},
}

var rcptRules = map[string]rule{
	"NOTIFY": {dsnOff, func(p param) bool { return validNotify(p.value) }},
	"ORCPT": {dsnOff, func(p param) bool {
		typ, addr, found := strings.Cut(p.value, ";")
		return found && typ != "" && addr != "" && len(addr) <= 500 && isAtom(typ) && !strings.ContainsAny(addr, " \t\r\n")
	}},
}

// checkParams checks a parameter list against rules and returns the
// parameters, or a reply refusing the command: 555 for a parameter that is
// unknown, of an extension switched off, or given after HELO; 501 for a
// bad value or a repeated parameter.
func (se *session) checkParams(b []byte, rules map[string]rule) ([]param, string) {
	ps, msg := splitParams(b)
	if msg != "" {
		return nil, msg
	}
	if len(ps) > 0 && !se.esmtp {
		return nil, "555 5.5.4 Parameters need EHLO"
	}
	for _, p := range ps {
		r, ok := rules[p.key]
		if !ok || r.off(&se.s.opts) {
			return nil, "555 5.5.4 Unsupported parameter " + p.key
		}
		if !r.valid(p) {
			return nil, "501 5.5.4 Bad " + p.key + " parameter value"
		}
	}
	return ps, ""
}

// mailParams checks MAIL's parameters and returns the declared SIZE, or a
// reply refusing the command.
func (se *session) mailParams(b []byte) (int64, string) {
	ps, msg := se.checkParams(b, mailRules)
	var size int64
	for _, p := range ps {
		if p.key == "SIZE" {
			size, _ = strconv.ParseInt(p.value, 10, 64)
		}
	}
	return size, msg
}

// rcptParams checks RCPT's parameters and returns a reply refusing the
// command, or "".
func (se *session) rcptParams(b []byte) string {
	_, msg := se.checkParams(b, rcptRules)
	return msg
}

// validNotify: NEVER alone, or a list of SUCCESS, FAILURE and DELAY
// without repetition (RFC 3461 §4.1).
func validNotify(v string) bool {
	if strings.EqualFold(v, "NEVER") {
		return true
	}
	seen := map[string]bool{}
	for _, w := range strings.Split(strings.ToUpper(v), ",") {
		if w != "SUCCESS" && w != "FAILURE" && w != "DELAY" || seen[w] {
			return false
		}
		seen[w] = true
	}
	return true
}

func isDigits(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}

// isXtext reports whether s is xtext (RFC 3461 §4): printable ASCII but
// "+" and "=", and "+HH" with upper-case hex digits.
func isXtext(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c == '+':
			if i+2 >= len(s) || !isHexUpper(s[i+1]) || !isHexUpper(s[i+2]) {
				return false
			}
			i += 2
		case c < '!' || c > '~' || c == '=':
			return false
		}
	}
	return true
}

func isHexUpper(c byte) bool { return c >= '0' && c <= '9' || c >= 'A' && c <= 'F' }

func isAtom(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-') {
			return false
		}
	}
	return true
}
