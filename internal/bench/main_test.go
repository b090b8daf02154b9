package bench

import (
	"testing"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	ServeIfChild() // StartEnv runs this test binary for the servers
	goleak.VerifyTestMain(m)
}
