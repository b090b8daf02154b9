package main

import (
	"regexp"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestObservability(t *testing.T) {
	var out strings.Builder
	require.NoError(t, run(&out))
	got := out.String()
	// An email sent while the last session still runs joins it: one to
	// three sessions, as many as the sessionCompleted events.
	m := regexp.MustCompile(`/debug/vars: 3 emails delivered, (\d) sessions; events .*sessionCompleted:(\d)`).FindStringSubmatch(got)
	require.NotNil(t, m, got)
	assert.Equal(t, m[1], m[2], got)
	assert.Contains(t, got, "emailProcessed:3", got)
}
