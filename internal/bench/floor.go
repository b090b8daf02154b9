package bench

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"time"
)

// FloorWindow is the floor's pipelining window: how many transactions it
// leaves unanswered at most.
const FloorWindow = 256

// RunFloor sends n emails with the floor, the reference every other path
// is compared with: a minimal client, written for this benchmark, that
// pipelines whole BDAT transactions (MAIL, one RCPT a recipient, then BDAT
// with the whole message and LAST) in one SMTP session on a connection
// from dial, with at most FloorWindow transactions unanswered, and does
// nothing else: no queue, no results, no events, no retry, no timer per
// email. It still reads every reply and wants each of an email's replies
// to be 2xx: any other reply, a malformed one, or a server that offers no
// PIPELINING or no CHUNKING fails the run. Elapsed and Usage run from the
// dial (the session's set-up, greeting and EHLO included, as in
// RunLockstep) to the reply to the last BDAT; an email's latency from its
// MAIL being written, into the buffer, to the reply to its BDAT. The sink
// must have received exactly those n messages.
func RunFloor(ctx context.Context, dial Dialer, sink Counter, m Mail, n int) (Sample, error) {
	before := sink.Stats()
	meter := startMeter()
	start := time.Now()
	conn, err := dial(ctx)
	if err != nil {
		return Sample{}, err
	}
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	r := bufio.NewReader(conn)
	w := bufio.NewWriterSize(conn, 64<<10)
	if err := floorHello(r, w); err != nil {
		return Sample{}, fmt.Errorf("bench: floor: %w", err)
	}

	s := Sample{N: n, Latency: make([]time.Duration, 0, n)}
	// sent holds the time of each email written and not yet answered:
	// its capacity is the window.
	sent := make(chan time.Time, FloorWindow)
	quit := make(chan struct{})
	werr := make(chan error, 1)
	go func() { werr <- floorWrite(conn, w, m, n, sent, quit) }()
	if err := floorRead(r, m, n, sent, &s); err != nil {
		close(quit) // before the close: the writer's error is then not its own
		conn.Close()
		if e := <-werr; e != nil {
			err = e // the write failed first: the read only saw its end
		}
		return Sample{}, fmt.Errorf("bench: floor: %w", err)
	}
	if err := <-werr; err != nil {
		return Sample{}, fmt.Errorf("bench: floor: %w", err)
	}
	s.Elapsed = time.Since(start)
	s.Usage = meter.stop()

	w.WriteString("QUIT\r\n") // a write error stays in w for Flush
	if err := w.Flush(); err != nil {
		return Sample{}, fmt.Errorf("bench: floor: QUIT: %w", err)
	}
	if err := expectReply(r, 221); err != nil {
		return Sample{}, fmt.Errorf("bench: floor: QUIT: %w", err)
	}
	if err := expectDelta(sink, before, n, int64(len(m.Body))); err != nil {
		return Sample{}, err
	}
	return s, nil
}

// floorHello reads the greeting, says EHLO, and checks that the server
// offers PIPELINING and CHUNKING.
func floorHello(r *bufio.Reader, w *bufio.Writer) error {
	if err := expectReply(r, 220); err != nil {
		return fmt.Errorf("greeting: %w", err)
	}
	w.WriteString("EHLO localhost\r\n")
	if err := w.Flush(); err != nil {
		return err
	}
	var pipelining, chunking bool
	for more, first := true, true; more; first = false {
		code, m, text, err := replyLine(r)
		if err != nil {
			return fmt.Errorf("EHLO: %w", err)
		}
		if code != 250 {
			return fmt.Errorf("EHLO: reply %d", code)
		}
		more = m
		if first {
			continue // the server's name
		}
		kw, _, _ := bytes.Cut(text, []byte(" "))
		pipelining = pipelining || bytes.EqualFold(kw, []byte("PIPELINING"))
		chunking = chunking || bytes.EqualFold(kw, []byte("CHUNKING"))
	}
	if !pipelining || !chunking {
		return errors.New("the server offers no PIPELINING or no CHUNKING")
	}
	return nil
}

