// Command mxrelay-queue is the operator's tool for mxrelay's durable
// queues, in the spirit of Postfix's mailq, postqueue and postsuper: it
// lists the emails of a spool directory (Options.SpoolDir) or of a
// PostgreSQL queue (package pgstore), shows one, holds and releases
// them, makes them ready now, deletes them, and counts them by state.
//
//	mxrelay-queue (-spool DIR | -pg URL [-schema NAME]) COMMAND [flags] [ID...]
//
//	list [-state S,...] [-json]   the emails: ID, age, priority, attempts, state, last error
//	show [-json] ID               one email: envelope, progress, result, body size
//	show -body ID                 its body, as queued, alone on standard output
//	counts [-json]                how many emails are in each state
//	hold [-force] [-json] ID...   no claim takes them until release
//	release [-json] ID...         claimable again (at their retry time, if any)
//	requeue [-json] ID...         ready now: their retry time cleared
//	delete [-force] [-json] ID... removed from the queue: each ends with a result saying so
//	migrate                       PostgreSQL: create or migrate the schema
//
// The store is -spool DIR or -pg URL (a libpq URL or key=value string;
// MXRELAY_PG when neither is given), in schema -schema (MXRELAY_PG_SCHEMA,
// default "mxrelay"). The store flags and -timeout (default 1m, which
// bounds the whole command) may come before or after the command; a
// command's flags come before its IDs.
//
// The states are ready (any claim may take it), deferred (waiting for
// its retry time), claimed (a process holds it, under a lease), held
// (by hold) and finished (it has its result); list shows all but
// finished unless -state says otherwise (-state all: every state).
//
// # Claimed emails
//
// hold and delete refuse an email that a process holds unless -force.
// Forced, they fence the holder: its claim is released, so that every
// later write it makes of the email (another end of data, a result, a
// retry) is refused by the store; it cannot contradict the hold or the
// deletion. An end of data the holder wrote before cannot be taken back:
// a held email released afterwards is an unknown outcome (the Client
// fails it with MaybeDelivered, or sends it again with RetryUnknown), and
// a deleted one's result says it may have been delivered. requeue refuses
// a claimed email: it is being tried.
//
// # A spool directory
//
// One Client owns a spool and holds its lock (DIR/lock). list, show and
// counts read the directory without the lock, while the Client runs, and
// what they print is true of one moment. A spool's claims live in the
// Client's memory, so they never show as claimed: while a Client runs it
// holds every email that is ready. The changes (hold, release, requeue,
// delete) need the lock: while a Client runs they are refused (exit 4),
// naming the lock; stop the Client, make them, and start it again. A
// Client that opens the spool makes every email ready, so requeue has
// nothing to do there: a deferred email shows only while the Client that
// deferred it runs. A hold survives restarts; a Client of before this
// command ignores it.
//
// # PostgreSQL
//
// Everything works live, while any number of processes use the queue:
// a change locks the email's row, and every process sees it at its next
// claim. The command does not create or migrate the schema (migrate
// does): it needs the version its pgstore knows (pgstore.SchemaVersion).
//
// # Exit status
//
//	0  done
//	1  an ID was not done: no such email, finished already, or claimed
//	   (without -force); the others were
//	2  the command line is wrong
//	3  the store cannot be read or changed: no such directory, not a
//	   spool, the database out of reach, the schema missing or at another
//	   version
//	4  the spool is in use by a running Client: a change was refused
//
// Errors go to standard error, one line each, starting with
// "mxrelay-queue: ". -json writes one JSON document to standard output:
// an array of emails (list), an email (show), an object of counts
// (counts), an array of {id, changed, before, error} (the changes).
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Getenv, os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}
