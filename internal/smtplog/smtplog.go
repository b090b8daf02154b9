// Package smtplog logs the SMTP dialogue that crosses a net.Conn at debug
// level, without secrets: AUTH payloads and the server's challenges are
// masked, message bodies are summarised by their size, and after STARTTLS
// nothing of the encrypted stream is logged.
package smtplog

import (
	"bytes"
	"context"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"sync"
)

const maxLogged = 512 // characters of one line that reach the log

type mode int

const (
	modeCommand mode = iota
	modeAuth         // between AUTH and its final reply: client lines are secret
	modeBody         // between 354 and the "." line
	modeBDAT         // inside a BDAT chunk
	modeTLS          // after STARTTLS: ciphertext
)

// Wrap returns c itself when log does not log at debug level, and otherwise
// a net.Conn that logs each line it carries. The attrs are added to every
// record (for example the session ID).
func Wrap(c net.Conn, log *slog.Logger, attrs ...any) net.Conn {
	if log == nil || !log.Enabled(context.Background(), slog.LevelDebug) {
		return c
	}
	return &conn{Conn: c, log: log.With(attrs...), awaiting: []string{"greeting"}}
}

type conn struct {
	net.Conn
	log *slog.Logger

	mu          sync.Mutex
	mode        mode
	awaiting    []string // verbs of the commands whose replies are due, in order (pipelining)
	bodyBytes   int64
	bdatLeft    int64
	out, in     []byte // partial lines
	outOverflow bool
	inOverflow  bool
}

func (c *conn) Write(p []byte) (int, error) {
	// Logged before the write: with pipelining the replies can come back
	// before Write returns, and they must find their commands in the log.
	c.mu.Lock()
	c.wrote(p)
	c.mu.Unlock()
	return c.Conn.Write(p)
}

func (c *conn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.mu.Lock()
	c.read(p[:n])
	c.mu.Unlock()
	return n, err
}

// appendLine adds p to a partial line, keeping at most maxLogged bytes.
func appendLine(line []byte, p []byte, overflow *bool) []byte {
	room := maxLogged - len(line)
	if len(p) > room {
		*overflow = true
		p = p[:max(room, 0)]
	}
	return append(line, p...)
}

func (c *conn) wrote(p []byte) {
	for len(p) > 0 {
		switch c.mode {
		case modeTLS:
			return
		case modeBDAT:
			k := min(int64(len(p)), c.bdatLeft)
			c.bdatLeft -= k
			p = p[k:]
			if c.bdatLeft == 0 {
				c.mode = modeCommand
			}
			continue
		}
		i := bytes.IndexByte(p, '\n')
		if i < 0 {
			c.out = appendLine(c.out, p, &c.outOverflow)
			if c.mode == modeBody {
				c.bodyBytes += int64(len(p))
			}
			return
		}
		c.out = appendLine(c.out, p[:i+1], &c.outOverflow)
		if c.mode == modeBody {
			c.bodyBytes += int64(i + 1)
		}
		c.clientLine(strings.TrimRight(string(c.out), "\r\n"))
		c.out, c.outOverflow = c.out[:0], false
		p = p[i+1:]
	}
}

func (c *conn) clientLine(line string) {
	switch c.mode {
	case modeBody:
		if line == "." {
			c.log.Debug("smtp", "dir", "C", "line", "<message body, "+strconv.FormatInt(c.bodyBytes-3, 10)+" bytes>")
			c.log.Debug("smtp", "dir", "C", "line", ".")
			c.mode = modeCommand
			c.awaiting = append(c.awaiting, ".")
		}
		return
	case modeAuth:
		c.log.Debug("smtp", "dir", "C", "line", "****")
		return
	}
	verb, rest, _ := strings.Cut(line, " ")
	verb = strings.ToUpper(verb)
	if verb != "AUTH" && len(c.awaiting) < 4096 {
		c.awaiting = append(c.awaiting, verb)
	}
	switch verb {
	case "AUTH":
		mech, initial, _ := strings.Cut(rest, " ")
		if initial != "" {
			mech += " ****"
		}
		c.log.Debug("smtp", "dir", "C", "line", "AUTH "+mech)
		c.mode = modeAuth
		c.awaiting = append(c.awaiting, "AUTH")
		return
	case "BDAT":
		f := strings.Fields(rest)
		if len(f) > 0 {
			if n, err := strconv.ParseInt(f[0], 10, 64); err == nil && n > 0 {
				c.log.Debug("smtp", "dir", "C", "line", line)
				c.log.Debug("smtp", "dir", "C", "line", "<chunk, "+f[0]+" bytes>")
				c.mode, c.bdatLeft = modeBDAT, n
				return
			}
		}
	}
	c.logLine("C", line, c.outOverflow)
}

func (c *conn) logLine(dir, line string, overflow bool) {
	if overflow {
		line += "…"
	}
	c.log.Debug("smtp", "dir", dir, "line", line)
}

func (c *conn) read(p []byte) {
	for len(p) > 0 && c.mode != modeTLS {
		i := bytes.IndexByte(p, '\n')
		if i < 0 {
			c.in = appendLine(c.in, p, &c.inOverflow)
			return
		}
		c.in = appendLine(c.in, p[:i+1], &c.inOverflow)
		c.serverLine(strings.TrimRight(string(c.in), "\r\n"))
		c.in, c.inOverflow = c.in[:0], false
		p = p[i+1:]
	}
}

func (c *conn) serverLine(line string) {
	last := len(line) < 4 || line[3] != '-'
	code, _ := strconv.Atoi(line[:min(3, len(line))])
	if c.mode == modeAuth && code == 334 {
		c.log.Debug("smtp", "dir", "S", "line", "334 ****")
		return
	}
	c.logLine("S", line, c.inOverflow)
	if !last {
		return
	}
	if c.mode == modeAuth {
		c.mode = modeCommand
	}
	if len(c.awaiting) == 0 {
		return // unsolicited
	}
	verb := c.awaiting[0]
	c.awaiting = c.awaiting[1:]
	switch {
	case verb == "DATA" && code == 354:
		c.mode, c.bodyBytes = modeBody, 0
	case verb == "STARTTLS" && code == 220:
		c.mode = modeTLS
		c.log.Debug("smtp", "dir", "-", "line", "<TLS started: the rest of the session is encrypted and not logged>")
	}
}
