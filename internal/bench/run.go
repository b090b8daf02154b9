package bench

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/mxrelay/mxrelay"
	"github.com/mxrelay/mxrelay/internal/smtpsink"
)

// Mail is the email every run sends: its envelope and its message.
type Mail struct {
	From string
	To   []string
	Body []byte
}

// NewMail returns a message of size octets to rcpts recipients.
func NewMail(size, rcpts int) (Mail, error) {
	body, err := Message(size)
	if err != nil {
		return Mail{}, err
	}
	if rcpts < 1 {
		return Mail{}, errors.New("bench: at least one recipient")
	}
	to := make([]string, rcpts)
	for i := range to {
		to[i] = fmt.Sprintf("rcpt%d@example.com", i)
	}
	return Mail{From: "mxbench@example.com", To: to, Body: body}, nil
}

// Sample is one timed run of N emails.
type Sample struct {
	N int
	// Elapsed is from the start of the run to the last result.
	Elapsed time.Duration
	// Latency is each email's time from its Send (or Enqueue) call to its
	// result.
	Latency []time.Duration
	// Enqueue is each Enqueue call's duration: RunOurs only.
	Enqueue []time.Duration
	// Usage is what this process spent over the same span as Elapsed.
	Usage Usage
	// InFlight is the mean number of emails in a session (taken from the
	// queue, result not yet given) over Elapsed: RunOurs only, zero
	// otherwise.
	InFlight float64
}

// Rate is emails per second.
func (s Sample) Rate() float64 { return float64(s.N) / s.Elapsed.Seconds() }

// expectDelta checks that the sink accepted exactly n more messages of the
// mail's size since before.
func expectDelta(sink Counter, before smtpsink.Stats, n int, size int64) error {
	after := sink.Stats()
	if before.Messages < 0 || after.Messages < 0 {
		return errors.New("bench: the sink did not say what it received")
	}
	msgs, octets := after.Messages-before.Messages, after.Bytes-before.Bytes
	if msgs != int64(n) || octets != int64(n)*size {
		return fmt.Errorf("bench: the sink received %d messages (%d octets), want %d (%d octets)", msgs, octets, n, int64(n)*size)
	}
	return nil
}

// RunOurs enqueues n emails on c at once, as a burst, and waits for every
// result. Each email must be delivered to every recipient at its first
// attempt, and the sink must have received exactly those n messages;
// otherwise the run fails. Elapsed runs from the first Enqueue call to the last result; an email's
// latency from its own Enqueue call to its result (its time in the queue
// included). Usage runs from before the first Enqueue call to the last
// result. InFlight is by Little's law: the emails' time in a session
// (Stats.AverageEmailTime, from the email taken to its reply, times the
// emails delivered), summed, over Elapsed; c must send nothing else
// meanwhile.
func RunOurs(ctx context.Context, c *mxrelay.Client, sink Counter, m Mail, n int) (Sample, error) {
	before := sink.Stats()
	inSession := timeInSession(c.Stats())
	meter := startMeter()
	calls := make([]time.Time, 0, n)
	handles := make([]*mxrelay.Handle, 0, n)
	enqueue := make([]time.Duration, 0, n)
	var err error
	for range n {
		calls = append(calls, time.Now())
		var h *mxrelay.Handle
		h, err = c.Enqueue(mxrelay.Email{From: m.From, To: m.To, Body: bytes.NewReader(m.Body)})
		if err != nil {
			err = fmt.Errorf("bench: enqueue: %w", err)
			break
		}
		enqueue = append(enqueue, time.Since(calls[len(calls)-1]))
		handles = append(handles, h)
	}
	s := Sample{N: n, Latency: make([]time.Duration, 0, n), Enqueue: enqueue}
	var last time.Time
	failed := 0
	for i, h := range handles {
		res, werr := h.Wait(ctx)
		if res == nil {
			return Sample{}, fmt.Errorf("bench: waiting for results: %w", werr)
		}
		switch {
		case werr != nil:
			failed++
			if err == nil {
				err = werr
			}
			continue
		}
		if ferr := firstAttempt(res); ferr != nil {
			failed++
			if err == nil {
				err = ferr
			}
		}
		done := res.Queued.Add(res.Duration)
		s.Latency = append(s.Latency, done.Sub(calls[i]))
		if done.After(last) {
			last = done
		}
	}
	s.Usage = meter.stop()
	if err != nil {
		return Sample{}, fmt.Errorf("%d of %d emails failed; first: %w", failed, n, err)
	}
	if err := expectDelta(sink, before, n, int64(len(m.Body))); err != nil {
		return Sample{}, err
	}
	s.Elapsed = last.Sub(calls[0])
	s.InFlight = float64(timeInSession(c.Stats())-inSession) / float64(s.Elapsed)
	return s, nil
}

