package mxrelay_test

import (
	"context"
	"fmt"
	"log"
	"os"

	wneessen "github.com/wneessen/go-mail"
	gomail "gopkg.in/mail.v2"

	"github.com/mxrelay/mxrelay"
	"github.com/mxrelay/mxrelay/relaytest"
)

func ExampleSendMail() {
	relay := relaytest.NewServer(nil)
	defer relay.Close()
	// In production these come from the service's environment (or
	// MXRELAY_API_KEY_FILE names a file holding the key).
	defer setenv(mxrelay.EnvURL, relay.URL)()
	defer setenv(mxrelay.EnvAPIKey, relay.APIKey)()

	// Was: err := smtp.SendMail("smtp.example.com:587", nil, ...)
	err := mxrelay.SendMail("smtp.example.com:587", nil, "app@example.com", []string{"user@example.com"},
		[]byte("Subject: from net/smtp code\n\nOnly the package name changed.\n"))
	fmt.Println("sent:", err == nil)
	fmt.Printf("%q\n", relay.Mailbox()[0].Data)
	// Output:
	// sent: true
	// "Subject: from net/smtp code\r\n\r\nOnly the package name changed.\r\n"
}

// setenv sets an environment variable and returns what puts it back.
func setenv(k, v string) func() {
	old, had := os.LookupEnv(k)
	os.Setenv(k, v)
	return func() {
		if had {
			os.Setenv(k, old)
		} else {
			os.Unsetenv(k)
		}
	}
}

// A Sender is a gomail SendCloser (gopkg.in/mail.v2, or the original
// github.com/go-gomail/gomail): gomail composes, the Client sends.
func ExampleSender() {
	relay := relaytest.NewServer(nil)
	defer relay.Close()
	c, err := mxrelay.New(relay.URL, relay.APIKey, nil)
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close(context.Background())

	m := gomail.NewMessage()
	m.SetHeader("From", "app@example.com")
	m.SetHeader("To", "user@example.com")
	m.SetHeader("Bcc", "audit@example.com")
	m.SetHeader("Subject", "Hello from gomail")
	m.SetBody("text/html", "<p>Hello!</p>")

	if err := gomail.Send(mxrelay.NewSender(c), m); err != nil {
		log.Fatal(err)
	}
	fmt.Println("envelope:", relay.Mailbox()[0].To)
	// Output:
	// envelope: [user@example.com audit@example.com]
}

// wneessen/go-mail's Msg is an io.WriterTo: a Sender sends it, streamed.
func ExampleSender_wneessenGoMail() {
	relay := relaytest.NewServer(nil)
	defer relay.Close()
	c, err := mxrelay.New(relay.URL, relay.APIKey, nil)
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close(context.Background())

	m := wneessen.NewMsg()
	if err := m.From("app@example.com"); err != nil {
		log.Fatal(err)
	}
	if err := m.To("user@example.com"); err != nil {
		log.Fatal(err)
	}
	m.Subject("Grüße from go-mail")
	m.SetBodyString(wneessen.TypeTextHTML, "<p>Hello!</p>")
	from, err := m.GetSender(false) // "<app@example.com>": Sender takes the brackets off
	if err != nil {
		log.Fatal(err)
	}
	to, err := m.GetRecipients()
	if err != nil {
		log.Fatal(err)
	}

	if err := mxrelay.NewSender(c).Send(from, to, m); err != nil {
		log.Fatal(err)
	}
	fmt.Println("from", relay.Mailbox()[0].From, "to", relay.Mailbox()[0].To)
	// Output:
	// from app@example.com to [user@example.com]
}
