package mxrelay_test

import (
	"testing"

	"go.uber.org/goleak"

	"github.com/mxrelay/mxrelay/internal/pgtest"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(pgtest.Main(m))
}
