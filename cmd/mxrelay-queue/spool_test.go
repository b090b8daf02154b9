package main

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mxrelay/mxrelay"
	"github.com/mxrelay/mxrelay/internal/spool"
	"github.com/mxrelay/mxrelay/internal/store"
	"github.com/mxrelay/mxrelay/internal/store/storetest"
	"github.com/mxrelay/mxrelay/internal/testkit"
)

var ctx = context.Background()

// openSpoolStore opens dir as a Client would, closed when t ends.
func openSpoolStore(t *testing.T, dir string) *spool.Store {
	t.Helper()
	st, err := spool.Open(dir, nil)
	require.NoError(t, err)
	t.Cleanup(func() { st.Close() })
	return st
}

// fillSpool leaves in a spool, held open by the returned Store as a
// running Client holds it: ready (two recipients, "the body"), deferred
// (an attempt refused with 451, retried in an hour), held, and finished
// (delivered).
func fillSpool(t *testing.T, dir string) *spool.Store {
	t.Helper()
	st := openSpoolStore(t, dir)
	storetest.AcceptEnv(t, st, &store.Envelope{ID: "ready", From: "a@example.com", To: []string{"b@example.com", "c@example.com"}, Priority: 1}, "the body")
	storetest.Accept(t, st, "deferred", 0, "x")
	storetest.Accept(t, st, "finished", 0, "x")
	storetest.Accept(t, st, "held", 0, "x")
	for _, c := range storetest.Claim(t, st, "client-1", 3)[1:] {
		switch c.ID {
		case "deferred":
			p := &store.Progress{Attempts: 1, Pending: []string{"b@example.com"}, Error: "451 4.7.1 try later"}
			require.NoError(t, st.Requeue(ctx, c.Token, p, time.Now().Add(time.Hour)))
		case "finished":
			require.NoError(t, st.Finish(ctx, c.Token, &store.Result{ID: c.ID, Delivered: true, Attempts: 1,
				Accepted: []string{"b@example.com"}, Reply: store.Reply{Code: 250, Message: "2.0.0 queued as 1234"}}))
		}
	}
	_, _, err := st.Hold(ctx, "held", false)
	require.NoError(t, err)
	return st
}

// TestSpoolReadingWhileAClientRuns: list, show and counts read a spool
// whose lock a running Store holds, in text and in JSON.
func TestSpoolReadingWhileAClientRuns(t *testing.T) {
	dir := t.TempDir()
	fillSpool(t, dir)

	var all []*store.Info
	jsonOf(t, &all, "-spool", dir, "list", "-json")
	got := map[string]*store.Info{}
	var ids []string
	for _, i := range all {
		got[i.ID] = i
		ids = append(ids, i.ID)
	}
	assert.Equal(t, []string{"ready", "deferred", "held"}, ids, "by priority, then acceptance; no finished")
	assert.Equal(t, store.StateReady, got["ready"].State, "claimed in the Client: a spool's claims are its own")
	assert.Equal(t, []string{"b@example.com", "c@example.com"}, got["ready"].To)
	assert.EqualValues(t, len("the body"), got["ready"].BodySize)
	assert.Equal(t, store.StateDeferred, got["deferred"].State)
	assert.True(t, got["deferred"].NotBefore.After(time.Now().Add(30*time.Minute)))
	assert.Equal(t, "451 4.7.1 try later", got["deferred"].LastError())
	assert.Equal(t, store.StateHeld, got["held"].State)

	text := ok(t, "-spool", dir, "list")
	lines := strings.Split(strings.TrimSpace(text), "\n")
	require.Len(t, lines, 4, text)
	assert.Regexp(t, `^ID +AGE +PRIORITY +ATTEMPTS +STATE +LAST ERROR$`, lines[0])
	assert.Regexp(t, `^ready +\d+s +high +0 +ready *$`, lines[1])
	assert.Regexp(t, `^deferred +\d+s +normal +1 +deferred until \S+ \S+ \(in (59m\d\ds|1h00m)\) +451 4.7.1 try later$`, lines[2])
	assert.Regexp(t, `^held +\d+s +normal +0 +held *$`, lines[3])

	jsonOf(t, &all, "-spool", dir, "list", "-json", "-state", "finished,held")
	require.Len(t, all, 2)
	assert.Equal(t, "held", all[0].ID)
	assert.Equal(t, "finished", all[1].ID)
	require.NotNil(t, all[1].Result)
	assert.Equal(t, "2.0.0 queued as 1234", all[1].Result.Reply.Message)

	var n map[store.State]int
	jsonOf(t, &n, "-spool", dir, "counts", "-json")
	assert.Equal(t, map[store.State]int{"ready": 1, "deferred": 1, "claimed": 0, "held": 1, "finished": 1}, n)
	assert.Equal(t, "ready     1\ndeferred  1\nclaimed   0\nheld      1\nfinished  1\n", ok(t, "counts", "-spool", dir), "store flags after the command too")

	var one store.Info
	jsonOf(t, &one, "-spool", dir, "show", "-json", "deferred")
	assert.Equal(t, &store.Progress{Attempts: 1, Pending: []string{"b@example.com"}, Error: "451 4.7.1 try later"}, one.Progress)
	show := ok(t, "-spool", dir, "show", "deferred")
	assert.Regexp(t, `(?m)^state: +deferred until `, show)
	assert.Regexp(t, `(?m)^pending: +b@example.com$`, show)
	assert.Regexp(t, `(?m)^last error: +451 4.7.1 try later$`, show)
	show = ok(t, "-spool", dir, "show", "finished")
	assert.Regexp(t, `(?m)^result: +delivered$`, show)
	assert.Regexp(t, `(?m)^reply: +250 2.0.0 queued as 1234$`, show)
	assert.Equal(t, "the body", ok(t, "-spool", dir, "show", "-body", "ready"))

	r := cmd(t, nil, "-spool", dir, "show", "nope")
	assert.Equal(t, exNotDone, r.code)
	assert.Equal(t, "mxrelay-queue: nope: no such email\n", r.stderr)
	r = cmd(t, nil, "-spool", dir, "show", "-body", "finished")
	assert.Equal(t, exNotDone, r.code, "its body went with its result")
	r = cmd(t, nil, "-spool", dir, "list", "-state", "gone")
	assert.Equal(t, exUsage, r.code)
}

