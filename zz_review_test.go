package mxrelay_test

import (
	"bufio"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mxrelay/mxrelay"
	"github.com/mxrelay/mxrelay/relaytest"
)

// multi-line greeting upstream
func fakeUpstream(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func(c net.Conn) {
				defer c.Close()
				r := bufio.NewReader(c)
				io.WriteString(c, "220-mx.test ESMTP\r\n220 welcome\r\n")
				data := false
				for {
					l, err := r.ReadString('\n')
					if err != nil {
						return
					}
					if data {
						if l == ".\r\n" {
							data = false
							io.WriteString(c, "250 ok queued\r\n")
						}
						continue
					}
					u := strings.ToUpper(l)
					switch {
					case strings.HasPrefix(u, "EHLO"):
						io.WriteString(c, "250-mx.test\r\n250 8BITMIME\r\n")
					case strings.HasPrefix(u, "DATA"):
						data = true
						io.WriteString(c, "354 go\r\n")
					case strings.HasPrefix(u, "QUIT"):
						io.WriteString(c, "221 bye\r\n")
						return
					default:
						io.WriteString(c, "250 ok\r\n")
					}
				}
			}(c)
		}
	}()
	return ln.Addr().String()
}

func TestZZMultilineGreeting(t *testing.T) {
	up := fakeUpstream(t)
	for _, p := range []mxrelay.StartTLS{mxrelay.StartTLSNever, mxrelay.StartTLSOpportunistic} {
		s := newRelay(t, &relaytest.Options{UpstreamAddr: up})
		c := newClient(t, s, &mxrelay.Options{StartTLS: p, MaxReconnectAttempts: 2})
		_, err := c.Send(ctxT(t), mail("x"))
		t.Logf("policy %d: err=%v", p, err)
	}
}

func TestZZStartTLSOverJSON(t *testing.T) {
	serverTLS, pool := selfSigned(t)
	s := newRelay(t, &relaytest.Options{TLSConfig: serverTLS, DisableBinary: true})
	c := newClient(t, s, &mxrelay.Options{StartTLS: mxrelay.StartTLSOpportunistic, TLSConfig: &tls.Config{RootCAs: pool, ServerName: "mx.test"}, MaxReconnectAttempts: 2})
	_, err := c.Send(ctxT(t), mail("x"))
	t.Logf("err=%v", err)
}

// a seekable body whose first Read blocks until released, then fails
type blockBody struct {
	once    sync.Once
	entered chan struct{}
	release chan struct{}
	n       int
}

func (b *blockBody) Read(p []byte) (int, error) {
	b.once.Do(func() { close(b.entered) })
	<-b.release
	p[0] = 0xff // not UTF-8
	return 1, io.EOF
}
func (b *blockBody) Seek(off int64, whence int) (int64, error) {
	if whence == io.SeekEnd {
		return 1, nil
	}
	return off, nil
}

func TestZZCancelLeavesClosedChannel(t *testing.T) {
	s := newRelay(t, &relaytest.Options{DisableBinary: true})
	c := newClient(t, s, nil)
	bb := &blockBody{entered: make(chan struct{}), release: make(chan struct{})}
	hA, err := c.Enqueue(mxrelay.Email{From: "a@example.com", To: []string{"b@example.com"}, Body: bb}, mxrelay.WithPriority(mxrelay.PriorityCritical))
	if err != nil {
		t.Fatal(err)
	}
	hB, err := c.Enqueue(mail("B"), mxrelay.WithRetries(0))
	if err != nil {
		t.Fatal(err)
	}
	<-bb.entered
	hA.Cancel()
	close(bb.release)
	rA, _ := hA.Wait(ctxT(t))
	rB, _ := hB.Wait(ctxT(t))
	t.Logf("A err=%v", rA.Err)
	t.Logf("B err=%v attempts=%d", rB.Err, rB.Attempts)
	if rB.Err != nil {
		t.Errorf("B failed because A was cancelled: %v", rB.Err)
	}
}

func TestZZTimeoutNotCanceled(t *testing.T) {
	s := newRelay(t, nil)
	c := newClient(t, s, &mxrelay.Options{BatchWait: time.Second})
	_, err := c.Send(ctxT(t), mail("t"), mxrelay.WithTimeout(10*time.Millisecond))
	t.Logf("err=%v isCanceled=%v", err, errors.Is(err, mxrelay.ErrCanceled))
	var ee *mxrelay.EmailError
	if errors.As(err, &ee) {
		t.Logf("temporary=%v", ee.Temporary())
	}
}
