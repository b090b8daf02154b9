package mxrelay

import (
	"net"
	"testing"

	"github.com/stretchr/testify/assert"
)

// writeConn accepts every write.
type writeConn struct{ net.Conn }

func (writeConn) Write(p []byte) (int, error) { return len(p), nil }

func TestEndWatchSeesTheTerminatorAcrossWrites(t *testing.T) {
	for _, tc := range []struct {
		name   string
		writes []string
		want   bool
	}{
		{"one write", []string{"body\r\n.\r\n"}, true},
		{"split terminator", []string{"body\r", "\n", ".", "\r\n"}, true},
		{"empty body", []string{"DATA\r\n", ".\r\n"}, true},
		{"dot-stuffed lone dot", []string{"a\r\n..\r\n"}, false},
		{"body without terminator", []string{"line\r\n", "more\r\n"}, false},
		{"terminator then more", []string{"x\r\n.\r\n", "MAIL FROM:<a@b>\r\n"}, false},
		{"short", []string{".\r\n"}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := &endWatch{Conn: writeConn{}, written: func() int64 { return 0 }}
			for _, s := range tc.writes {
				w.Write([]byte(s))
			}
			assert.Equal(t, tc.want, w.endWritten())
		})
	}
}
