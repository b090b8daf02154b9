package main

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
)

func TestUsageErrors(t *testing.T) {
	for _, tc := range []struct {
		name string
		args []string
		env  map[string]string
	}{
		{"no command", []string{"-spool", "/x"}, nil},
		{"unknown command", []string{"-spool", "/x", "flush"}, nil},
		{"no store", []string{"list"}, nil},
		{"two stores", []string{"-spool", "/x", "-pg", "host=x", "list"}, nil},
		{"schema with a spool", []string{"-spool", "/x", "-schema", "s", "list"}, nil},
		{"migrate a spool", []string{"-spool", "/x", "migrate"}, nil},
		{"show without an ID", []string{"-spool", "/x", "show"}, nil},
		{"show with two IDs", []string{"-spool", "/x", "show", "a", "b"}, nil},
		{"hold without an ID", []string{"-spool", "/x", "hold"}, nil},
		{"counts with an ID", []string{"-spool", "/x", "counts", "a"}, nil},
		{"-body with -json", []string{"-spool", "/x", "show", "-body", "-json", "a"}, nil},
		{"an unknown flag", []string{"-spool", "/x", "list", "-nope"}, nil},
		{"a flag of another command", []string{"-spool", "/x", "list", "-force"}, nil},
		{"no store in the environment either", []string{"counts"}, map[string]string{"MXRELAY_PG_SCHEMA": "s"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := cmd(t, tc.env, tc.args...)
			assert.Equal(t, exUsage, r.code, "%s", r.stderr)
			assert.Contains(t, r.stderr, "usage: mxrelay-queue")
			assert.Empty(t, r.stdout)
		})
	}
}

func TestHelp(t *testing.T) {
	for _, args := range [][]string{{"help"}, {"-h"}, {"-spool", "/x", "list", "-h"}} {
		r := cmd(t, nil, args...)
		assert.Equal(t, exOK, r.code, "%v", args)
		assert.Contains(t, r.stdout, "usage: mxrelay-queue", "%v", args)
	}
}

func TestShort(t *testing.T) {
	for d, want := range map[string]string{"42s": "42s", "3m12s": "3m12s", "5h3m20s": "5h03m", "75h40m": "3d04h", "-5s": "0s", "59m59.9s": "1h00m", "59.6s": "1m00s"} {
		assert.Equal(t, want, short(mustDuration(t, d)), d)
	}
}

func TestCleanKeepsTheTerminalSafe(t *testing.T) {
	assert.Equal(t, "a?[31mred? b c", clean("a\x1b[31mred\x07\nb\tc"))
	assert.Equal(t, "é ok", clean("é ok"))
}

func mustDuration(t *testing.T, s string) time.Duration {
	t.Helper()
	d, err := time.ParseDuration(s)
	if err != nil {
		t.Fatal(err)
	}
	return d
}
