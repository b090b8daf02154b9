package main

import (
	"regexp"
	"strconv"
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
	assert.Equal(t, 3, strings.Count(got, "span email "), got)
	assert.Regexp(t, regexp.MustCompile(`email .*reply:250 session.id:s\d+\] err=<nil>`), got)
	// An email sent while the last session still runs joins it: one to
	// three sessions, as many spans as /debug/vars counts.
	m := regexp.MustCompile(`/debug/vars: 3 emails delivered, (\d) sessions`).FindStringSubmatch(got)
	require.NotNil(t, m, got)
	assert.Equal(t, m[1], strconv.Itoa(strings.Count(got, "span smtp.session")), got)
	assert.Regexp(t, `emailProcessed:\d+`, got)
}
