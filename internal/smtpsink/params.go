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

func unsupported(key string) string { return "555 5.5.4 Unsupported parameter " + key }
func badValue(key string) string    { return "501 5.5.4 Bad " + key + " parameter value" }

// mailParams checks MAIL's parameters and returns the declared SIZE, or a
// reply refusing the command.
func (se *session) mailParams(b []byte) (int64, string) {
	ps, msg := splitParams(b)
	if msg != "" {
		return 0, msg
	}
	if len(ps) > 0 && !se.esmtp {
		return 0, "555 5.5.4 Parameters need EHLO"
	}
	o := &se.s.opts
	var size int64
	for _, p := range ps {
		ok := true
		switch p.key {
		case "SIZE":
			if o.DisableSize {
				return 0, unsupported(p.key)
			}
			n, err := strconv.ParseInt(p.value, 10, 64)
			ok = err == nil && n >= 0 && isDigits(p.value)
			size = n
		case "BODY":
			if o.Disable8BitMIME {
				return 0, unsupported(p.key)
			}
			v := strings.ToUpper(p.value)
			ok = v == "7BIT" || v == "8BITMIME"
		case "SMTPUTF8":
			if o.DisableSMTPUTF8 {
				return 0, unsupported(p.key)
			}
			ok = !p.hasValue
		case "RET":
			if o.DisableDSN {
				return 0, unsupported(p.key)
			}
			v := strings.ToUpper(p.value)
			ok = v == "FULL" || v == "HDRS"
		case "ENVID":
			if o.DisableDSN {
				return 0, unsupported(p.key)
			}
			ok = len(p.value) <= 100 && isXtext(p.value)
		case "REQUIRETLS":
			ok = !p.hasValue
		case "AUTH":
			ok = p.value == "<>" || isXtext(p.value)
		default:
			return 0, unsupported(p.key)
		}
		if !ok {
			return 0, badValue(p.key)
		}
	}
	return size, ""
}

// rcptParams checks RCPT's parameters and returns a reply refusing the
// command, or "".
func (se *session) rcptParams(b []byte) string {
	ps, msg := splitParams(b)
	if msg != "" {
		return msg
	}
	if len(ps) > 0 && !se.esmtp {
		return "555 5.5.4 Parameters need EHLO"
	}
	for _, p := range ps {
		ok := true
		switch p.key {
		case "NOTIFY":
			if se.s.opts.DisableDSN {
				return unsupported(p.key)
			}
			ok = validNotify(p.value)
		case "ORCPT":
			if se.s.opts.DisableDSN {
				return unsupported(p.key)
			}
			typ, addr, found := strings.Cut(p.value, ";")
			ok = found && typ != "" && addr != "" && len(addr) <= 500 && isAtom(typ) && !strings.ContainsAny(addr, " \t\r\n")
		default:
			return unsupported(p.key)
		}
		if !ok {
			return badValue(p.key)
		}
	}
	return ""
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
