package main

import (
	"cmp"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"

	"github.com/mxrelay/mxrelay/internal/store"
	"github.com/mxrelay/mxrelay/pgstore"
)

// Exit statuses (see the package doc).
const (
	exOK      = 0
	exNotDone = 1 // an ID was not done
	exUsage   = 2 // the command line is wrong
	exStore   = 3 // the store cannot be read or changed
	exLocked  = 4 // the spool is in use by a running Client
)

const usage = `usage: mxrelay-queue (-spool DIR | -pg URL [-schema NAME]) COMMAND [flags] [ID...]

commands:
  list [-state S,...] [-json]    the emails (S: ready, deferred, claimed, held, finished, all)
  show [-json] [-body] ID        one email (-body: its body alone)
  counts [-json]                 how many emails are in each state
  hold [-force] [-json] ID...    no claim takes them until release (-force: fence a claim)
  release [-json] ID...          claimable again
  requeue [-json] ID...          ready now: the retry time cleared
  delete [-force] [-json] ID...  removed, each ending with a result saying so (-force: fence a claim)
  migrate                        PostgreSQL: create or migrate the schema

-pg defaults to $MXRELAY_PG, -schema to $MXRELAY_PG_SCHEMA or "mxrelay".
exit: 0 done, 1 an ID not done, 2 usage, 3 the store unreadable or unreachable,
      4 the spool in use by a running Client (changes refused)
`

// opts are the command line's settings.
type opts struct {
	spool, pg, schema string
	timeout           time.Duration
	json, force, body bool
	states            string
}

// command is one of the commands: its flags, how many IDs it takes
// (-1: one or more), and what it does.
type command struct {
	flags func(fs *flag.FlagSet, o *opts)
	ids   int
	run   func(ctx context.Context, q *queue, o *opts, ids []string, out *output) int
}

var commands = map[string]command{
	"list": {flags: func(fs *flag.FlagSet, o *opts) {
		fs.StringVar(&o.states, "state", "", "the `states` listed, comma-separated (all: every state)")
		fs.BoolVar(&o.json, "json", false, "JSON output")
	}, run: runList},
	"show": {flags: func(fs *flag.FlagSet, o *opts) {
		fs.BoolVar(&o.json, "json", false, "JSON output")
		fs.BoolVar(&o.body, "body", false, "print the body alone, as queued")
	}, ids: 1, run: runShow},
	"counts":  {flags: jsonFlag, run: runCounts},
	"hold":    {flags: forceFlags, ids: -1, run: change(store.OpHold)},
	"release": {flags: jsonFlag, ids: -1, run: change(store.OpRelease)},
	"requeue": {flags: jsonFlag, ids: -1, run: change(store.OpRetry)},
	"delete":  {flags: forceFlags, ids: -1, run: change(store.OpDelete)},
	"migrate": {run: runMigrate},
}

func jsonFlag(fs *flag.FlagSet, o *opts) { fs.BoolVar(&o.json, "json", false, "JSON output") }

func forceFlags(fs *flag.FlagSet, o *opts) {
	jsonFlag(fs, o)
	fs.BoolVar(&o.force, "force", false, "change a claimed email too, fencing its holder")
}

// storeFlags are the flags that may come before or after the command.
func storeFlags(fs *flag.FlagSet, o *opts) {
	fs.StringVar(&o.spool, "spool", o.spool, "the spool `directory`")
	fs.StringVar(&o.pg, "pg", o.pg, "the PostgreSQL `URL`")
	fs.StringVar(&o.schema, "schema", o.schema, "the PostgreSQL `schema`")
	fs.DurationVar(&o.timeout, "timeout", o.timeout, "bounds the whole command; 0: none")
}

// run runs the command line args and returns its exit status.
func run(ctx context.Context, args []string, env func(string) string, stdout, stderr io.Writer) int {
	out := &output{w: stdout, errw: stderr}
	o := &opts{timeout: time.Minute}
	fs := flag.NewFlagSet("mxrelay-queue", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	storeFlags(fs, o)
	if code, done := parse(fs, args, out); done {
		return code
	}
	if fs.NArg() == 0 {
		return out.usage("no command")
	}
	name := fs.Arg(0)
	if name == "help" {
		fmt.Fprint(stdout, usage)
		return exOK
	}
	cmd, ok := commands[name]
	if !ok {
		return out.usage(fmt.Sprintf("no command %q", name))
	}
	cfs := flag.NewFlagSet(name, flag.ContinueOnError)
	cfs.SetOutput(io.Discard)
	storeFlags(cfs, o)
	if cmd.flags != nil {
		cmd.flags(cfs, o)
	}
	if code, done := parse(cfs, fs.Args()[1:], out); done {
		return code
	}
	ids := cfs.Args()
	switch {
	case cmd.ids == 0 && len(ids) > 0:
		return out.usage(name + " takes no ID")
	case cmd.ids == 1 && len(ids) != 1:
		return out.usage(name + " takes one ID")
	case cmd.ids < 0 && len(ids) == 0:
		return out.usage(name + " needs an ID")
	case o.body && o.json:
		return out.usage("show -body prints the body alone: not with -json")
	}
	if err := o.chooseStore(env, name); err != nil {
		return out.usage(err.Error())
	}
	if o.timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, o.timeout)
		defer cancel()
	}
	var q *queue
	var err error
	switch {
	case o.spool != "":
		q, err = openSpool(o.spool)
	default:
		q, err = openPG(ctx, o.pg, o.schema, name == "migrate")
	}
	if err != nil {
		return out.fail(err)
	}
	defer q.close()
	return cmd.run(ctx, q, o, ids, out)
}

