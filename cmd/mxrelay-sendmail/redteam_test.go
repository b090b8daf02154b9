package main

// Red-team tests for issue 15 ("Safe as /usr/sbin/sendmail"). Each test
// below that is not marked "held" failed on the code it was written
// against; each asserts what a careful administrator would expect.

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
)

// TestRedTeamObsoleteFromFieldFirstIsDropped: a message whose first line
// is "From : alice@example.com" (white space before the colon: the
// obsolete syntax the command says it reads, as it does for "Bcc :") is
// taken for an mbox "From " line and dropped. The author's From header is
// lost, a From of the local user is made up, and the envelope sender
// becomes tester@host.test instead of alice@example.com. An mbox From_
// line has no colon after "From"; a field does.
func TestRedTeamObsoleteFromFieldFirstIsDropped(t *testing.T) {
	in := "From : Alice <alice@example.com>\nTo: to@example.com\nSubject: s\n\nbody\n"
	m := sendOneT(t, in)
	t.Logf("MAIL FROM %q, data %q", m.From, m.Data)
	assert.Equal(t, "alice@example.com", m.From, "the envelope sender is the From field's address")
	assert.True(t, strings.HasPrefix(string(m.Data), "From : Alice <alice@example.com>\r\n"), "the author's From field is kept")
	assert.NotContains(t, string(m.Data), "tester@host.test", "no From made up")
}
