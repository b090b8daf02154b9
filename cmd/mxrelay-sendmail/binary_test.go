package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/mxrelay/mxrelay/internal/interop"
	"github.com/mxrelay/mxrelay/relaytest"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	gomail "github.com/wneessen/go-mail"
)

// build builds the command into a temporary directory and returns its
// path. It skips t under -short, or where there is no go command.
func build(t *testing.T) string {
	t.Helper()
	if testing.Short() {
		t.Skip("builds the command")
	}
	goCmd, err := exec.LookPath("go")
	if err != nil {
		t.Skip("no go command to build the binary with")
	}
	bin := filepath.Join(t.TempDir(), "mxrelay-sendmail")
	out, err := exec.Command(goCmd, "build", "-o", bin, ".").CombinedOutput()
	require.NoError(t, err, "%s", out)
	return bin
}

// TestBinary builds the command and runs it as a process, as cron, git
// send-email or PHP would: from a shell pipeline, with the exit status as
// the only answer, and from wneessen/go-mail's own sendmail support.
func TestBinary(t *testing.T) {
	bin := build(t)

	s := newRelay(t, nil)
	noConfig := envConfig + "=/nonexistent/mxrelay-sendmail.conf" // not the machine's
	env := append(os.Environ(), "MXRELAY_URL="+s.URL, "MXRELAY_API_KEY="+s.APIKey, "BIN="+bin, noConfig)

	t.Run("a shell pipeline with -t", func(t *testing.T) {
		before := len(s.Mailbox())
		cmd := exec.Command("sh", "-c", `printf 'From: app@example.com\nTo: a@example.com\nBcc: b@example.com\nSubject: from a pipe\n\nhi\n' | "$BIN" -t`)
		cmd.Env = env
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		require.NoError(t, cmd.Run(), stderr.String())
		assert.Empty(t, stderr.String())
		box := s.Mailbox()
		require.Len(t, box, before+1)
		assert.Equal(t, "app@example.com", box[before].From)
		assert.Equal(t, []string{"a@example.com", "b@example.com"}, box[before].To)
		assert.NotContains(t, string(box[before].Data), "b@example.com")
	})

	t.Run("the exit status", func(t *testing.T) {
		cmd := exec.Command(bin, "a@example.com")
		cmd.Env = []string{"PATH=" + os.Getenv("PATH"), noConfig} // no relay configured
		cmd.Stdin = bytes.NewReader([]byte("Subject: x\n\nx\n"))
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		var ee *exec.ExitError
		require.ErrorAs(t, cmd.Run(), &ee)
		assert.Equal(t, exConfig, ee.ExitCode())
		assert.Contains(t, stderr.String(), "MXRELAY_URL is not set")
	})

	t.Run("a signal while it waits: exit 75, nothing left in TMPDIR", func(t *testing.T) {
		if runtime.GOOS == "windows" {
			t.Skip("no SIGTERM to send")
		}
		mailSent := make(chan struct{}, 1)
		stalled := newRelay(t, &relaytest.Options{OnSMTPData: func(d relaytest.SMTPData) {
			if !d.FromServer && bytes.Contains(d.Data, []byte("MAIL FROM")) {
				select {
				case mailSent <- struct{}{}:
				default:
				}
			}
		}})
		stalled.Inject(relaytest.Fault{Kind: relaytest.StallReply, Command: "MAIL", Times: -1})
		for _, sig := range []os.Signal{syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP} {
			t.Run(sig.String(), func(t *testing.T) {
				tmp := t.TempDir()
				ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				defer cancel()
				cmd := exec.CommandContext(ctx, bin, "--retries=0", "a@example.com")
				cmd.Env = append(os.Environ(), "MXRELAY_URL="+stalled.URL, "MXRELAY_API_KEY="+stalled.APIKey, "TMPDIR="+tmp, noConfig)
				cmd.Stdin = strings.NewReader("Subject: payroll\n\nSalary: 1,000,000\n") // a pipe: copied, since it cannot be read twice
				var stderr bytes.Buffer
				cmd.Stderr = &stderr
				require.NoError(t, cmd.Start())
				select {
				case <-mailSent:
				case <-ctx.Done():
					t.Fatalf("the command never sent MAIL: %s", stderr.String())
				}
				left, err := os.ReadDir(tmp)
				require.NoError(t, err)
				assert.Empty(t, left, "the copy of the message has no name while it waits")
				require.NoError(t, cmd.Process.Signal(sig))
				var ee *exec.ExitError
				require.ErrorAs(t, cmd.Wait(), &ee)
				assert.Equal(t, exTempFail, ee.ExitCode(), "%s", stderr.String())
				left, err = os.ReadDir(tmp)
				require.NoError(t, err)
				assert.Empty(t, left)
			})
		}
		assert.Empty(t, stalled.Mailbox())
	})

	t.Run("go-mail's WriteToSendmail", func(t *testing.T) {
		t.Setenv("MXRELAY_URL", s.URL)
		t.Setenv("MXRELAY_API_KEY", s.APIKey)
		before := len(s.Mailbox())
		m := gomail.NewMsg()
		require.NoError(t, m.From("app@example.com"))
		require.NoError(t, m.To("a@example.com"))
		require.NoError(t, m.Cc("c@example.com"))
		m.Subject("through go-mail's sendmail path")
		m.SetBodyString(gomail.TypeTextPlain, "It runs the command with -oi -t.")
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		require.NoError(t, m.WriteToSendmailWithContext(ctx, bin))
		box := s.Mailbox()
		require.Len(t, box, before+1)
		assert.Equal(t, []string{"a@example.com", "c@example.com"}, box[before].To)
	})

	t.Run("git send-email", func(t *testing.T) {
		execPath, err := exec.Command("git", "--exec-path").Output()
		if err != nil {
			interop.Skip(t, "git is not installed")
		}
		if _, err := os.Stat(filepath.Join(strings.TrimSpace(string(execPath)), "git-send-email")); err != nil {
			interop.Skip(t, "git send-email is not installed (Debian: git-email libmailtools-perl)")
		}
		home := t.TempDir()
		keyFile := filepath.Join(home, "api-key")
		require.NoError(t, os.WriteFile(keyFile, []byte(s.APIKey+"\n"), 0o600))
		git := func(args ...string) string {
			t.Helper()
			cmd := exec.Command("git", args...)
			cmd.Dir = home
			// The relay is named on the command line only, as in the README.
			cmd.Env = append(os.Environ(), "MXRELAY_URL=", "MXRELAY_API_KEY=", "MXRELAY_API_KEY_FILE=", "HOME="+home, "GIT_CONFIG_NOSYSTEM=1",
				"GIT_AUTHOR_NAME=Dev", "GIT_AUTHOR_EMAIL=dev@example.com", "GIT_COMMITTER_NAME=Dev", "GIT_COMMITTER_EMAIL=dev@example.com")
			out, err := cmd.CombinedOutput()
			require.NoError(t, err, "git %q: %s", args, out)
			return string(out)
		}
		git("init", "-q", ".")
		require.NoError(t, os.WriteFile(filepath.Join(home, "f.txt"), []byte("hello\n"), 0o644))
		git("add", "f.txt")
		git("commit", "-q", "-m", "Add f.txt\n\nA lone dot follows:\n.\nand text after it.")
		patch := filepath.Join(home, "0001.patch")
		git("format-patch", "-1", "--output="+patch)

		before := len(s.Mailbox())
		git("-c", "sendemail.sendmailCmd="+bin+" --url="+s.URL+" --api-key-file="+keyFile, "send-email", "--to=a@example.com", "--suppress-cc=all", "--confirm=never", "--quiet", patch)
		box := s.Mailbox()
		require.Len(t, box, before+1)
		assert.Equal(t, "dev@example.com", box[before].From)
		assert.Equal(t, []string{"a@example.com"}, box[before].To)
		data := string(box[before].Data)
		assert.Contains(t, data, "Subject: [PATCH] Add f.txt\r\n")
		assert.Contains(t, data, "\r\n.\r\nand text after it.\r\n", "git send-email passes -i: the lone dot is text")
	})

	t.Run("PHP mail()", func(t *testing.T) {
		if _, err := exec.LookPath("php"); err != nil {
			interop.Skip(t, "php is not installed (Debian: php-cli)")
		}
		phpMail := func(sendmailPath string) error {
			cmd := exec.Command("php", "-n", "-d", "sendmail_path="+sendmailPath, "-r",
				`exit(mail("a@example.com", "Grüße", "line
.
after", "From: app@example.com
Cc: c@example.com") ? 0 : 1);`)
			cmd.Env = env
			out, err := cmd.CombinedOutput()
			if err != nil {
				return fmt.Errorf("%w: %s", err, out)
			}
			return nil
		}
		before := len(s.Mailbox())
		require.NoError(t, phpMail(bin+" -t -i"))
		box := s.Mailbox()
		require.Len(t, box, before+1)
		assert.Equal(t, "app@example.com", box[before].From)
		assert.Equal(t, []string{"a@example.com", "c@example.com"}, box[before].To)
		assert.Contains(t, string(box[before].Data), "Subject: Grüße\r\n")
		assert.Contains(t, string(box[before].Data), "\r\n\r\nline\r\n.\r\nafter\r\n")

		down := newRelay(t, nil)
		down.SetDown(true)
		err := phpMail(bin + " -t -i --retries=0 --url=" + down.URL)
		require.Error(t, err, "mail() returns false when the message was not sent (exit status 75)")
	})
}
