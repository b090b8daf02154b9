package main

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestOTel(t *testing.T) {
	var out strings.Builder
	require.NoError(t, runOTel(&out))
	got := out.String()
	assert.Equal(t, 3, strings.Count(got, "span mxrelay.email "), got)
	assert.Equal(t, 3, strings.Count(got, "span mxrelay.email links=1 "), "each email linked to its session: %s", got)
	assert.Equal(t, 3, strings.Count(got, "span mxrelay.session links=0 status=Unset "), got)
	assert.Contains(t, got, "status=Error mxrelay.email.id=", got)
	assert.Contains(t, got, "metric mxrelay.emails.delivered 2{mxrelay.email.priority=normal}", got)
	assert.Contains(t, got, "metric mxrelay.emails.failed 1{error.type=550 mxrelay.email.outcome=failed mxrelay.email.priority=normal}", got)
	assert.Contains(t, got, "metric mxrelay.email.send.duration count=1{error.type=550 mxrelay.email.priority=normal} count=2{mxrelay.email.priority=normal}", got)
	assert.Contains(t, got, "metric mxrelay.queue.depth 0{mxrelay.email.priority=critical}", got)
}
