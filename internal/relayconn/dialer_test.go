package relayconn_test

import (
	"bufio"
	"context"
	"errors"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mxrelay/mxrelay/internal/relayconn"
	"github.com/mxrelay/mxrelay/internal/wire"
	"github.com/mxrelay/mxrelay/relaytest"
)

// stepLog records the steps a Dialer reports.
type stepLog struct {
	mu    sync.Mutex
	steps []relayconn.Step
}

func (l *stepLog) step(s relayconn.Step) {
	l.mu.Lock()
	l.steps = append(l.steps, s)
	l.mu.Unlock()
}

func (l *stepLog) get() []relayconn.Step {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]relayconn.Step(nil), l.steps...)
}

func newDialer(s *relaytest.Server, key string, raw bool, log *stepLog) relayconn.Dialer {
	return relayconn.NewDialer(relayconn.Config{
		URL: s.URL, APIKey: key, Binary: true, RawTunnel: raw,
		DialTimeout: 5 * time.Second, AuthTimeout: 2 * time.Second, ChannelTimeout: 2 * time.Second,
		Step: log.step,
	})
}

// greeted reads the SMTP greeting from st.
func greeted(t *testing.T, st relayconn.Stream) *bufio.Reader {
	t.Helper()
	r := bufio.NewReader(st)
	line, err := r.ReadString('\n')
	require.NoError(t, err)
	require.True(t, strings.HasPrefix(line, "220 "), line)
	return r
}

// Both transports give streams ready for SMTP and report their steps:
// the mxrelay protocol dials and authenticates once and opens a channel
// per stream; a raw tunnel dials per stream and keeps nothing.
func TestDialerSteps(t *testing.T) {
	const (
		connecting     = relayconn.StepConnecting
		connected      = relayconn.StepConnected
		authenticating = relayconn.StepAuthenticating
		authenticated  = relayconn.StepAuthenticated
		opening        = relayconn.StepChannelOpening
	)
	for _, tc := range []struct {
		name string
		raw  bool
		want []relayconn.Step
	}{
		{"mxrelay protocol", false, []relayconn.Step{connecting, connected, authenticating, authenticated, opening, opening}},
		{"raw tunnel", true, []relayconn.Step{connecting, connected, connecting, connected}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := relaytest.NewServer(&relaytest.Options{RawTunnel: tc.raw})
			defer s.Close()
			log := &stepLog{}
			d := newDialer(s, s.APIKey, tc.raw, log)
			defer d.Close()
			for range 2 {
				st, err := d.Open(context.Background())
				require.NoError(t, err)
				assert.True(t, st.Binary())
				greeted(t, st)
				require.NoError(t, st.Close())
			}
			assert.Equal(t, tc.want, log.get())
			assert.Equal(t, !tc.raw, d.Done() != nil, "a connection is kept")
			assert.NoError(t, d.Err())
			d.Close()
			assert.Nil(t, d.Done(), "none kept after Close")
		})
	}
}

// A refused key is an *AuthError on both transports; the protocol's
// connection has ended with it, and is not to be tried again.
func TestDialerRefusedKey(t *testing.T) {
	for _, raw := range []bool{false, true} {
		s := relaytest.NewServer(&relaytest.Options{RawTunnel: raw})
		log := &stepLog{}
		d := newDialer(s, "not-the-key", raw, log)
		_, err := d.Open(context.Background())
		var ae *relayconn.AuthError
		require.ErrorAs(t, err, &ae, "raw %v", raw)
		if !raw {
			<-d.Done()
			assert.Equal(t, wire.RetryNever, relayconn.RetryFor(d.Err()))
			assert.NotContains(t, log.get(), relayconn.StepAuthenticated)
		}
		d.Close()
		s.Close()
	}
}

// A raw tunnel's deadlines work as net.Conn's: a read that outlives its
// deadline fails with os.ErrDeadlineExceeded.
func TestTunnelDeadline(t *testing.T) {
	s := relaytest.NewServer(&relaytest.Options{RawTunnel: true})
	defer s.Close()
	d := newDialer(s, s.APIKey, true, &stepLog{})
	st, err := d.Open(context.Background())
	require.NoError(t, err)
	defer st.Close()
	r := greeted(t, st)
	require.NoError(t, st.SetReadDeadline(time.Now().Add(30*time.Millisecond)))
	_, err = r.ReadByte() // the server waits for a command
	require.ErrorIs(t, err, os.ErrDeadlineExceeded)
}

func TestRetryFor(t *testing.T) {
	for _, tc := range []struct {
		name string
		err  error
		want wire.Retry
	}{
		{"normal close", &relayconn.ClosedError{Code: websocket.StatusNormalClosure}, wire.RetryIfWork},
		{"normal close, wrapped", errors.Join(errors.New("x"), &relayconn.ClosedError{Code: websocket.StatusNormalClosure}), wire.RetryIfWork},
		{"restart", &relayconn.ClosedError{Code: websocket.StatusServiceRestart}, wire.RetryBackoff},
		{"lost", &relayconn.ClosedError{Code: -1}, wire.RetryBackoff},
		{"key refused", &relayconn.AuthError{}, wire.RetryNever},
		{"timeout", relayconn.ErrTimeout, wire.RetryBackoff},
	} {
		t.Run(tc.name, func(t *testing.T) {
			assert.Equal(t, tc.want, relayconn.RetryFor(tc.err))
		})
	}
}
