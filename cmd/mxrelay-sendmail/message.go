package main

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/mail"
	"slices"
	"strings"
	"unicode/utf8"
)

// maxHeader bounds the header section, which is held in memory (the body is
// streamed).
const maxHeader = 1 << 20

// errData is wrapped by errors about a message that cannot be sent as it is.
var errData = errors.New("bad message")

// lineReader splits the input into lines ended by LF or CRLF, handing out
// pieces of at most a buffer's length so that a long line is never held
// whole.
type lineReader struct {
	br      *bufio.Reader
	dotEnds bool  // a line holding only "." ends the input (no -i)
	midLine bool  // the last piece did not end its line
	done    bool  //
	err     error // the input's read error, other than io.EOF
}

func newLineReader(r io.Reader, dotEnds bool) *lineReader {
	return &lineReader{br: bufio.NewReaderSize(r, 64<<10), dotEnds: dotEnds}
}

// next returns the next piece of a line, without its line end, and whether
// it ends the line; ok is false at the end of the input: its end, a read
// error (in l.err) or, without -i, a line holding only ".". The piece is
// valid until the next call. A last line without a line end ends there.
func (l *lineReader) next() (piece []byte, eol, ok bool) {
	if l.done {
		return nil, false, false
	}
	line, err := l.br.ReadSlice('\n')
	switch {
	case err == nil:
		line = bytes.TrimSuffix(line[:len(line)-1], []byte("\r"))
	case errors.Is(err, bufio.ErrBufferFull):
		// A CR at the end of a full buffer may begin a CRLF: keep it for
		// the next piece.
		if line[len(line)-1] == '\r' {
			_ = l.br.UnreadByte()
			line = line[:len(line)-1]
		}
		l.midLine = true
		return line, false, true
	default:
		l.done = true
		if err != io.EOF {
			l.err = err
			return nil, false, false
		}
		if len(line) == 0 {
			return nil, false, false
		}
		line = bytes.TrimSuffix(line, []byte("\r"))
	}
	if l.dotEnds && !l.midLine && string(line) == "." {
		l.done = true
		return nil, false, false
	}
	l.midLine = false
	return line, true, true
}

// bodyReader reads the rest of the input, every line ended with CRLF.
type bodyReader struct {
	lr    *lineReader
	buf   []byte
	store []byte
	// endedAt is the line that ended the header early, when one did: up
	// to the first empty line, a Bcc or Resent-Bcc field is then an
	// error, since it would go to every recipient as body text.
	endedAt string
}

func (b *bodyReader) Read(p []byte) (int, error) {
	for len(b.buf) == 0 {
		lineStart := !b.lr.midLine
		piece, eol, ok := b.lr.next()
		if !ok {
			if b.lr.err != nil {
				return 0, b.lr.err
			}
			return 0, io.EOF
		}
		if b.endedAt != "" && lineStart {
			switch name := fieldName(string(piece)); {
			case len(piece) == 0:
				b.endedAt = "" // the empty line: what follows is text
			case isBlind(name):
				b.lr.err = fmt.Errorf("%w: a %s field after the line %.60q, which is not a header field and so ended the header: it would be sent to every recipient as text", errData, name, b.endedAt)
				b.lr.done = true
				return 0, b.lr.err
			}
		}
		b.store = append(b.store[:0], piece...)
		if eol {
			b.store = append(b.store, '\r', '\n')
		}
		b.buf = b.store
	}
	n := copy(p, b.buf)
	b.buf = b.buf[n:]
	return n, nil
}

// field is one header field as it came: its name and its lines (the first,
// then any continuation lines), without line ends.
type field struct {
	name  string
	lines []string
}

// value is the field's body, unfolded.
func (f field) value() string {
	_, v, _ := strings.Cut(strings.Join(f.lines, ""), ":")
	return v
}

// message is a message read from the input: its header fields, held, and
// its body, streamed.
type message struct {
	fields []field
	body   io.Reader
	lr     *lineReader
}

