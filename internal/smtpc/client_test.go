package smtpc

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"

	"github.com/mxrelay/mxrelay/internal/fakesmtp"
)

// emptyResp is a SASL mechanism whose answer to the server's challenge is
// empty, as EXTERNAL's or a LOGIN with an empty password's.
type emptyResp struct{}

func (emptyResp) Start() (string, []byte, error) { return "X-EMPTY", nil, nil }
func (emptyResp) Next([]byte) ([]byte, error)    { return []byte{}, nil }

// An empty SASL response is an empty line (RFC 4954 §4): it must be sent,
// not skipped, or both ends wait for each other.
func TestAuthEmptyResponseIsSent(t *testing.T) {
	got := make(chan string, 1)
	nc, _ := fakesmtp.Pipe(t, func(srv *fakesmtp.Conn) {
		srv.Hello("AUTH X-EMPTY")
		srv.Line() // AUTH X-EMPTY
		srv.Say("334 ")
		l, _ := srv.Line()
		got <- l
		srv.Say("235 2.7.0 ok")
		srv.Drain()
	})
	c := startClient(t, nc, Config{})
	var err error
	if within(t, 2*time.Second, "Auth", func() { err = c.Auth(emptyResp{}) }) {
		assert.NoError(t, err)
	}
	c.Close(nil)
	select {
	case l := <-got:
		assert.Equal(t, "", l)
	default:
		t.Error("the server never got the empty response")
	}
}
