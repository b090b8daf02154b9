package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
	"unicode"

	"github.com/mxrelay/mxrelay"
	"github.com/mxrelay/mxrelay/internal/store"
)

// output writes what the command prints: results to w, errors to errw.
type output struct {
	w, errw io.Writer
}

// usage reports a usage error and returns its status.
func (o *output) usage(msg string) int {
	fmt.Fprintf(o.errw, "mxrelay-queue: %s\n%s", msg, usage)
	return exUsage
}

// fail reports err and returns its status.
func (o *output) fail(err error) int {
	fmt.Fprintf(o.errw, "mxrelay-queue: %s\n", clean(err.Error()))
	return statusOf(err)
}

// failID reports err about email id and returns its status.
func (o *output) failID(id string, err error) int {
	fmt.Fprintf(o.errw, "mxrelay-queue: %s: %s\n", clean(id), clean(why(err)))
	return statusOf(err)
}

// why is what err says of an email, in the operator's words where it is
// one the store gives.
func why(err error) string {
	switch {
	case errors.Is(err, store.ErrNotFound):
		return "no such email"
	case errors.Is(err, store.ErrFinished):
		return "finished already: it has its result"
	}
	var ce *store.ClaimedError
	if errors.As(err, &ce) {
		return fmt.Sprintf("claimed by %s (claim %d, lease until %s): being tried now; -force fences the claim",
			ce.Owner, ce.Attempt, stamp(ce.Expires))
	}
	return err.Error()
}

// json writes v as indented JSON.
func (o *output) json(v any) int {
	enc := json.NewEncoder(o.w)
	enc.SetIndent("", "  ")
	if err := enc.Encode(v); err != nil {
		return o.fail(err)
	}
	return exOK
}