// TestSpoolChangesNeedTheLock: with a Client running, every change is
// refused naming the lock, and nothing is written; once it stopped, each
// change is made.
func TestSpoolChangesNeedTheLock(t *testing.T) {
	dir := t.TempDir()
	st := fillSpool(t, dir)
	journal := func() string {
		b, err := os.ReadFile(filepath.Join(dir, "journal"))
		require.NoError(t, err)
		return string(b)
	}
	before := journal()
	for _, args := range [][]string{{"hold", "ready"}, {"release", "held"}, {"requeue", "deferred"}, {"delete", "-force", "ready"}} {
		r := cmd(t, nil, append([]string{"-spool", dir}, args...)...)
		assert.Equal(t, exLocked, r.code, "%v", args)
		assert.Contains(t, r.stderr, "in use by a running Client", "%v", args)
		assert.Contains(t, r.stderr, filepath.Join(dir, "lock"), "%v: the lock is named", args)
		assert.Empty(t, r.stdout)
	}
	assert.Equal(t, before, journal(), "nothing written")
	require.NoError(t, st.Close())

	assert.Equal(t, "ready: held\n", ok(t, "-spool", dir, "hold", "ready"))
	assert.Equal(t, "ready: held already\n", ok(t, "-spool", dir, "hold", "ready"))
	assert.Equal(t, "held: released\n", ok(t, "-spool", dir, "release", "held"))
	assert.Equal(t, "held: not held: left as it is\n", ok(t, "-spool", dir, "release", "held"))
	assert.Contains(t, ok(t, "-spool", dir, "requeue", "deferred"), "deferred: waits for no retry time",
		"the Client that deferred it stopped: an Open makes every email ready")
	var all []*store.Info
	jsonOf(t, &all, "-spool", dir, "list", "-json")
	states := map[string]store.State{}
	for _, i := range all {
		states[i.ID] = i.State
	}
	assert.Equal(t, map[string]store.State{"ready": store.StateHeld, "deferred": store.StateReady, "held": store.StateReady}, states)

	assert.Equal(t, "ready: deleted\n", ok(t, "-spool", dir, "delete", "ready"))
	var i store.Info
	jsonOf(t, &i, "-spool", dir, "show", "-json", "ready")
	assert.Equal(t, store.StateFinished, i.State)
	require.NotNil(t, i.Result)
	assert.Equal(t, store.DeletedKind, i.Result.Kind)
	assert.Equal(t, map[string]string{"b@example.com": store.DeletedError, "c@example.com": store.DeletedError}, i.Result.Rejected)

	// Several IDs: each is tried; the status is the worst.
	r := cmd(t, nil, "-spool", dir, "hold", "held", "nope", "finished")
	assert.Equal(t, exNotDone, r.code)
	assert.Equal(t, "held: held\n", r.stdout)
	assert.Equal(t, "mxrelay-queue: nope: no such email\nmxrelay-queue: finished: finished already: it has its result\n", r.stderr)

	var changes []changed
	r = cmd(t, nil, "-spool", dir, "release", "-json", "held", "nope")
	assert.Equal(t, exNotDone, r.code)
	require.NoError(t, jsonUnmarshal(r.stdout, &changes))
	require.Len(t, changes, 2)
	assert.Equal(t, "held", changes[0].ID)
	assert.True(t, changes[0].Changed)
	assert.Equal(t, store.StateHeld, changes[0].Before.State)
	assert.Empty(t, changes[0].Error)
	assert.False(t, changes[1].Changed)
	assert.Nil(t, changes[1].Before)
	assert.NotEmpty(t, changes[1].Error)
}