// parse parses args into fs; done is true when the command ends there
// (help asked for, or a usage error), with code its status.
func parse(fs *flag.FlagSet, args []string, out *output) (code int, done bool) {
	err := fs.Parse(args)
	switch {
	case errors.Is(err, flag.ErrHelp):
		fmt.Fprint(out.w, usage)
		return exOK, true
	case err != nil:
		return out.usage(err.Error()), true
	}
	return 0, false
}

// chooseStore checks that the command line names one store, taking the
// environment's defaults.
func (o *opts) chooseStore(env func(string) string, cmd string) error {
	if o.spool != "" && o.pg != "" {
		return errors.New("-spool and -pg: choose one store")
	}
	if o.spool != "" {
		if o.schema != "" {
			return errors.New("-schema is for -pg")
		}
		if cmd == "migrate" {
			return errors.New("migrate is for -pg: a spool has no schema")
		}
		return nil
	}
	o.pg = cmp.Or(o.pg, env("MXRELAY_PG"))
	o.schema = cmp.Or(o.schema, env("MXRELAY_PG_SCHEMA"), "mxrelay")
	if o.pg == "" {
		return errors.New("no store: give -spool DIR or -pg URL (or set MXRELAY_PG)")
	}
	return nil
}

// filter is the Filter -state says.
func (o *opts) filter() (store.Filter, error) {
	var f store.Filter
	if o.states == "" {
		return f, nil
	}
	for _, s := range strings.Split(o.states, ",") {
		st := store.State(strings.TrimSpace(s))
		switch {
		case st == "all":
			f.States = append(f.States, store.States...)
		case slices.Contains(store.States, st):
			f.States = append(f.States, st)
		default:
			return f, fmt.Errorf("-state %q: one of ready, deferred, claimed, held, finished, all", s)
		}
	}
	return f, nil
}

func runList(ctx context.Context, q *queue, o *opts, _ []string, out *output) int {
	f, err := o.filter()
	if err != nil {
		return out.usage(err.Error())
	}
	all, err := q.List(ctx, f)
	if err != nil {
		return out.fail(err)
	}
	if o.json {
		return out.json(all)
	}
	out.list(all, time.Now())
	return exOK
}

func runShow(ctx context.Context, q *queue, o *opts, ids []string, out *output) int {
	if o.body {
		r, err := q.Body(ctx, ids[0])
		if err != nil {
			return out.failID(ids[0], err)
		}
		defer r.Close()
		if _, err := io.Copy(out.w, r); err != nil {
			return out.fail(err)
		}
		return exOK
	}
	i, err := q.Inspect(ctx, ids[0])
	if err != nil {
		return out.failID(ids[0], err)
	}
	if o.json {
		return out.json(i)
	}
	out.show(i, time.Now())
	return exOK
}

func runCounts(ctx context.Context, q *queue, o *opts, _ []string, out *output) int {
	n, err := q.Counts(ctx)
	if err != nil {
		return out.fail(err)
	}
	if o.json {
		return out.json(n)
	}
	out.counts(n)
	return exOK
}

func runMigrate(_ context.Context, _ *queue, o *opts, _ []string, out *output) int {
	fmt.Fprintf(out.w, "schema %s is at version %d\n", o.schema, pgstore.SchemaVersion)
	return exOK
}

// changed is what a change did to one email, as -json writes it.
type changed struct {
	ID      string      `json:"id"`
	Changed bool        `json:"changed"`
	Before  *store.Info `json:"before,omitempty"`
	Error   string      `json:"error,omitempty"`
}

// change is the command that makes op to each ID in turn. A spool is
// opened for them (its lock taken) once.
func change(op store.Op) func(ctx context.Context, q *queue, o *opts, ids []string, out *output) int {
	return func(ctx context.Context, q *queue, o *opts, ids []string, out *output) int {
		a, done, err := q.admin()
		if err != nil {
			return out.fail(err)
		}
		defer done()
		code := exOK
		var all []changed
		for _, id := range ids {
			var before *store.Info
			var ok bool
			var err error
			switch op {
			case store.OpHold:
				before, ok, err = a.Hold(ctx, id, o.force)
			case store.OpRelease:
				before, ok, err = a.Release(ctx, id)
			case store.OpRetry:
				before, ok, err = a.Retry(ctx, id)
			case store.OpDelete:
				before, ok, err = a.Delete(ctx, id, o.force)
			}
			c := changed{ID: id, Changed: ok, Before: before}
			if err != nil {
				c.Error = err.Error()
				code = max(code, statusOf(err))
			}
			all = append(all, c)
			if !o.json {
				out.changed(op, c, before, err, q.spool)
			}
		}
		if o.json {
			out.json(all)
		}
		return code
	}
}

// statusOf is the exit status of a change that failed with err.
func statusOf(err error) int {
	if errors.Is(err, store.ErrNotFound) || errors.Is(err, store.ErrFinished) || errors.Is(err, store.ErrClaimed) {
		return exNotDone
	}
	var ee *exitError
	if errors.As(err, &ee) {
		return ee.code
	}
	return exStore
}
