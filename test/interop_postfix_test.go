package test

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mxrelay/mxrelay"
	"github.com/mxrelay/mxrelay/internal/interop"
	"github.com/mxrelay/mxrelay/internal/testkit"
	"github.com/mxrelay/mxrelay/relaytest"
)

// postfixServices is master.cf without its smtpd line.
const postfixServices = `pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
proxymap  unix  -       -       n       -       -       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
`

// startPostfix runs a real Postfix smtpd on a loopback port, configured in
// a temporary directory, that relays everything to next (host:port). It
// refuses refused@example.com with 554. It is stopped when the test ends.
func startPostfix(t *testing.T, next string) string {
	t.Helper()
	if _, err := os.Stat("/usr/sbin/postfix"); err != nil {
		interop.Skip(t, "Postfix is not installed (apt-get install postfix)")
	}
	if os.Geteuid() != 0 {
		interop.Skip(t, "Postfix's master must start as root")
	}
	pf, err := user.Lookup("postfix")
	require.NoError(t, err)
	uid, _ := strconv.Atoi(pf.Uid)
	gid, _ := strconv.Atoi(pf.Gid)

	dir := t.TempDir()
	// Postfix's daemons run as postfix: they must reach the directory.
	for d := dir; d != "/" && d != os.TempDir(); d = filepath.Dir(d) {
		require.NoError(t, os.Chmod(d, 0o755))
	}
	conf, queue, data := filepath.Join(dir, "conf"), filepath.Join(dir, "queue"), filepath.Join(dir, "data")
	for _, d := range []string{conf, queue, data} {
		require.NoError(t, os.Mkdir(d, 0o755))
	}
	require.NoError(t, os.Chown(data, uid, gid))
	addr := freePort(t)
	host, port, _ := net.SplitHostPort(next)
	mainCF := fmt.Sprintf(`compatibility_level = 3.6
queue_directory = %s
data_directory = %s
meta_directory = /etc/postfix
mail_owner = postfix
setgid_group = postdrop
myhostname = mx.test
mydestination =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
relayhost = [%s]:%s
smtpd_recipient_restrictions = check_recipient_access texthash:%s, permit_mynetworks, reject
smtputf8_enable = yes
message_size_limit = 40000000
maximal_queue_lifetime = 1m
# go-smtp's server (the next hop) refuses the ORCPT Postfix writes for a
# UTF-8 address (501 5.5.4 Malformed ORCPT): Postfix sends none without DSN.
smtp_discard_ehlo_keywords = dsn
`, queue, data, host, port, filepath.Join(conf, "access"))
	require.NoError(t, os.WriteFile(filepath.Join(conf, "main.cf"), []byte(mainCF), 0o644))
	require.NoError(t, os.WriteFile(filepath.Join(conf, "master.cf"), []byte(addr+" inet n - n - - smtpd\n"+postfixServices), 0o644))
	require.NoError(t, os.WriteFile(filepath.Join(conf, "access"), []byte("refused@example.com REJECT 5.1.1 no such user here\n"), 0o644))

	postfix := func(verb string) ([]byte, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		return exec.CommandContext(ctx, "/usr/sbin/postfix", "-c", conf, verb).CombinedOutput()
	}
	out, err := postfix("start")
	require.NoError(t, err, "postfix start: %s", out)
	t.Cleanup(func() {
		if out, err := postfix("stop"); err != nil {
			t.Logf("postfix stop: %v %s", err, out)
			postfix("abort")
		}
	})
	waitListening(t, addr, 20*time.Second, "Postfix's smtpd")
	return addr
}

