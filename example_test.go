package mxrelay_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/mxrelay/mxrelay"
	"github.com/mxrelay/mxrelay/relaytest"
)

func Example() {
	relay := relaytest.NewServer(nil) // a relay and an SMTP server, on loopback
	defer relay.Close()

	c, err := mxrelay.New(relay.URL, relay.APIKey, nil)
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close(context.Background())

	res, err := c.Send(context.Background(), mxrelay.Email{
		From: "app@example.com",
		To:   []string{"user@example.com"},
		Body: strings.NewReader("Subject: Hello\r\n\r\nHello through the relay.\r\n"),
	})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("delivered:", res.Delivered(), "to", res.Accepted, "reply", res.Reply.Code)
	fmt.Println("upstream has", len(relay.Mailbox()), "message(s)")
	// Output:
	// delivered: true to [user@example.com] reply 250
	// upstream has 1 message(s)
}

func ExampleClient_Enqueue() {
	relay := relaytest.NewServer(nil)
	defer relay.Close()
	c, err := mxrelay.New(relay.URL, relay.APIKey, &mxrelay.Options{MaxEmailsPerSession: 10})
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close(context.Background())

	var handles []*mxrelay.Handle
	for i, p := range []mxrelay.Priority{mxrelay.PriorityLow, mxrelay.PriorityHigh, mxrelay.PriorityNormal} {
		h, err := c.Enqueue(mxrelay.Email{
			ID:   "email-" + strconv.Itoa(i),
			From: "app@example.com",
			To:   []string{"user@example.com"},
			Body: strings.NewReader("Subject: " + p.String() + "\r\n\r\n.\r\n"),
		}, mxrelay.WithPriority(p))
		if err != nil {
			log.Fatal(err)
		}
		handles = append(handles, h)
	}
	for _, h := range handles {
		res, err := h.Wait(context.Background())
		fmt.Println(h.ID(), res.Priority, err == nil)
	}
	// Output:
	// email-0 LOW true
	// email-1 HIGH true
	// email-2 NORMAL true
}

func ExampleClient_Send_errors() {
	relay := relaytest.NewServer(nil)
	defer relay.Close()
	relay.Inject(relaytest.Fault{Kind: relaytest.ReplaceReply, Command: "RCPT", Recipient: "nobody@example.com", Reply: "550 5.1.1 no such user"})
	c, err := mxrelay.New(relay.URL, relay.APIKey, nil)
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close(context.Background())

	res, err := c.Send(context.Background(), mxrelay.Email{
		From: "app@example.com",
		To:   []string{"nobody@example.com"},
		Body: strings.NewReader("Subject: x\r\n\r\nx\r\n"),
	})
	if res == nil {
		log.Fatal(err) // not accepted: invalid, queue full, closed
	}
	fmt.Println("outcome:", res.Outcome)
	var ee *mxrelay.EmailError
	var se *mxrelay.SMTPError
	if errors.As(err, &ee) && errors.As(err, &se) {
		fmt.Println("attempts:", ee.Attempts, "temporary:", ee.Temporary(), "code:", se.Code, se.EnhancedCode)
	}
	for _, r := range res.Rejected { // each refusal's reply, without errors.As
		fmt.Println("refused for", r.Address, r.Code, r.EnhancedCode, r.Message)
	}
	// Output:
	// outcome: FAILED
	// attempts: 1 temporary: false code: 550 [5 1 1]
	// refused for nobody@example.com 550 [5 1 1] no such user
}

func ExampleClient_Close() {
	relay := relaytest.NewServer(nil)
	defer relay.Close()
	c, err := mxrelay.New(relay.URL, relay.APIKey, nil)
	if err != nil {
		log.Fatal(err)
	}
	for i := range 5 {
		if _, err := c.Enqueue(mxrelay.Email{From: "app@example.com", To: []string{"user@example.com"},
			Body: strings.NewReader(fmt.Sprintf("Subject: %d\r\n\r\n.\r\n", i))}); err != nil {
			log.Fatal(err)
		}
	}
	// Close sends what is queued, for at most ten seconds; whatever is left
	// then fails with ErrClosed.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := c.Close(ctx); err != nil {
		log.Fatal(err)
	}
	st := c.Stats()
	fmt.Println("delivered", st.EmailsDelivered, "failed", st.EmailsFailed, "sessions", st.SessionsCompleted)
	// Output:
	// delivered 5 failed 0 sessions 1
}

