package main

import (
	"bytes"
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/mxrelay/mxrelay/internal/pgtest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(pgtest.Main(m)) }

// bound is how long any wait of a test may take before it fails: a guard
// against a hang, never a measure.
const bound = 30 * time.Second

// ran is what one command line did.
type ran struct {
	code           int
	stdout, stderr string
}

// cmd runs the command line args, with env as the environment.
func cmd(t *testing.T, env map[string]string, args ...string) ran {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), bound)
	defer cancel()
	var out, errb bytes.Buffer
	code := run(ctx, args, func(k string) string { return env[k] }, &out, &errb)
	return ran{code, out.String(), errb.String()}
}

// ok runs args, which must exit 0, and returns what it printed.
func ok(t *testing.T, args ...string) string {
	t.Helper()
	r := cmd(t, nil, args...)
	require.Equal(t, exOK, r.code, "%v: %s", args, r.stderr)
	return r.stdout
}

// jsonOf runs args, which must exit 0, and decodes the JSON it printed
// into v.
func jsonOf(t *testing.T, v any, args ...string) {
	t.Helper()
	require.NoError(t, json.Unmarshal([]byte(ok(t, args...)), v))
}

func jsonUnmarshal(s string, v any) error { return json.Unmarshal([]byte(s), v) }