// TestInteropPostfix sends a batch through the relay (and through a raw
// tunnel via websockify) to a real Postfix smtpd, which relays it to the
// in-process server whose mailbox we read: mixed priorities, a recipient
// Postfix refuses, a 6 MiB attachment, an SMTPUTF8 address, and the
// PIPELINING and CHUNKING Postfix offers.
func TestInteropPostfix(t *testing.T) {
	final := testkit.NewRelay(t, nil) // its in-process SMTP server is Postfix's next hop
	smtpd := startPostfix(t, final.SMTPAddr)

	run := func(t *testing.T, tag string, c *mxrelay.Client) {
		big := "Subject: " + tag + " big\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\n" + bigLines(6<<20)
		type sent struct {
			h    *mxrelay.Handle
			to   []string
			subj string
		}
		var all []sent
		prios := []mxrelay.Priority{mxrelay.PriorityLow, mxrelay.PriorityNormal, mxrelay.PriorityHigh, mxrelay.PriorityCritical}
		for i := range 12 {
			subj := fmt.Sprintf("%s %d", tag, i)
			to := []string{fmt.Sprintf("r%d@example.com", i)}
			if i%4 == 1 {
				to = append(to, "refused@example.com")
			}
			h, err := c.Enqueue(testkit.Mail(subj, to...), mxrelay.WithPriority(prios[i%4]))
			require.NoError(t, err)
			all = append(all, sent{h, to, subj})
		}
		h, err := c.Enqueue(mxrelay.Email{From: "a@example.com", To: []string{"big@example.com"}, Body: strings.NewReader(big)})
		require.NoError(t, err)
		all = append(all, sent{h, []string{"big@example.com"}, tag + " big"})
		h, err = c.Enqueue(mxrelay.Email{From: "jösé@example.com", To: []string{"ü@example.com"}, Body: strings.NewReader("Subject: " + tag + " utf8\r\n\r\nGrüße\r\n")})
		require.NoError(t, err)
		all = append(all, sent{h, []string{"ü@example.com"}, tag + " utf8"})

		for _, m := range all {
			res, err := m.h.Wait(testkit.Ctx(t))
			require.NoError(t, err, m.subj)
			for _, to := range m.to {
				if to == "refused@example.com" {
					require.Len(t, res.Rejected, 1, m.subj)
					assert.Equal(t, to, res.Rejected[0].Address)
					var se *mxrelay.SMTPError
					require.ErrorAs(t, res.Rejected[0].Err, &se)
					assert.Equal(t, 5, se.Code/100)
				} else {
					assert.Contains(t, res.Accepted, to, m.subj)
				}
			}
		}
		// Postfix queues, then relays: wait for every delivery.
		want := map[string][]string{}
		for _, m := range all {
			for _, to := range m.to {
				if to != "refused@example.com" {
					want[m.subj] = append(want[m.subj], to)
				}
			}
		}
		require.Eventually(t, func() bool {
			got := 0
			for _, msg := range final.Mailbox() {
				if _, ok := want[testkit.SubjectOf(msg.Data)]; ok {
					got++
				}
			}
			return got >= len(want)
		}, 60*time.Second, 100*time.Millisecond, "Postfix relayed every message")
		for _, msg := range final.Mailbox() {
			subj := testkit.SubjectOf(msg.Data)
			if _, ok := want[subj]; !ok {
				continue
			}
			assert.ElementsMatch(t, want[subj], msg.To, subj)
			if strings.HasSuffix(subj, " big") {
				assert.Contains(t, string(msg.Data), big[strings.Index(big, "\r\n\r\n"):], "the attachment arrives whole")
			}
		}
	}

	t.Run("through the relay", func(t *testing.T) {
		relay := testkit.NewRelay(t, &relaytest.Options{UpstreamAddr: smtpd})
		logs := &testkit.LogBuffer{}
		c := testkit.NewClient(t, relay, &mxrelay.Options{MaxEmailsPerSession: 20, BatchWait: time.Second, CommandTimeout: 30 * time.Second, Logger: logs.Logger()})
		run(t, "relay", c)
		assert.Contains(t, logs.String(), `mode="pipelined BDAT`, "Postfix offers PIPELINING and CHUNKING, and they are used")
	})
	t.Run("raw tunnel through websockify", func(t *testing.T) {
		ws := startWebsockify(t, smtpd)
		c, err := mxrelay.New("ws://"+ws+"/", "", testkit.Fast(&mxrelay.Options{RawTunnel: true, MaxEmailsPerSession: 20, BatchWait: time.Second, CommandTimeout: 30 * time.Second}))
		require.NoError(t, err)
		defer c.Close(context.Background())
		run(t, "tunnel", c)
	})
}
