// Package test holds the long robustness suites, named by what they
// prove: the cut at every byte (sweep), random faults (chaos,
// accounting), the client against net/smtp (differential), hostile
// relays, upstreams and input, floods, crashes with a spool, processes
// sharing a queue in PostgreSQL (postgres_*: SIGKILLs, a database
// restart, a lease taken over, idempotency keys), and interop with
// software we did not write; and the red team's (redteam_*): hostile
// upstreams that shift, lose or word replies oddly, cuts at every
// command, Close, cancels and the drain at every point, lingering
// sessions, the retry lanes after a restart, a relay's odd data frames,
// the key file. Each runs on the public API, with the helpers of
// internal/testkit; `go test ./test` runs them all.
package test

import (
	"testing"

	"go.uber.org/goleak"

	"github.com/mxrelay/mxrelay/internal/pgtest"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(pgtest.Main(m))
}
