// Package interop holds what tests against software we did not write
// (websockify, git send-email, PHP, Postfix) share.
package interop

import (
	"os"
	"testing"
)

// Skip skips a test that needs software that is not installed, unless
// MXRELAY_REQUIRE_INTEROP=1 (as .ci/run sets), where it fails instead.
func Skip(t testing.TB, why string) {
	t.Helper()
	if os.Getenv("MXRELAY_REQUIRE_INTEROP") == "1" {
		t.Fatal(why)
	}
	t.Skip(why)
}
