// Package spoolcheck holds the checks that the spool's tests share, at the
// store's level (internal/spool) and at the Client's (test/): what a run
// of a process killed at random moments must leave (Check, which the
// PostgreSQL queue's test across processes applies too), the files a
// process keeps open, and the result records a spool directory holds. It
// imports neither the root package nor the spool, so that the tests of
// both can use it.
package spoolcheck

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
)

// Result is what a spool's record says of an email.
type Result struct {
	Delivered, MaybeDelivered bool
	Error                     string
}

// Run is what a crash test saw: the emails submitted (Tried), those the
// spool accepted and those refused on purpose, as the process reported
// them before it was killed; the records of each (Results) and the copies
// of each in the mailbox (InBox), after the last life.
type Run struct {
	Tried, Accepted, Refused map[string]bool
	Results                  map[string][]Result
	InBox                    map[string]int
	RetryUnknown             bool
}

// Counts are a Run's emails by what became of them.
type Counts struct{ Delivered, Failed, Unknown, Dups int }

// Check asserts the accounting rule on r: an email accepted has exactly
// one result (one not reported accepted may have been killed while it was
// made whole: then it has none and was never sent); delivered ones are
// in the mailbox, failed ones are not; one in the mailbox twice has
// MaybeDelivered, and only with RetryUnknown; an email refused or never
// accepted is never sent; nothing is in the mailbox or the records that
// was not submitted.
func Check(t testing.TB, r Run) Counts {
	t.Helper()
	var n Counts
	for id := range r.Tried {
		rs := r.Results[id]
		if r.Refused[id] || !r.Accepted[id] && len(rs) == 0 {
			// Refused, or killed while it was accepted, before the email
			// was whole.
			assert.Zero(t, r.InBox[id], "%s: never accepted, yet sent", id)
			assert.Empty(t, rs, "%s: never accepted, yet a result", id)
			continue
		}
		if !assert.Len(t, rs, 1, "%s: one result", id) {
			continue
		}
		res := rs[0]
		switch {
		case res.Delivered:
			n.Delivered++
			assert.GreaterOrEqual(t, r.InBox[id], 1, "%s: delivered, not in the mailbox", id)
		case res.MaybeDelivered:
			n.Unknown++
		default:
			n.Failed++
			assert.Zero(t, r.InBox[id], "%s: failed (%s), yet in the mailbox", id, res.Error)
		}
		if r.InBox[id] > 1 {
			n.Dups++
			assert.True(t, res.MaybeDelivered, "%s: in the mailbox %d times without MaybeDelivered", id, r.InBox[id])
			assert.True(t, r.RetryUnknown, "%s: sent twice without RetryUnknown", id)
		}
	}
	for id := range r.InBox {
		assert.True(t, r.Tried[id], "%s: in the mailbox, never submitted", id)
	}
	for id := range r.Results {
		assert.True(t, r.Tried[id], "%s: a result for an email never submitted", id)
	}
	return n
}

// OpenIn lists this process's open file descriptors on files under dir.
// It skips t where /proc/self/fd cannot tell.
func OpenIn(t testing.TB, dir string) []string {
	t.Helper()
	fds, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skip("no /proc/self/fd")
	}
	var out []string
	for _, fd := range fds {
		target, err := os.Readlink(filepath.Join("/proc/self/fd", fd.Name()))
		if err == nil && strings.HasPrefix(target, dir+string(filepath.Separator)) {
			out = append(out, target)
		}
	}
	return out
}