// firstAttempt is nil when res says its email was delivered to every
// recipient at its first attempt, and otherwise says what happened.
func firstAttempt(res *mxrelay.Result) error {
	if res.Delivered() && res.Attempts == 1 && len(res.Rejected) == 0 {
		return nil
	}
	return fmt.Errorf("bench: email %s: %v after %d attempts, %d recipients refused (%v)", res.EmailID, res.Outcome, res.Attempts, len(res.Rejected), res.Err)
}

// timeInSession is the time the emails delivered so far spent in a
// session, from being taken from the queue to their reply, summed.
func timeInSession(st mxrelay.Stats) time.Duration {
	return st.AverageEmailTime * time.Duration(st.EmailsDelivered)
}

// RunLockstep sends n emails with go-smtp's Client in one SMTP session on
// a connection from dial: MAIL, RCPT, DATA and the end of data, each waiting
// for its reply. Elapsed runs from the dial (the session's set-up, greeting
// and EHLO included, as in RunOurs) to the last reply; an email's latency
// from its MAIL to the reply to its end of data; Usage over the same span
// as Elapsed. The sink must have received exactly those n messages.
func RunLockstep(ctx context.Context, dial Dialer, sink Counter, m Mail, n int) (Sample, error) {
	before := sink.Stats()
	meter := startMeter()
	start := time.Now()
	c, end, err := openSMTP(ctx, dial)
	if err != nil {
		return Sample{}, err
	}
	defer end()
	s := Sample{N: n, Latency: make([]time.Duration, 0, n)}
	for i := range n {
		t := time.Now()
		if err := sendOne(c, m, bytes.NewReader(m.Body)); err != nil {
			return Sample{}, fmt.Errorf("bench: email %d: %w", i+1, err)
		}
		s.Latency = append(s.Latency, time.Since(t))
	}
	s.Elapsed = time.Since(start)
	s.Usage = meter.stop()
	if err := c.Quit(); err != nil {
		return Sample{}, fmt.Errorf("bench: QUIT: %w", err)
	}
	if err := expectDelta(sink, before, n, int64(len(m.Body))); err != nil {
		return Sample{}, err
	}
	return s, nil
}

// openSMTP dials, reads the greeting and says EHLO with go-smtp's Client.
// end closes the connection; so does the end of ctx.
func openSMTP(ctx context.Context, dial Dialer) (c *smtp.Client, end func(), err error) {
	conn, err := dial(ctx)
	if err != nil {
		return nil, nil, err
	}
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	c = smtp.NewClient(conn)
	end = func() {
		stop()
		c.Close()
	}
	if err := c.Hello("localhost"); err != nil {
		end()
		return nil, nil, fmt.Errorf("bench: EHLO: %w", err)
	}
	return c, end, nil
}

// sendOne runs one lock-step transaction.
func sendOne(c *smtp.Client, m Mail, body io.Reader) error {
	if err := c.Mail(m.From, nil); err != nil {
		return err
	}
	for _, to := range m.To {
		if err := c.Rcpt(to, nil); err != nil {
			return err
		}
	}
	w, err := c.Data()
	if err != nil {
		return err
	}
	if _, err := io.Copy(w, body); err != nil {
		w.Close()
		return err
	}
	return w.Close()
}