// readMessage reads the header section of the message on r and prepares
// its body for reading. A leading mbox "From " line is dropped. When a line
// that is not a header field comes before any empty line, the body starts
// there (sendmail accepts a message without a header), and a Bcc or
// Resent-Bcc field after it but before the first empty line makes reading
// the body fail (errData) rather than send the field as text.
func readMessage(r io.Reader, dotEnds bool) (*message, error) {
	lr := newLineReader(r, dotEnds)
	m := &message{lr: lr, body: &bodyReader{lr: lr}}
	var cur []byte
	size := 0
	first := true
	for {
		piece, eol, ok := lr.next()
		if !ok {
			return m, lr.err
		}
		if size += len(piece); size > maxHeader {
			return nil, fmt.Errorf("%w: the header section is over %d bytes", errData, maxHeader)
		}
		cur = append(cur, piece...)
		if !eol {
			continue
		}
		line := string(cur)
		cur = cur[:0]
		if first && isMboxFrom(line) {
			first = false
			continue
		}
		first = false
		switch {
		case line == "":
			return m, nil
		case (line[0] == ' ' || line[0] == '\t') && len(m.fields) > 0:
			last := &m.fields[len(m.fields)-1]
			last.lines = append(last.lines, line)
		case fieldName(line) != "":
			m.fields = append(m.fields, field{name: fieldName(line), lines: []string{line}})
		default:
			m.body = io.MultiReader(strings.NewReader(line+"\r\n"), &bodyReader{lr: lr, endedAt: line})
			return m, nil
		}
	}
}

// isMboxFrom reports whether line is an mbox "From " line ("From " and an
// address and a date), not a From field written with white space before
// its colon ("From : alice@example.com", RFC 5322's obsolete syntax).
func isMboxFrom(line string) bool {
	rest, ok := strings.CutPrefix(line, "From ")
	return ok && !strings.HasPrefix(strings.TrimLeft(rest, " \t"), ":")
}

// fieldName returns the name of the header field that line starts, or "":
// a name of printable ASCII other than ':', then the colon, white space
// allowed before it (RFC 5322 §4.5.3's obsolete syntax, which Postfix and
// mail readers accept: "Bcc : x" is a Bcc field).
func fieldName(line string) string {
	name, _, ok := strings.Cut(line, ":")
	if !ok {
		return ""
	}
	name = strings.TrimRight(name, " \t")
	if name == "" {
		return ""
	}
	for i := 0; i < len(name); i++ {
		if name[i] <= ' ' || name[i] > '~' {
			return ""
		}
	}
	return name
}

// readErr is the input's read error, once the message was read.
func (m *message) readErr() error { return m.lr.err }

// has reports whether the message has a field with this name.
func (m *message) has(name string) bool {
	return slices.ContainsFunc(m.fields, func(f field) bool { return f.is(name) })
}

// remove removes every field with one of these names, whatever its case,
// continuation lines included.
func (m *message) remove(names ...string) {
	m.fields = slices.DeleteFunc(m.fields, func(f field) bool { return f.is(names...) })
}

// is reports whether the field has one of these names, whatever its case.
func (f field) is(names ...string) bool {
	return slices.ContainsFunc(names, func(n string) bool { return strings.EqualFold(f.name, n) })
}

// resent reports whether the message has a Resent-* field: it is being
// resent, and its Resent-To, Resent-Cc and Resent-Bcc name the recipients
// (RFC 5322 §3.6.6).
func (m *message) resent() bool {
	return slices.ContainsFunc(m.fields, func(f field) bool {
		return len(f.name) > len("Resent-") && strings.EqualFold(f.name[:len("Resent-")], "Resent-")
	})
}

// recipientFields are the names of the fields -t reads recipients from.
func (m *message) recipientFields() []string {
	if m.resent() {
		return []string{"Resent-To", "Resent-Cc", "Resent-Bcc"}
	}
	return []string{"To", "Cc", "Bcc"}
}

// blindFields are removed from every message: they name the recipients
// the others must not see.
var blindFields = []string{"Bcc", "Resent-Bcc"}

// isBlind reports whether a field of this name is one of blindFields.
func isBlind(name string) bool { return field{name: name}.is(blindFields...) }

// add adds a field at the end of the header.
func (m *message) add(name, value string) {
	m.fields = append(m.fields, field{name: name, lines: []string{name + ": " + value}})
}

// addresses returns the addresses in the fields with these names, as
// SMTP paths, bare user names qualified with domain.
func (m *message) addresses(domain string, names ...string) ([]string, error) {
	var out []string
	for _, f := range m.fields {
		if !f.is(names...) {
			continue
		}
		list, err := parseAddresses(f.value(), domain)
		if err != nil {
			return nil, fmt.Errorf("%w: %s header: %w", errData, f.name, err)
		}
		out = append(out, list...)
	}
	return out, nil
}