// floorWrite writes n transactions, each when the window has room for it,
// into w. It flushes w when the window is full, before waiting for a
// reply to make room, and after the last one; w flushes itself when
// full. It stops when quit closes, and then returns no error: the reader
// has one. On a write error of its own it closes conn, so that the reader
// stops too, and returns it.
func floorWrite(conn net.Conn, w *bufio.Writer, m Mail, n int, sent chan<- time.Time, quit <-chan struct{}) error {
	failed := func(err error) error {
		select {
		case <-quit:
			return nil
		default:
			conn.Close()
			return err
		}
	}
	var num [20]byte
	size := strconv.AppendInt(num[:0], int64(len(m.Body)), 10)
	for range n {
		select {
		case sent <- time.Now():
		default:
			if err := w.Flush(); err != nil {
				return failed(err)
			}
			select {
			case sent <- time.Now():
			case <-quit:
				return nil
			}
		}
		w.WriteString("MAIL FROM:<")
		w.WriteString(m.From)
		w.WriteString(">\r\n")
		for _, to := range m.To {
			w.WriteString("RCPT TO:<")
			w.WriteString(to)
			w.WriteString(">\r\n")
		}
		w.WriteString("BDAT ")
		w.Write(size)
		w.WriteString(" LAST\r\n")
		w.Write(m.Body)
	}
	if err := w.Flush(); err != nil {
		return failed(err)
	}
	return nil
}

// floorRead reads the replies to n transactions, 2 + len(m.To) each, and
// records each email's latency in s. Every reply must be 2xx.
func floorRead(r *bufio.Reader, m Mail, n int, sent <-chan time.Time, s *Sample) error {
	replies := 2 + len(m.To)
	for i := range n {
		for k := range replies {
			code, err := readReply(r)
			if err != nil {
				return fmt.Errorf("email %d: %w", i+1, err)
			}
			if code/100 != 2 {
				cmd := "RCPT"
				switch k {
				case 0:
					cmd = "MAIL"
				case replies - 1:
					cmd = "BDAT"
				}
				return fmt.Errorf("email %d: %s answered %d", i+1, cmd, code)
			}
		}
		s.Latency = append(s.Latency, time.Since(<-sent))
	}
	return nil
}

// expectReply reads a reply and wants its code to be want.
func expectReply(r *bufio.Reader, want int) error {
	code, err := readReply(r)
	if err == nil && code != want {
		err = fmt.Errorf("reply %d, want %d", code, want)
	}
	return err
}

// readReply reads a whole reply, one line or more, and returns its code.
func readReply(r *bufio.Reader) (int, error) {
	code, more, _, err := replyLine(r)
	for err == nil && more {
		var c int
		c, more, _, err = replyLine(r)
		if err == nil && c != code {
			err = fmt.Errorf("a reply's lines have codes %d and %d", code, c)
		}
	}
	return code, err
}

// replyLine reads one line of a reply: its code, whether more lines
// follow, and its text, which is valid until the next read.
func replyLine(r *bufio.Reader) (code int, more bool, text []byte, err error) {
	line, err := r.ReadSlice('\n')
	if err != nil {
		return 0, false, nil, err // bufio.ErrBufferFull: a line longer than 4096 octets
	}
	line = bytes.TrimSuffix(line[:len(line)-1], []byte("\r"))
	if len(line) < 3 || len(line) > 3 && line[3] != ' ' && line[3] != '-' {
		return 0, false, nil, fmt.Errorf("malformed reply %q", line)
	}
	for _, c := range line[:3] {
		if c < '0' || c > '9' {
			return 0, false, nil, fmt.Errorf("malformed reply %q", line)
		}
		code = code*10 + int(c-'0')
	}
	if len(line) > 4 {
		text = line[4:]
	}
	return code, len(line) > 3 && line[3] == '-', text, nil
}
