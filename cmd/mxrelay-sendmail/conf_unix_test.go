//go:build unix

package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestConfigPathChecks: a configuration file that someone else could
// replace, through a directory on its path or its owner, is refused (78)
// before anything is sent; a sticky directory that all may write (/tmp,
// where t.TempDir lives) is not such a directory.
func TestConfigPathChecks(t *testing.T) {
	s := newRelay(t, nil)
	keyFile := writeFile(t, t.TempDir(), "key", s.APIKey+"\n")
	content := "url = " + s.URL + "\napi-key-file = " + keyFile + "\n"
	for _, tc := range []struct {
		name   string
		setup  func(t *testing.T) string // returns the configuration's path
		want   int
		stderr string
	}{
		{name: "in a private directory", want: exOK, setup: func(t *testing.T) string {
			return writeFile(t, t.TempDir(), "sendmail.conf", content)
		}},
		{name: "in a sticky directory all may write", want: exOK, setup: func(t *testing.T) string {
			dir := t.TempDir()
			require.NoError(t, os.Chmod(dir, 0o777|os.ModeSticky))
			return writeFile(t, dir, "sendmail.conf", content)
		}},
		{name: "in a directory the group may write", want: exConfig, stderr: "chmod go-w", setup: func(t *testing.T) string {
			dir := t.TempDir()
			require.NoError(t, os.Chmod(dir, 0o770))
			return writeFile(t, dir, "sendmail.conf", content)
		}},
		{name: "below a directory all may write", want: exConfig, stderr: "may write", setup: func(t *testing.T) string {
			top := t.TempDir()
			require.NoError(t, os.Chmod(top, 0o777))
			dir := filepath.Join(top, "etc")
			require.NoError(t, os.Mkdir(dir, 0o755))
			return writeFile(t, dir, "sendmail.conf", content)
		}},
		{name: "through a link into a directory all may write", want: exConfig, stderr: "may write", setup: func(t *testing.T) string {
			shared := t.TempDir()
			require.NoError(t, os.Chmod(shared, 0o777))
			target := writeFile(t, shared, "sendmail.conf", content)
			link := filepath.Join(t.TempDir(), "sendmail.conf")
			require.NoError(t, os.Symlink(target, link))
			return link
		}},
		{name: "through a directory link into a directory all may write", want: exConfig, stderr: "may write", setup: func(t *testing.T) string {
			shared := t.TempDir()
			require.NoError(t, os.Chmod(shared, 0o777))
			writeFile(t, shared, "sendmail.conf", content)
			link := filepath.Join(t.TempDir(), "etc")
			require.NoError(t, os.Symlink(shared, link))
			return filepath.Join(link, "sendmail.conf")
		}},
		{name: "owned by another user", want: exConfig, stderr: "owned by uid", setup: func(t *testing.T) string {
			if os.Getuid() != 0 {
				t.Skip("only root can give a file away")
			}
			conf := writeFile(t, t.TempDir(), "sendmail.conf", content)
			require.NoError(t, os.Chown(conf, 4242, 4242))
			return conf
		}},
		{name: "in a directory owned by another user", want: exConfig, stderr: "owned by uid", setup: func(t *testing.T) string {
			if os.Getuid() != 0 {
				t.Skip("only root can give a directory away")
			}
			dir := t.TempDir()
			conf := writeFile(t, dir, "sendmail.conf", content)
			require.NoError(t, os.Chown(dir, 4242, 4242))
			return conf
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := s.Stats().Connections
			env := map[string]string{"LOGNAME": "tester", "MXRELAY_DOMAIN": "host.test", envConfig: tc.setup(t)}
			code, stderr := sendmail(t, env, strings.NewReader("Subject: s\n\nx\n"), "a@example.com")
			assert.Equal(t, tc.want, code, stderr)
			assert.Contains(t, stderr, tc.stderr)
			if tc.want != exOK {
				assert.Equal(t, before, s.Stats().Connections, "refused before connecting")
				assert.Equal(t, 1, strings.Count(stderr, "\n"), "one line: %q", stderr)
			}
		})
	}
}

// TestConfigInADirectoryAllMayWriteIsRefused: a configuration file in a
// directory every user may write (0777, not sticky) is as good as
// writable by them: anyone can rename a file of theirs over it and choose
// where the mail and the key go. It is refused (78), its own mode 0644
// notwithstanding, as ssh's StrictModes checks the directories on the
// path too.
//
// Found by the red team (issue 15, round two, on 69b67f2): only the
// file's own mode was checked (readConfig, on the opened file alone), and
// the file was accepted, exit 0.
func TestConfigInADirectoryAllMayWriteIsRefused(t *testing.T) {
	s := newRelay(t, nil)
	keyFile := writeFile(t, t.TempDir(), "key", s.APIKey+"\n")
	shared := t.TempDir()
	require.NoError(t, os.Chmod(shared, 0o777))
	conf := writeFile(t, shared, "sendmail.conf", "url = "+s.URL+"\napi-key-file = "+keyFile+"\n")
	require.NoError(t, os.Chmod(conf, 0o644))
	env := map[string]string{"LOGNAME": "tester", "MXRELAY_DOMAIN": "host.test", envConfig: conf}
	code, stderr := sendmail(t, env, strings.NewReader("Subject: s\n\nx\n"), "a@example.com")
	t.Logf("exit %d, stderr %q, connections %d", code, stderr, s.Stats().Connections)
	assert.Equal(t, exConfig, code, "a configuration in a directory every user may write is as good as writable by them")
	assert.Zero(t, s.Stats().Connections)
}