// reader returns the message as it is sent: the header fields, an empty
// line, the body; every line ended with CRLF.
func (m *message) reader() io.Reader {
	var b strings.Builder
	for _, f := range m.fields {
		for _, l := range f.lines {
			b.WriteString(l + "\r\n")
		}
	}
	b.WriteString("\r\n")
	return io.MultiReader(strings.NewReader(b.String()), m.body)
}

// addressParser parses address lists; a display name in a charset Go does
// not know is left undecoded, since only the addresses matter here.
var addressParser = mail.AddressParser{WordDecoder: &mime.WordDecoder{
	CharsetReader: func(_ string, r io.Reader) (io.Reader, error) { return r, nil },
}}

// parseAddresses returns the addresses of an RFC 5322 address list (groups
// and display names allowed), or of a list of bare user names ("root",
// "alice, bob"), which are qualified with domain, each written as an SMTP
// path (smtpPath).
func parseAddresses(list, domain string) ([]string, error) {
	if strings.TrimSpace(list) == "" {
		return nil, nil
	}
	var addrs []string
	parsed, err := addressParser.ParseList(list)
	for _, a := range parsed {
		addrs = append(addrs, a.Address)
	}
	if err != nil {
		for _, p := range strings.Split(list, ",") {
			p = strings.TrimSpace(p)
			if p == "" {
				continue
			}
			if !isUserName(p) {
				return nil, fmt.Errorf("%q: %w", list, err)
			}
			addrs = append(addrs, p+"@"+domain)
		}
	}
	var out []string
	for _, a := range addrs {
		p, err := smtpPath(a)
		if err != nil {
			return nil, err
		}
		out = append(out, p)
	}
	return out, nil
}

// smtpPath writes an address as net/mail holds it, its local part
// unquoted, as the path of MAIL or RCPT (RFC 5321 §4.1.2): a local part
// that is not a dot-atom is quoted again, so that "alice@evil.example"@
// example.com stays one mailbox at example.com. An address that cannot be
// written so (a control character, an empty local part, a domain that is
// neither a dot-atom nor an address literal) is refused.
func smtpPath(addr string) (string, error) {
	at := strings.LastIndexByte(addr, '@')
	if at < 0 {
		return "", fmt.Errorf("%q is not an address", addr)
	}
	local, domain := addr[:at], addr[at+1:]
	if !isDotAtom(domain) && !isAddressLiteral(domain) {
		return "", fmt.Errorf("%q: the domain %q cannot be written in an SMTP path", addr, domain)
	}
	if isDotAtom(local) {
		return addr, nil
	}
	if local == "" {
		return "", fmt.Errorf("%q has an empty local part", addr)
	}
	var b strings.Builder
	b.WriteByte('"')
	for i := 0; i < len(local); i++ {
		switch c := local[i]; {
		case c < ' ' || c == 0x7f:
			return "", fmt.Errorf("%q: a control character in the local part cannot be written in an SMTP path", addr)
		case c == '"' || c == '\\':
			b.WriteByte('\\')
			b.WriteByte(c)
		default:
			b.WriteByte(c)
		}
	}
	b.WriteString(`"@`)
	b.WriteString(domain)
	return b.String(), nil
}

// isAtext reports whether c is atext (RFC 5322 §3.2.3), UTF-8 octets
// included (RFC 6532).
func isAtext(c byte) bool {
	return c >= 0x80 || c > ' ' && c < 0x7f && strings.IndexByte(`()<>[]:;@\,."`, c) < 0
}

// isDotAtom reports whether s is a dot-atom: atoms joined by single dots.
func isDotAtom(s string) bool {
	if s == "" || s[0] == '.' || s[len(s)-1] == '.' || strings.Contains(s, "..") || !utf8.ValidString(s) {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] != '.' && !isAtext(s[i]) {
			return false
		}
	}
	return true
}

// isAddressLiteral reports whether s is a domain literal of printable
// ASCII without brackets or backslash inside ("[192.0.2.1]").
func isAddressLiteral(s string) bool {
	if len(s) < 3 || s[0] != '[' || s[len(s)-1] != ']' {
		return false
	}
	for i := 1; i < len(s)-1; i++ {
		if c := s[i]; c <= ' ' || c > '~' || c == '[' || c == ']' || c == '\\' {
			return false
		}
	}
	return true
}

// isUserName reports whether s can be a bare user name: atext of RFC 5322
// and dots, ASCII only.
func isUserName(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= 0x80 || s[i] != '.' && !isAtext(s[i]) {
			return false
		}
	}
	return s != ""
}