// list writes one line per email.
func (o *output) list(all []*store.Info, now time.Time) {
	tw := tabwriter.NewWriter(o.w, 2, 8, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tAGE\tPRIORITY\tATTEMPTS\tSTATE\tLAST ERROR")
	for _, i := range all {
		age := "-"
		if !i.Queued.IsZero() {
			age = short(now.Sub(i.Queued))
		}
		prio := "-"
		if i.State != store.StateFinished || i.From != "" {
			prio = priority(i.Priority)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", clean(i.ID), age, prio, attempts(i), clean(state(i, now)), clean(i.LastError()))
	}
	tw.Flush()
}

// show writes one email, a field per line.
func (o *output) show(i *store.Info, now time.Time) {
	tw := tabwriter.NewWriter(o.w, 2, 8, 1, ' ', 0)
	line := func(k, format string, a ...any) { fmt.Fprintf(tw, "%s:\t%s\n", k, clean(fmt.Sprintf(format, a...))) }
	line("id", "%s", i.ID)
	line("state", "%s", state(i, now))
	if !i.Queued.IsZero() {
		line("queued", "%s (%s ago)", stamp(i.Queued), short(now.Sub(i.Queued)))
	}
	if i.IdempotencyKey != "" {
		line("key", "%s", i.IdempotencyKey)
	}
	if i.From != "" || len(i.To) > 0 {
		line("priority", "%s", priority(i.Priority))
		line("from", "<%s>", i.From)
		line("to", "%s", strings.Join(i.To, ", "))
		line("body", "%d bytes", i.BodySize)
		line("retries", "%d", i.Retries)
	}
	if !i.Deadline.IsZero() {
		line("deadline", "%s", stamp(i.Deadline))
	}
	if i.Attempt > 0 {
		line("claims", "%d", i.Attempt)
	}
	if i.Result == nil {
		line("attempts", "%s", attempts(i))
		if i.Unanswered > 0 {
			line("unanswered", "%d end(s) of data without a reply: the outcome is unknown unless the holder gets it", i.Unanswered)
		}
		if p := i.Progress; p != nil {
			list := func(k string, addrs []string) {
				if len(addrs) > 0 {
					line(k, "%s", strings.Join(addrs, ", "))
				}
			}
			list("accepted", p.Accepted)
			rejected(line, p.Rejected)
			list("pending", p.Pending)
		}
		if e := i.LastError(); e != "" {
			line("last error", "%s", e)
		}
		if i.Canceled != "" {
			line("canceled", "%s", i.Canceled)
		}
	}
	if r := i.Result; r != nil {
		line("result", "%s", outcome(r))
		line("finished", "%s", stamp(r.Finished))
		line("attempts", "%d", r.Attempts)
		if len(r.Accepted) > 0 {
			line("accepted", "%s", strings.Join(r.Accepted, ", "))
		}
		rejected(line, r.Rejected)
		if r.Reply.Code != 0 {
			line("reply", "%d %s", r.Reply.Code, r.Reply.Message)
		}
		if r.Error != "" {
			line("error", "%s", r.Error)
		}
	}
	tw.Flush()
}

// rejected writes the refused recipients, one per line, in order.
func rejected(line func(k, format string, a ...any), m map[string]string) {
	for _, to := range slices.Sorted(maps.Keys(m)) {
		line("rejected", "%s: %s", to, m[to])
	}
}

// counts writes one line per state.
func (o *output) counts(n map[store.State]int) {
	tw := tabwriter.NewWriter(o.w, 2, 8, 2, ' ', 0)
	for _, st := range store.States {
		fmt.Fprintf(tw, "%s\t%d\n", st, n[st])
	}
	tw.Flush()
}

// changed writes what a change did to one email: a line on w, or the
// error on errw.
func (o *output) changed(op store.Op, c changed, before *store.Info, err error, spool bool) {
	if err != nil {
		o.failID(c.ID, err)
		return
	}
	var what string
	switch {
	case op == store.OpHold && c.Changed:
		what = "held" + fenced(before, "released, it is an unknown outcome")
	case op == store.OpHold:
		what = "held already"
	case op == store.OpRelease && c.Changed:
		what = "released"
	case op == store.OpRelease:
		what = "not held: left as it is"
	case op == store.OpRetry && c.Changed && before.State == store.StateHeld:
		what = "its retry time cleared; still held"
	case op == store.OpRetry && c.Changed:
		what = "ready now"
	case op == store.OpRetry && spool:
		what = "waits for no retry time (a Client that opens the spool sends every email at once)"
	case op == store.OpRetry:
		what = "waits for no retry time: left as it is"
	case op == store.OpDelete:
		what = "deleted" + fenced(before, "its result says it may have been delivered")
	}
	fmt.Fprintf(o.w, "%s: %s\n", clean(c.ID), what)
}

// fenced is what a forced change of before adds: the claim it fenced,
// and, when that claim's end of data was recorded, what follows
// (unknown).
func fenced(before *store.Info, unknown string) string {
	if before == nil || before.State != store.StateClaimed {
		return ""
	}
	s := fmt.Sprintf("; the claim of %s (claim %d) is fenced", before.Owner, before.Attempt)
	if before.Unanswered > 0 {
		s += "; its end of data was written and has no answer: " + unknown
	}
	return s
}

// state is i's state in words.
func state(i *store.Info, now time.Time) string {
	switch i.State {
	case store.StateDeferred:
		return fmt.Sprintf("deferred until %s (in %s)", stamp(i.NotBefore), short(i.NotBefore.Sub(now)))
	case store.StateClaimed:
		if i.Expires.After(now) {
			return fmt.Sprintf("claimed by %s (lease until %s)", i.Owner, stamp(i.Expires))
		}
		return fmt.Sprintf("claimed by %s (lease expired %s ago: another claim may take it over)", i.Owner, short(now.Sub(i.Expires)))
	case store.StateFinished:
		if i.Result != nil {
			return "finished: " + outcome(i.Result)
		}
	}
	return string(i.State)
}

// outcome is a result in words.
func outcome(r *store.Result) string {
	s := "failed"
	if r.Delivered {
		s = "delivered"
	}
	if r.Kind != "" && r.Kind != s {
		s += " (" + r.Kind + ")"
	}
	if r.MaybeDelivered {
		s += ", may have been delivered"
	}
	return s
}

// attempts is how many attempts i had, with "?" when the outcome of one
// is unknown.
func attempts(i *store.Info) string {
	s := strconv.Itoa(i.Attempts())
	if i.Unanswered > 0 || i.Progress != nil && i.Progress.Unknown || i.Result != nil && i.Result.MaybeDelivered {
		s += "?"
	}
	return s
}

// priority is a priority's name.
func priority(p int) string { return strings.ToLower(mxrelay.Priority(p).String()) }

// stamp is t in UTC, to the second.
func stamp(t time.Time) string { return t.UTC().Format("2006-01-02 15:04:05Z") }

// short is d, rounded to what a person reads: 42s, 3m12s, 5h03m, 3d04h.
func short(d time.Duration) string {
	d = max(d, 0).Round(time.Second)
	if d < time.Minute {
		return d.String()
	}
	if d < time.Hour {
		return fmt.Sprintf("%dm%02ds", d/time.Minute, d%time.Minute/time.Second)
	}
	if d = d.Round(time.Minute); d < 48*time.Hour {
		return fmt.Sprintf("%dh%02dm", d/time.Hour, d%time.Hour/time.Minute)
	}
	d = d.Round(time.Hour)
	return fmt.Sprintf("%dd%02dh", d/(24*time.Hour), d%(24*time.Hour)/time.Hour)
}

// clean makes s safe for a terminal: a remote server's text, an
// application's ID, with no control character to move the cursor or
// hide what follows.
func clean(s string) string {
	return strings.Map(func(r rune) rune {
		if r == '\t' || r == '\n' || r == '\r' {
			return ' '
		}
		if !unicode.IsPrint(r) && r != ' ' {
			return '?'
		}
		return r
	}, s)
}
