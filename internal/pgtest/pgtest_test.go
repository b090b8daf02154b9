package pgtest

import (
	"net"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(Main(m)) }

// dial reports whether something accepts TCP connections on the port.
func dial(port int) error {
	c, err := net.DialTimeout("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), 5*time.Second)
	if err == nil {
		c.Close()
	}
	return err
}

func TestSharedClusterListensOnLoopback(t *testing.T) {
	c := Shared(t)
	t.Logf("cluster started in %v", c.StartTime)
	require.NoError(t, dial(c.Port()))
	require.Same(t, c, Shared(t), "one cluster per test binary")
}

func TestStopAndStartAgain(t *testing.T) {
	c := New(t)
	require.NoError(t, c.Stop())
	require.Error(t, dial(c.Port()), "stopped")
	require.NoError(t, c.Start())
	require.NoError(t, dial(c.Port()), "started again on the same port")
}