func ExampleNewTransport() {
	relay := relaytest.NewServer(nil)
	defer relay.Close()
	u, _ := url.Parse(relay.URL)
	port, _ := strconv.Atoi(u.Port())

	t, err := mxrelay.NewTransport(relay.APIKey, mxrelay.TransportOptions{
		Host:     u.Hostname(),
		Port:     port,
		Insecure: true, // ws:// on loopback; production relays use wss://
	})
	if err != nil {
		log.Fatal(err)
	}
	defer t.Close(context.Background())

	// The arguments of net/smtp.SendMail: the relay picks the SMTP server, and
	// a nil Auth means the Transport's own credentials (none here).
	err = t.SendMail("smtp.example.com:25", nil, "app@example.com", []string{"user@example.com"}, []byte("Subject: net/smtp style\r\n\r\nHi.\r\n"))
	fmt.Println("sent:", err == nil)
	// Output:
	// sent: true
}

func ExampleRelayURL() {
	u, _ := mxrelay.RelayURL("relay.example.com", 0, true, "")
	fmt.Println(u)
	u, _ = mxrelay.RelayURL("127.0.0.1", 8080, false, "/ws")
	fmt.Println(u)
	// Output:
	// wss://relay.example.com:443/smtp
	// ws://127.0.0.1:8080/ws
}

// Raw tunnel mode: the same client through a websockify-style tunnel
// (here relaytest's).
func ExampleOptions_rawTunnel() {
	tunnel := relaytest.NewServer(&relaytest.Options{RawTunnel: true})
	defer tunnel.Close()
	c, err := mxrelay.New(tunnel.URL, tunnel.APIKey, &mxrelay.Options{RawTunnel: true})
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close(context.Background())
	res, err := c.Send(context.Background(), mxrelay.Email{From: "app@example.com", To: []string{"user@example.com"},
		Body: strings.NewReader("Subject: through a tunnel\r\n\r\nHi.\r\n")})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(res.Reply.Code, len(tunnel.Mailbox()))
	// Output:
	// 250 1
}

func ExampleClient_Stats() {
	relay := relaytest.NewServer(nil)
	defer relay.Close()
	c, err := mxrelay.New(relay.URL, relay.APIKey, &mxrelay.Options{BatchWait: time.Second, MaxEmailsPerSession: 4})
	if err != nil {
		log.Fatal(err)
	}
	var hs []*mxrelay.Handle
	for i := range 4 {
		h, err := c.Enqueue(mxrelay.Email{From: "app@example.com", To: []string{"user@example.com"},
			Body: strings.NewReader(fmt.Sprintf("Subject: %d\r\n\r\n.\r\n", i))})
		if err != nil {
			log.Fatal(err)
		}
		hs = append(hs, h)
	}
	for _, h := range hs {
		<-h.Done()
	}
	c.Close(context.Background())
	st := c.Stats()
	fmt.Println("queued", st.EmailsQueued, "delivered", st.EmailsDelivered, "sessions", st.SessionsCompleted, "in queue", st.QueueSize)
	// Output:
	// queued 4 delivered 4 sessions 1 in queue 0
}

// With Options.SpoolDir, what a Client accepted and did not send is sent
// by the next Client on the same directory: here the first one is closed
// while the relay is down, as a process stopping (or crashing) would leave
// it.
func ExampleClient_Recovered() {
	relay := relaytest.NewServer(nil)
	defer relay.Close()
	dir, err := os.MkdirTemp("", "spool")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)

	relay.SetDown(true)
	first, err := mxrelay.New(relay.URL, relay.APIKey, &mxrelay.Options{SpoolDir: dir})
	if err != nil {
		log.Fatal(err)
	}
	h, err := first.Enqueue(mxrelay.Email{ // on disk, fsync'd, when Enqueue returns
		ID:   "invoice-42",
		From: "app@example.com",
		To:   []string{"user@example.com"},
		Body: strings.NewReader("Subject: Invoice\r\n\r\nAttached.\r\n"),
	})
	if err != nil {
		log.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	first.Close(ctx)
	_, err = h.Wait(context.Background())
	fmt.Println("first client:", errors.Is(err, mxrelay.ErrSpooled))

	relay.SetDown(false)
	next, err := mxrelay.New(relay.URL, relay.APIKey, &mxrelay.Options{SpoolDir: dir})
	if err != nil {
		log.Fatal(err)
	}
	defer next.Close(context.Background())
	for _, h := range next.Recovered() {
		res, err := h.Wait(context.Background())
		fmt.Println("next client:", res.EmailID, "delivered:", err == nil)
	}
	// Output:
	// first client: true
	// next client: invoice-42 delivered: true
}
