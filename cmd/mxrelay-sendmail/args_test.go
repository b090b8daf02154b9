package main

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mxrelay/mxrelay"
)

func TestParseArgs(t *testing.T) {
	for _, tc := range []struct {
		name string
		args []string
		want config
	}{
		{name: "PHP's default", args: []string{"-t", "-i"},
			want: config{extract: true, ignoreDots: true}},
		{name: "grouped", args: []string{"-ti"},
			want: config{extract: true, ignoreDots: true}},
		{name: "-oi", args: []string{"-oi", "a@example.com"},
			want: config{ignoreDots: true, recipients: []string{"a@example.com"}}},
		{name: "-o i", args: []string{"-o", "i"},
			want: config{ignoreDots: true}},
		{name: "git send-email", args: []string{"-i", "-f", "me@example.com", "a@example.com", "b@example.com"},
			want: config{ignoreDots: true, sender: "me@example.com", senderSet: true, recipients: []string{"a@example.com", "b@example.com"}}},
		{name: "sender attached, -r", args: []string{"-rme@example.com"},
			want: config{sender: "me@example.com", senderSet: true}},
		{name: "null sender", args: []string{"-f", "<>", "a@example.com"},
			want: config{sender: "<>", senderSet: true, recipients: []string{"a@example.com"}}},
		{name: "cron", args: []string{"-FCronDaemon", "-i", "-B8BITMIME", "-oem", "root"},
			want: config{fullName: "CronDaemon", ignoreDots: true, recipients: []string{"root"}, ignored: []string{"-B8BITMIME", "-oem"}}},
		{name: "-- ends the options", args: []string{"-t", "--", "-not-an-option@example.com", "--url=x@example.com"},
			want: config{extract: true, recipients: []string{"-not-an-option@example.com", "--url=x@example.com"}}},
		{name: "harmless flags", args: []string{"-U", "-m", "-n", "-bm", "-N", "never", "-Rhdrs", "-Venvid", "-odi"},
			want: config{ignored: []string{"-U", "-m", "-n", "-Nnever", "-Rhdrs", "-Venvid", "-odi"}}},
		{name: "long options", args: []string{"--url", "wss://relay.example.com/smtp", "--api-key-file=/run/key", "--timeout=30s", "--retries", "5", "--helo", "app.example.com", "--domain=example.com", "--starttls=required", "--tls-server-name", "smtp.example.com", "-v"},
			want: config{url: "wss://relay.example.com/smtp", keyFile: "/run/key", timeout: 30 * time.Second, retries: 5, helo: "app.example.com", domain: "example.com", startTLS: mxrelay.StartTLSRequired, startTLSSet: true, tlsName: "smtp.example.com", verbose: true}},
		{name: "help", args: []string{"--help"},
			want: config{help: true}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := parseArgs(tc.args)
			require.NoError(t, err)
			want := tc.want
			if want.timeout == 0 {
				want.timeout = defaultTimeout
			}
			if want.retries == 0 {
				want.retries = defaultRetries
			}
			assert.Equal(t, &want, got)
		})
	}
}

func TestParseArgsErrors(t *testing.T) {
	for _, args := range [][]string{
		{"-Z"},
		{"-f"},
		{"-t", "-f"},
		{"-q"},
		{"-q30m"},
		{"-bs"},
		{"-bp"},
		{"-I"},
		{"--nope"},
		{"--api-key", "secret"},
		{"--api-key=secret"},
		{"--timeout", "soon"},
		{"--timeout=-1s"},
		{"--retries=-1"},
		{"--starttls=maybe"},
		{"--url"},
		{"--url="},
		// Options end at the first operand: an option appended after the
		// administrator's command line is an operand, and refused.
		{"a@example.com", "-t"},
		{"a@example.com", "--url=wss://evil.example/smtp"},
		{"-t", "a@example.com", "--api-key-file=/etc/shadow"},
		{"a@example.com", "--", "b@example.com"},
		// Where the mail and the key go is said once.
		{"--url=wss://relay.example.com/smtp", "--url=wss://evil.example/smtp"},
		{"--api-key-file=/run/key", "--api-key-file", "/etc/passwd"},
		{"--tls-server-name=mx.example.com", "--tls-server-name=evil.example"},
	} {
		_, err := parseArgs(args)
		assert.ErrorIs(t, err, errUsage, "%q", args)
	}
}

// -h alone shows the usage (sendmail's -h N, a hop count, still parses).
func TestDashHAloneIsHelp(t *testing.T) {
	cfg, err := parseArgs([]string{"-h"})
	require.NoError(t, err)
	assert.True(t, cfg.help)
	cfg, err = parseArgs([]string{"-h", "5", "a@example.com"})
	require.NoError(t, err)
	assert.False(t, cfg.help)
}
