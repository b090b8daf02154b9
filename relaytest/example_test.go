package relaytest_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"strings"

	"github.com/mxrelay/mxrelay"
	"github.com/mxrelay/mxrelay/relaytest"
)

func ExampleNewServer() {
	relay := relaytest.NewServer(nil)
	defer relay.Close()

	c, err := mxrelay.New(relay.URL, relay.APIKey, nil)
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close(context.Background())
	_, err = c.Send(context.Background(), mxrelay.Email{
		From: "app@example.com",
		To:   []string{"user@example.com"},
		Body: strings.NewReader("Subject: hi\r\n\r\nhello\r\n"),
	})
	fmt.Println("sent:", err == nil)

	for _, m := range relay.Mailbox() {
		fmt.Printf("%s -> %v: %q\n", m.From, m.To, m.Data)
	}
	// Output:
	// sent: true
	// app@example.com -> [user@example.com]: "Subject: hi\r\n\r\nhello\r\n"
}

func ExampleServer_Inject() {
	relay := relaytest.NewServer(nil)
	defer relay.Close()
	// The relay cuts the connection after the end of data, before its reply:
	// the upstream has the message, the client cannot know.
	relay.Inject(relaytest.Fault{Kind: relaytest.DropAfterFinalDot})

	c, err := mxrelay.New(relay.URL, relay.APIKey, nil)
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close(context.Background())
	res, err := c.Send(context.Background(), mxrelay.Email{
		From: "app@example.com",
		To:   []string{"user@example.com"},
		Body: strings.NewReader("Subject: maybe\r\n\r\n.\r\n"),
	})
	fmt.Println("unknown outcome:", errors.Is(err, mxrelay.ErrUnknownOutcome), "maybe delivered:", res.MaybeDelivered)
	fmt.Println("in the mailbox:", len(relay.Mailbox()))
	// Output:
	// unknown outcome: true maybe delivered: true
	// in the mailbox: 1
}
