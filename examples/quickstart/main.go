// Quickstart starts a test relay in this process (relaytest: a WebSocket
// relay in front of an in-memory SMTP server), sends a batch of emails of
// mixed priorities through the mxrelay client, and prints each email's
// result and the client's statistics.
//
//	go run ./examples/quickstart
package main

import (
	"context"
	"fmt"
	"log"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/mxrelay/mxrelay"
	"github.com/mxrelay/mxrelay/relaytest"
)

func main() {
	if err := run(); err != nil {
		log.Fatal(err)
	}
}

func run() error {
	// The relay rejects one recipient for good and makes another wait once,
	// so the batch shows partial delivery and a retry.
	relay := relaytest.NewServer(nil)
	defer relay.Close()
	relay.Inject(relaytest.Fault{Kind: relaytest.ReplaceReply, Command: "RCPT", Recipient: "nobody@example.net", Reply: "550 5.1.1 <nobody@example.net>: no such user", Times: -1})
	relay.Inject(relaytest.Fault{Kind: relaytest.ReplaceReply, Command: "RCPT", Recipient: "busy@example.net", Reply: "450 4.2.1 mailbox busy, try later"})
	fmt.Printf("relay listening at %s\n\n", relay.URL)

	client, err := mxrelay.New(relay.URL, relay.APIKey, &mxrelay.Options{
		MaxEmailsPerSession: 5,
		BatchWait:           50 * time.Millisecond,
		RetryInterval:       100 * time.Millisecond,
		OnEvent: func(e mxrelay.Event) {
			switch e.Type {
			case mxrelay.EventSessionStarted:
				fmt.Printf("  session %s started with %d email(s) ready\n", e.SessionID, e.EmailCount)
			case mxrelay.EventSessionCompleted:
				fmt.Printf("  session %s completed: %d result(s) in %v\n", e.SessionID, len(e.Results), e.Duration.Round(time.Millisecond))
			case mxrelay.EventEmailRetrying:
				fmt.Printf("  email %s will be retried in %v: %v\n", e.EmailID, e.Duration.Round(time.Millisecond), e.Err)
			}
		},
	})
	if err != nil {
		return err
	}

	batch := []struct {
		to       []string
		priority mxrelay.Priority
		subject  string
	}{
		{[]string{"alice@example.net"}, mxrelay.PriorityLow, "Weekly digest"},
		{[]string{"bob@example.net"}, mxrelay.PriorityNormal, "Your receipt"},
		{[]string{"ops@example.net"}, mxrelay.PriorityCritical, "Disk almost full"},
		{[]string{"carol@example.net", "nobody@example.net"}, mxrelay.PriorityHigh, "Password reset"},
		{[]string{"dave@example.net", "busy@example.net"}, mxrelay.PriorityNormal, "Meeting notes"},
		{[]string{"erin@example.net"}, mxrelay.PriorityLow, "Newsletter"},
		{[]string{"frank@example.net"}, mxrelay.PriorityHigh, "Invoice overdue"},
	}
	fmt.Println("queueing", len(batch), "emails")
	var handles []*mxrelay.Handle
	for i, m := range batch {
		body := fmt.Sprintf("From: app@example.com\r\nTo: %s\r\nSubject: %s\r\n\r\nMessage %d.\r\n", strings.Join(m.to, ", "), m.subject, i+1)
		h, err := client.Enqueue(mxrelay.Email{
			ID:   fmt.Sprintf("email-%d", i+1),
			From: "app@example.com",
			To:   m.to,
			Body: strings.NewReader(body),
		}, mxrelay.WithPriority(m.priority))
		if err != nil {
			return err
		}
		handles = append(handles, h)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	fmt.Println()
	tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "EMAIL\tPRIORITY\tRESULT\tACCEPTED\tREJECTED\tATTEMPTS\tREPLY")
	failures := 0
	for _, h := range handles {
		res, err := h.Wait(ctx)
		if res == nil {
			return err
		}
		outcome := res.Outcome.String()
		if err != nil {
			outcome += ": " + err.Error()
			failures++
		}
		var rejected []string
		for _, r := range res.Rejected {
			rejected = append(rejected, fmt.Sprintf("%s (%d)", r.Address, r.Code))
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%d\t%d %s\n", res.EmailID, res.Priority, outcome,
			strings.Join(res.Accepted, ","), strings.Join(rejected, ","), res.Attempts, res.Reply.Code, res.Reply.Message)
	}
	tw.Flush()

	if err := client.Close(ctx); err != nil {
		return err
	}
	st := client.Stats()
	fmt.Printf("\nstats: %d sessions (%d failed), %d emails delivered, %d failed, %d retries; average session %v, average email %v\n",
		st.SessionsCompleted, st.SessionsFailed, st.EmailsDelivered, st.EmailsFailed, st.RetriesScheduled,
		st.AverageSessionTime.Round(time.Microsecond), st.AverageEmailTime.Round(time.Microsecond))
	rs := relay.Stats()
	fmt.Printf("relay: %d WebSocket connection(s), %d SMTP session(s), %d message(s) in the mailbox\n", rs.Connections, rs.Channels, len(relay.Mailbox()))
	if failures > 0 {
		return fmt.Errorf("%d email(s) failed", failures)
	}
	return nil
}