func TestSpoolThatIsNotThere(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "nope")
	for _, args := range [][]string{{"list"}, {"hold", "e1"}} {
		r := cmd(t, nil, append([]string{"-spool", missing}, args...)...)
		assert.Equal(t, exStore, r.code, "%v", args)
		assert.Contains(t, r.stderr, "no such file or directory")
	}
	assert.NoDirExists(t, missing, "nothing created")
	empty := t.TempDir()
	r := cmd(t, nil, "-spool", empty, "hold", "e1")
	assert.Equal(t, exStore, r.code)
	assert.Contains(t, r.stderr, "not a spool directory")
	entries, err := os.ReadDir(empty)
	require.NoError(t, err)
	assert.Empty(t, entries, "nothing created in a directory that is not a spool")
}

// TestSpoolHoldIsRespectedByAClient: an email held with the command is
// not taken by the Client that opens the spool next, which sends the
// others; the command reads the spool while that Client runs and cannot
// change it; released once the Client stopped, it is sent by the next.
func TestSpoolHoldIsRespectedByAClient(t *testing.T) {
	s := testkit.NewRelay(t, nil)
	dir := t.TempDir()
	st := openSpoolStore(t, dir)
	for _, id := range []string{"keep", "send"} {
		storetest.AcceptEnv(t, st, &store.Envelope{ID: id, From: "a@example.com", To: []string{"b@example.com"}}, testkit.Msg(id))
	}
	require.NoError(t, st.Close())
	assert.Equal(t, "keep: held\n", ok(t, "-spool", dir, "hold", "keep"))

	c := testkit.NewClient(t, s, &mxrelay.Options{SpoolDir: dir})
	rec := c.Recovered()
	require.Len(t, rec, 1, "the held email is not taken")
	assert.Equal(t, "send", rec[0].ID())
	res, err := rec[0].Wait(testkit.Ctx(t))
	require.NoError(t, err)
	assert.Equal(t, mxrelay.OutcomeDelivered, res.Outcome)
	assert.Equal(t, []string{"send"}, testkit.Subjects(s))

	var i store.Info
	jsonOf(t, &i, "-spool", dir, "show", "-json", "keep")
	assert.Equal(t, store.StateHeld, i.State, "read while the Client runs")
	r := cmd(t, nil, "-spool", dir, "release", "keep")
	assert.Equal(t, exLocked, r.code, "%s", r.stderr)
	closeCtx, cancel := context.WithTimeout(ctx, bound)
	defer cancel()
	require.NoError(t, c.Close(closeCtx))
	assert.Equal(t, []string{"send"}, testkit.Subjects(s), "still not sent")

	assert.Equal(t, "keep: released\n", ok(t, "-spool", dir, "release", "keep"))
	c = testkit.NewClient(t, s, &mxrelay.Options{SpoolDir: dir})
	rec = c.Recovered()
	require.Len(t, rec, 1)
	res, err = rec[0].Wait(testkit.Ctx(t))
	require.NoError(t, err)
	assert.Equal(t, mxrelay.OutcomeDelivered, res.Outcome)
	assert.Equal(t, []string{"send", "keep"}, testkit.Subjects(s))
}
