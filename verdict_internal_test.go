package mxrelay

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mxrelay/mxrelay/internal/fakesmtp"
	"github.com/mxrelay/mxrelay/internal/smtpc"
)

// The verdict table (STYLE.md habit 17, TestVerdictTable): decide is
// checked against every combination of
//
//   - the reply class of each command (MAIL, two RCPTs, DATA in the DATA
//     modes, the end of data): 2xx, 4xx, 5xx, out of grammar, or none;
//   - where the stream was cut: before MAIL, after MAIL's reply, after the
//     RCPTs' replies, in the body, after the end of data was read, after
//     the end of data's reply (before the confirming reply), or nowhere;
//   - the engine's four modes;
//   - the caller's cancel, Close, or neither; RetryUnknown; lastTry.
//
// The engine's results are real: each script runs the SMTP engine
// (internal/smtpc) against a scripted server at the other end of a
// net.Pipe. A net.Pipe write returns only what the server read, so "the
// end of data was sent" is exact: the server knows whether it read a byte
// of it. The expected verdict comes from an oracle (want) written from
// the rules of docs/protocol.md §11 and of decide's doc comment, fed with what
// the server did (the replies it wrote, whether it read the end of data,
// whether it answered a confirming command after it), never with decide's
// helpers nor with the fields of smtpc.Result. The caller's side (cancel,
// Close, RetryUnknown, lastTry) is the attempt's, so every engine result
// is decided twelve times, once per combination.

// replyClass is what the scripted server answers a command with.
type replyClass int

const (
	rNone   replyClass = iota // no reply: the stream was cut before it, or broke
	rOK                       // 2xx (354 to DATA)
	rTemp                     // 4xx
	rPerm                     // 5xx
	rBad                      // out of grammar: a 3xx (a 250 to DATA)
	rBadEnh                   // end of data: 250 with a 5.x.x enhanced code
	rAddr                     // end of data: 250 with an address status (2.1.5)
	rBad5                     // end of data: 550 with a 2.x.x enhanced code
)

var classNames = [...]string{"none", "2xx", "4xx", "5xx", "bad", "250 5.x.x", "250 2.1.5", "550 2.x.x"}

func (c replyClass) String() string { return classNames[c] }

// The replies, each command's with its own code so that the oracle can
// tell which one decided.
var (
	mailReply = map[replyClass]string{rOK: "250 2.1.0 sender ok", rTemp: "451 4.3.0 sender later", rPerm: "553 5.1.8 sender refused", rBad: "354 sender?"}
	rcptReply = [2]map[replyClass]string{
		{rOK: "250 2.1.5 ok", rTemp: "450 4.2.1 mailbox busy", rPerm: "550 5.1.1 no such user", rBad: "354 recipient?"},
		{rOK: "250 2.1.5 ok", rTemp: "452 4.2.2 mailbox full", rPerm: "551 5.1.6 moved", rBad: "354 recipient?"},
	}
	dataReply = map[replyClass]string{rOK: "354 go ahead", rTemp: "453 4.3.1 data later", rPerm: "554 5.5.1 no data", rBad: "250 2.0.0 data?"}
	endReply  = map[replyClass]string{
		rOK: "250 2.0.0 queued", rTemp: "454 4.3.0 try later", rPerm: "552 5.3.4 too big", rBad: "354 queued?",
		rBadEnh: "250 5.6.0 rejected, or not", rAddr: "250 2.1.5 recipient ok", rBad5: "550 2.0.0 queued, or not",
	}
)

// code is the reply code of s.
func code(s string) int { n, _ := strconv.Atoi(s[:3]); return n }

// breaks reports a reply that SMTP's grammar does not allow for its
// command: the client cannot go on after it, and no later reply counts.
func breaks(c replyClass) bool { return c == rBad }

type cut int

const (
	cutBeforeMail    cut = iota // closed after the EHLO reply
	cutAfterMail                // closed after MAIL's reply
	cutAfterRcpts               // closed after the second RCPT's reply
	cutInBody                   // closed in the middle of the body (DATA: after 3 bytes; BDAT: 1000 bytes into a first chunk)
	cutAfterEnd                 // closed after reading the end of data, not answering it
	cutAfterEndReply            // closed after answering the end of data, before any confirming reply
	cutNone                     // an honest end: RSET, NOOP and QUIT answered
)

var cutNames = [...]string{"cut before MAIL", "cut after MAIL", "cut after RCPTs", "cut in body", "cut after end of data", "cut after its reply", "no cut"}

func (c cut) String() string { return cutNames[c] }

// script is one engine run: a mode, the server's replies, the cut.
type script struct {
	mode       int // index in fakesmtp.EngineModes
	mail, data replyClass
	rcpt       [2]replyClass
	end        replyClass
	cut        cut
}

func (s script) dataMode() bool { return !hasExt(fakesmtp.EngineModes[s.mode].Ext, "CHUNKING") }

func hasExt(ext []string, e string) bool {
	for _, x := range ext {
		if x == e {
			return true
		}
	}
	return false
}

func (s script) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s, %s", fakesmtp.EngineModes[s.mode].Name, s.cut)
	if s.cut >= cutAfterMail {
		fmt.Fprintf(&b, ", MAIL %v", s.mail)
	}
	if s.cut >= cutAfterRcpts {
		fmt.Fprintf(&b, ", RCPT %v/%v", s.rcpt[0], s.rcpt[1])
	}
	if s.cut >= cutInBody && s.dataMode() {
		fmt.Fprintf(&b, ", DATA %v", s.data)
	}
	if s.cut >= cutAfterEndReply {
		fmt.Fprintf(&b, ", end %v", s.end)
	}
	return b.String()
}

// scripts enumerates every combination for mode. A command past the cut
// gets no reply, so it takes no class; past a reply out of grammar (the
// client stops there) nor past a refused DATA (no end of data follows)
// later classes cannot matter and take one value.
func scripts(mode int) []script {
	var out []script
	classes := []replyClass{rOK, rTemp, rPerm, rBad}
	ends := []replyClass{rOK, rTemp, rPerm, rBad, rBadEnh, rAddr, rBad5}
	data := fakesmtp.EngineModes[mode].Ext == nil || !hasExt(fakesmtp.EngineModes[mode].Ext, "CHUNKING")
	for c := cutBeforeMail; c <= cutNone; c++ {
		mails := []replyClass{rNone}
		if c >= cutAfterMail {
			mails = classes
		}
		for _, m := range mails {
			pairs := [][2]replyClass{{}}
			if c >= cutAfterRcpts && !breaks(m) {
				pairs = nil
				for _, r0 := range classes {
					for _, r1 := range classes {
						if breaks(r0) && r1 != rOK {
							continue
						}
						pairs = append(pairs, [2]replyClass{r0, r1})
					}
				}
			}
			for _, rs := range pairs {
				broken := breaks(m) || breaks(rs[0]) || breaks(rs[1])
				datas := []replyClass{rNone}
				if data && c >= cutInBody && !broken {
					datas = classes
				}
				for _, d := range datas {
					es := []replyClass{rNone}
					if c >= cutAfterEndReply && !broken && (!data || d == rOK) {
						es = ends
					}
					for _, e := range es {
						out = append(out, script{mode: mode, mail: m, rcpt: rs, data: d, end: e, cut: c})
					}
				}
			}
		}
	}
	return out
}

// served is what the server did: the replies it wrote (the client read
// them, a net.Pipe write ends only then), whether it read a byte of the
// end of data, whether it answered a command after the end of data's
// reply in step.
type served struct {
	replies   []servedReply
	endRead   bool
	confirmed bool
}

type servedReply struct {
	cmd   string // MAIL, RCPT, DATA, END
	idx   int
	class replyClass
}

// pipeServer reads exactly what it needs from a fakesmtp.Pipe (Exact),
// so that the client's write stops where the server stopped.
type pipeServer struct {
	c   *fakesmtp.Conn
	s   script
	got served
}

// line reads a line; first, if set, sees its first byte.
func (p *pipeServer) line(first func(byte)) (string, bool) {
	if first != nil {
		b, ok := p.c.Peek()
		if !ok {
			return "", false
		}
		first(b)
	}
	return p.c.Line()
}

// reply writes cmd's reply and records it.
func (p *pipeServer) reply(cmd string, idx int, c replyClass, text string) bool {
	if !p.c.Say(text) {
		return false
	}
	p.got.replies = append(p.got.replies, servedReply{cmd: cmd, idx: idx, class: c})
	return true
}

const bigChunks = 2 // a body of two BDAT chunks, for a cut inside the first

func (p *pipeServer) serve() {
	s := p.s
	ext := fakesmtp.EngineModes[s.mode].Ext
	if !p.c.Hello(append(ext, "ENHANCEDSTATUSCODES")...) {
		return
	}
	if s.cut == cutBeforeMail {
		return
	}
	bdatBig := !s.dataMode() && s.cut == cutInBody
	rcpts, chunks, endAnswered := 0, 0, false
	first := func(c byte) {
		// The end of data in BDAT is the line of the last chunk: the
		// client's end of data is sent once a byte of it is.
		last := 0
		if bdatBig {
			last = bigChunks - 1
		}
		if c == 'B' && chunks == last {
			p.got.endRead = true
		}
	}
	for {
		l, ok := p.line(first)
		if !ok {
			return
		}
		f := strings.Fields(l)
		switch strings.ToUpper(f[0]) {
		case "MAIL":
			if !p.reply("MAIL", 0, s.mail, mailReply[s.mail]) || s.cut == cutAfterMail {
				return
			}
		case "RCPT":
			i := rcpts
			rcpts++
			if !p.reply("RCPT", i, s.rcpt[i], rcptReply[i][s.rcpt[i]]) || s.cut == cutAfterRcpts && rcpts == 2 {
				return
			}
		case "DATA":
			if !p.reply("DATA", 0, s.data, dataReply[s.data]) {
				return
			}
			if s.data != rOK {
				continue
			}
			if !p.dataBody() {
				return
			}
			if !p.end() {
				return
			}
			endAnswered = true
		case "BDAT":
			n, _ := strconv.Atoi(f[1])
			if bdatBig && chunks == 0 {
				p.c.Read(1000)
				return
			}
			if _, ok := p.c.Read(n); !ok {
				return
			}
			chunks++
			if len(f) < 3 {
				if !p.c.Say("250 2.0.0 chunk ok") {
					return
				}
				continue
			}
			if !p.end() {
				return
			}
			endAnswered = true
		case "RSET", "NOOP":
			if !p.c.Say("250 2.0.0 ok") {
				return
			}
			p.got.confirmed = p.got.confirmed || endAnswered
		case "QUIT":
			if p.c.Say("221 2.0.0 bye") {
				p.got.confirmed = p.got.confirmed || endAnswered
			}
			return
		default:
			p.c.Say("500 5.5.2 what")
		}
	}
}

// dataBody reads a DATA body up to its end line, or 3 bytes of it for a
// cut in the body. False: the connection is to end.
func (p *pipeServer) dataBody() bool {
	lineStart, read := true, 0
	for {
		if p.s.cut == cutInBody && read == 3 {
			return false
		}
		c, ok := p.c.Byte()
		if !ok {
			return false
		}
		read++
		if lineStart && c == '.' {
			// The body has no line starting with a dot: this is the end.
			p.got.endRead = true
			for c != '\n' {
				if p.s.cut == cutInBody && read == 3 {
					return false
				}
				if c, ok = p.c.Byte(); !ok {
					return false
				}
				read++
			}
			// A body of 3 bytes or fewer ("." alone, every RCPT refused)
			// ends before the cut: read, never answered.
			return p.s.cut != cutInBody
		}
		lineStart = c == '\n'
	}
}

// end answers an end of data, read whole: false when the connection is
// to end.
func (p *pipeServer) end() bool {
	p.got.endRead = true
	if p.s.cut == cutAfterEnd {
		return false
	}
	return p.reply("END", 0, p.s.end, endReply[p.s.end]) && p.s.cut != cutAfterEndReply
}

var verdictRcpts = []string{"a@example.com", "b@example.com"}

// runScript runs one transaction of s through the engine and returns its
// result and what the server did.
func runScript(t *testing.T, s script) (*smtpc.Result, served) {
	srv := &pipeServer{s: s}
	cc, fake := fakesmtp.Pipe(t, func(c *fakesmtp.Conn) {
		c.Exact()
		srv.c = c
		srv.serve()
	})
	c := smtpc.New(cc, smtpc.Config{Timeout: 5 * time.Second, Window: 8, MaxLine: smtpc.MaxLineLength})
	require.NoError(t, c.Greet(), "%v", s)
	require.NoError(t, c.Hello("client.test"), "%v", s)
	c.Start()
	body := "Subject: verdict\r\n\r\nbody\r\n"
	if !s.dataMode() && s.cut == cutInBody {
		body = "Subject: verdict\r\n\r\n" + strings.Repeat(strings.Repeat("x", 78)+"\r\n", 3400) // two chunks
	}
	mail, err := c.MailCommand("s@example.com", nil, 0, verdictRcpts)
	require.NoError(t, err)
	tx := &smtpc.Tx{Mail: mail, Body: strings.NewReader(body)}
	for _, r := range verdictRcpts {
		cmd, err := c.RcptCommand(r, nil)
		require.NoError(t, err)
		tx.Rcpts = append(tx.Rcpts, cmd)
	}
	results := make(chan *smtpc.Result, 2)
	tx.Done = func(res *smtpc.Result) { results <- res }
	if c.Send(tx) == nil && c.Wait() == nil {
		c.Quit()
	}
	c.Close(nil)
	var res *smtpc.Result
	select {
	case res = <-results:
	case <-time.After(10 * time.Second):
		t.Fatalf("%v: no result", s)
	}
	require.Empty(t, results, "%v: a second result", s)
	cc.Close()
	fake.Close() // the script has returned
	return res, srv.got
}

// facts are what the client was told, by the server's account: the class
// of each reply the client could take (none past a reply out of
// grammar), whether the end of data was sent, whether a reply in step
// confirmed those before it.
type facts struct {
	mail, data, end replyClass
	rcpt            [2]replyClass
	endSent         bool
	confirmed       bool
	// untrusted: a reply broke the grammar before the transaction was
	// confirmed, so the stream is shifted somewhere: none is its own.
	untrusted bool
	endText   string
}

func factsOf(s script, got served) facts {
	f := facts{endSent: got.endRead, confirmed: got.confirmed}
	for _, r := range got.replies {
		switch r.cmd {
		case "MAIL":
			f.mail = r.class
		case "RCPT":
			f.rcpt[r.idx] = r.class
		case "DATA":
			f.data = r.class
		case "END":
			f.end, f.endText = r.class, endReply[r.class]
		}
		if breaks(r.class) || r.cmd == "END" && r.class == rAddr {
			// Out of grammar, or an address status to the end of data:
			// another command's reply, the stream shifted.
			f.confirmed, f.untrusted = false, true
			break
		}
	}
	return f
}

// flags are the caller's side of an attempt.
type flags struct {
	cancel, close, retryUnknown, lastTry bool
}

func (f flags) String() string {
	who := "neither"
	switch {
	case f.cancel:
		who = "cancel"
	case f.close:
		who = "Close"
	}
	return fmt.Sprintf("%s, RetryUnknown %v, lastTry %v", who, f.retryUnknown, f.lastTry)
}

func allFlags() []flags {
	var out []flags
	for _, who := range []int{0, 1, 2} {
		for _, ru := range []bool{false, true} {
			for _, lt := range []bool{false, true} {
				out = append(out, flags{cancel: who == 1, close: who == 2, retryUnknown: ru, lastTry: lt})
			}
		}
	}
	return out
}

// errWithdrawn is the caller's cancellation in the table.
var errWithdrawn = fmt.Errorf("%w: %w", ErrCanceled, context.Canceled)

// want is the oracle's verdict.
type want struct {
	outcome  outcome
	accepted []string
	refused  map[string]int // recipient → the code of its refusal
	left     map[string]int // recipient → the code of its own 4xx, or 0
	unknown  bool
	attempt  bool
	// what the error must hold: errors.Is each of is; an *SMTPError of
	// code when code is set; an *UnknownOutcomeError when unknown;
	// Temporary when temporary.
	is        []error
	code      int
	temporary bool
	noErr     bool
}

// cause is why the recipients left are left, for the oracle.
type cause struct {
	code    int // an SMTP reply's, 0 for none
	unknown bool
}

// oracle applies the rules to what the client was told.
func oracle(f facts, fl flags) want {
	w := want{attempt: true, refused: map[string]int{}, left: map[string]int{}}
	allLeft := func() {
		for _, r := range verdictRcpts {
			w.left[r] = 0
		}
	}
	// Withdrawn or interrupted before the end of data: nothing of it can
	// have reached anyone, whatever the replies said.
	if !f.endSent && fl.cancel {
		allLeft()
		w.outcome, w.is = outFail, []error{errWithdrawn}
		return w
	}
	if !f.endSent && fl.close {
		allLeft()
		w.outcome, w.is, w.attempt = outHandBack, []error{ErrClosed}, false
		return w
	}
	// settle: the recipients left go by the cause.
	settle := func(c cause) want {
		switch {
		case len(w.left) == 0:
			w.outcome = outDone
			if len(w.accepted) > 0 {
				w.noErr = true
			}
		case c.code/100 == 5:
			w.outcome, w.code = outFail, c.code
		case c.unknown:
			// Retried only with RetryUnknown, never after a cancel, never
			// on the last try; Close (after the end of data, or it would
			// not get here) hands back what would have been retried.
			w.unknown = true
			switch {
			case !fl.retryUnknown || fl.cancel || fl.lastTry:
				w.outcome = outFail
			case fl.close:
				w.outcome, w.is = outHandBack, []error{ErrClosed}
			default:
				w.outcome = outRetry
			}
		default: // a 4xx, or a stream that broke before the end of data
			// Retried unless withdrawn (then never) or on the last try
			// (then failed, temporary); Close hands back what would have
			// been retried.
			w.code = c.code
			switch {
			case fl.cancel:
				w.outcome, w.is = outFail, []error{errWithdrawn}
			case fl.lastTry:
				w.outcome, w.temporary = outFail, true
			case fl.close:
				w.outcome, w.is = outHandBack, []error{ErrClosed}
			default:
				w.outcome, w.temporary = outRetry, true
			}
		}
		return w
	}
	// A stream found out of step: no reply is trusted, a refusal no more
	// than an acceptance.
	if f.untrusted {
		allLeft()
		return settle(cause{unknown: f.endSent})
	}
	// MAIL refused: no transaction, whatever followed.
	if f.mail == rTemp || f.mail == rPerm {
		allLeft()
		return settle(cause{code: code(mailReply[f.mail])})
	}
	var cands []string
	answered, first4xx := true, 0
	for i, r := range verdictRcpts {
		switch c := code(rcptReply[i][f.rcpt[i]] + "000"); f.rcpt[i] {
		case rOK:
			cands = append(cands, r)
		case rTemp:
			w.left[r] = c
			if first4xx == 0 {
				first4xx = c
			}
		case rPerm:
			w.refused[r] = c
		default:
			w.left[r], answered = 0, false
		}
	}
	if len(cands) == 0 && answered {
		// Every RCPT refused: the message went to nobody.
		if len(w.left) == 0 {
			w.outcome = outDone
			w.code = code(rcptReply[0][f.rcpt[0]])
			return w
		}
		return settle(cause{code: first4xx})
	}
	for _, r := range cands {
		w.left[r] = 0
	}
	genuine := f.end == rOK // 2xx, its enhanced code 2.x.x and no address status
	switch {
	case genuine && f.confirmed:
		w.accepted = cands
		for _, r := range cands {
			delete(w.left, r)
		}
		return settle(cause{code: first4xx})
	case f.end == rTemp || f.end == rPerm:
		return settle(cause{code: code(f.endText)})
	case f.endSent:
		return settle(cause{unknown: true})
	case f.data == rTemp || f.data == rPerm:
		return settle(cause{code: code(dataReply[f.data])})
	}
	return settle(cause{})
}

// check compares v with w; it returns the disagreements.
func check(w want, v verdict) []string {
	var bad []string
	fail := func(format string, args ...any) { bad = append(bad, fmt.Sprintf(format, args...)) }
	if v.outcome != w.outcome {
		fail("outcome %v, want %v", v.outcome, w.outcome)
	}
	if v.attempt != w.attempt {
		fail("attempt %v, want %v", v.attempt, w.attempt)
	}
	if v.unknown != w.unknown {
		fail("unknown %v, want %v", v.unknown, w.unknown)
	}
	// Every recipient exactly once.
	seen := map[string]int{}
	for _, r := range v.accepted {
		seen[r]++
	}
	for _, r := range v.refused {
		seen[r.Address]++
	}
	for _, r := range v.left {
		seen[r.Address]++
	}
	for _, r := range verdictRcpts {
		if seen[r] != 1 {
			fail("recipient %s appears %d times across accepted, refused, left", r, seen[r])
		}
	}
	if (v.outcome == outDone) != (len(v.left) == 0) {
		fail("outcome %v with %d recipients left", v.outcome, len(v.left))
	}
	if fmt.Sprint(v.accepted) != fmt.Sprint(w.accepted) {
		fail("accepted %v, want %v", v.accepted, w.accepted)
	}
	if (v.end != nil) != (len(w.accepted) > 0) {
		fail("end reply %v with accepted %v", v.end, w.accepted)
	}
	refused := map[string]int{}
	for _, r := range v.refused {
		var se *SMTPError
		if errors.As(r.Err, &se) {
			refused[r.Address] = se.Code
		} else {
			refused[r.Address] = -1
		}
	}
	if !maps.Equal(refused, w.refused) {
		fail("refused %v, want %v", refused, w.refused)
	}
	left := map[string]int{}
	for _, r := range v.left {
		var se *SMTPError
		switch {
		case r.Err == nil:
			left[r.Address] = 0
		case errors.As(r.Err, &se):
			left[r.Address] = se.Code
		default:
			left[r.Address] = -1
		}
	}
	if !maps.Equal(left, w.left) {
		fail("left %v, want %v", left, w.left)
	}
	if w.noErr && v.err != nil {
		fail("err %v, want none", v.err)
	}
	if !w.noErr && v.outcome != outDone && v.err == nil {
		fail("no err")
	}
	for _, target := range w.is {
		if !errors.Is(v.err, target) {
			fail("err %v is not %v", v.err, target)
		}
	}
	if w.code != 0 {
		var se *SMTPError
		if !errors.As(v.err, &se) || se.Code != w.code {
			fail("err %v, want the %d reply", v.err, w.code)
		}
	}
	var ue *UnknownOutcomeError
	if w.unknown != errors.As(v.err, &ue) {
		fail("err %v: an UnknownOutcomeError %v, want %v", v.err, !w.unknown, w.unknown)
	}
	if w.unknown && !errors.Is(v.err, ErrUnknownOutcome) {
		fail("err %v is not ErrUnknownOutcome", v.err)
	}
	if w.temporary && !(&EmailError{Err: v.err}).Temporary() {
		fail("err %v is not temporary", v.err)
	}
	return bad
}

func TestVerdictTable(t *testing.T) {
	for mode := range fakesmtp.EngineModes {
		byCut := map[cut][]script{}
		for _, s := range scripts(mode) {
			byCut[s.cut] = append(byCut[s.cut], s)
		}
		for c := cutBeforeMail; c <= cutNone; c++ {
			t.Run(fakesmtp.EngineModes[mode].Name+"/"+c.String(), func(t *testing.T) {
				t.Parallel()
				failures := 0
				for _, s := range byCut[c] {
					res, got := runScript(t, s)
					f := factsOf(s, got)
					// The oracle is fed with the server's account; a
					// result that disagrees with it about the end of
					// data is the engine's fault, not decide's.
					switch {
					case res.EndSent && !f.endSent:
						// EndSent means "handed to the connection": the
						// server may have dropped what it read after an
						// out-of-grammar reply of its own, which no client
						// can see. The safe side: the oracle takes the
						// end of data as maybe sent.
						f.endSent = true
					case res.EndSent != f.endSent:
						t.Errorf("%v: engine says end of data sent %v, the server read it %v", s, res.EndSent, f.endSent)
					}
					for _, fl := range allFlags() {
						a := attempt{rcpts: verdictRcpts, res: res, broke: res.Err, lastTry: fl.lastTry, retryUnknown: fl.retryUnknown, closing: fl.close}
						if fl.cancel {
							a.canceled = errWithdrawn
						}
						w, v := oracle(f, fl), decide(a)
						bad := check(w, v)
						if len(bad) > 0 {
							failures++
							if failures <= 20 {
								t.Errorf("%v; %v (facts %+v):\n\t%s", s, fl, f, strings.Join(bad, "\n\t"))
							}
						}
					}
				}
				if failures > 20 {
					t.Errorf("%d cells disagree in all", failures)
				}
			})
		}
	}
}

// The table found it: on the last try, a Close that came after the end of
// data was sent, with a cause that would be retried (a 4xx, or an unknown
// outcome with RetryUnknown), handed the email back (outHandBack,
// ErrClosed), where the reply decides: failed, as on any last try. With a
// spool, handed back means kept for the next Client, which sent it again
// past its retries: for an unknown outcome, a duplicate the retry cap was
// meant to bound.
func TestVerdictTableCloseOnLastTry(t *testing.T) {
	for _, tc := range []struct {
		name string
		s    script
	}{
		{"4xx to the end of data", script{mode: 1, mail: rOK, rcpt: [2]replyClass{rOK, rOK}, data: rOK, end: rTemp, cut: cutNone}},
		{"no reply to the end of data, RetryUnknown", script{mode: 1, mail: rOK, rcpt: [2]replyClass{rOK, rOK}, data: rOK, cut: cutAfterEnd}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			res, got := runScript(t, tc.s)
			fl := flags{close: true, lastTry: true, retryUnknown: true}
			a := attempt{rcpts: verdictRcpts, res: res, broke: res.Err, closing: true, lastTry: true, retryUnknown: true}
			v := decide(a)
			for _, msg := range check(oracle(factsOf(tc.s, got), fl), v) {
				t.Errorf("%v; %v: %s (err %v)", tc.s, fl, msg, v.err)
			}
		})
	}
}

// The table found it: in DATA, when 354 comes although nobody can receive
// the message (MAIL refused, or every RCPT refused), the engine ends the
// DATA with a bare "." and did not record where that end of data starts,
// so when the "." got no reply or one out of grammar, Result.EndSent was
// false although the server read it. decide then took a cancel or a
// Close as coming before the end of data, and the RCPT refusals (5xx:
// refused for good) went into left.
func TestVerdictTableEmptyEndSent(t *testing.T) {
	for _, tc := range []struct {
		name string
		s    script
	}{
		{"MAIL 5xx, cut after the bare end of data", script{mode: 1, mail: rPerm, rcpt: [2]replyClass{rOK, rOK}, data: rOK, cut: cutAfterEnd}},
		{"every RCPT 5xx, 354 to the bare end of data", script{mode: 1, mail: rOK, rcpt: [2]replyClass{rPerm, rPerm}, data: rOK, end: rBad, cut: cutNone}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			res, got := runScript(t, tc.s)
			f := factsOf(tc.s, got)
			if res.EndSent != f.endSent {
				t.Errorf("%v: engine says end of data sent %v, the server read it %v", tc.s, res.EndSent, f.endSent)
			}
			fl := flags{cancel: true}
			a := attempt{rcpts: verdictRcpts, res: res, broke: res.Err, canceled: errWithdrawn}
			for _, msg := range check(oracle(f, fl), decide(a)) {
				t.Errorf("%v; %v: %s", tc.s, fl, msg)
			}
		})
	}
}

// TestHostileUpstreamEngine tests the SMTP engine and the verdict
// together, with no relay in between: a scripted SMTP server on loopback
// TCP (so that replies arrive as a real network delivers them, sometimes
// in one read, sometimes not) misbehaves in one way per case, and the
// engine sends three transactions to it in each of the four modes. The
// server knows what it did with each message; the verdicts must agree
// with it:
//
//   - delivered (a recipient accepted) only if the server kept the message;
//   - not delivered and not unknown only if the server did not keep it.
//
// An unknown outcome may go either way: that is what it says.

// hostile is one misbehaviour. Each hook returns the writes to make, as
// fakesmtp's Play takes them (a line or lines without the final CRLF;
// "AWAIT" waits for the client's next command, "CUT" closes the
// connection, "STALL" stops reading and writing until the test ends). A
// nil hook does what an honest server does.
type hostile struct {
	name string
	// greeting replaces "220 ...".
	greeting []string
	// ehlo replaces the EHLO reply; it gets the honest one.
	ehlo func(honest string) []string
	// reply replaces the reply to a command other than the end of data;
	// tx counts MAIL commands from 1.
	reply func(tx int, verb, honest string) []string
	// end answers the end of data of transaction tx: the writes, and
	// whether the server keeps the message.
	end func(tx int) ([]string, bool)
	// bodyStall stops reading in the middle of the body of transaction 1
	// (a server that stops reading); the body is then large.
	bodyStall bool
	// want, if set, checks what the client made of it.
	want func(t *testing.T, run *engineRun)
}

// engineRun is what one run gave: each transaction's verdict (nil when it
// was never sent) and what the server did.
type engineRun struct {
	mode     string
	verdicts []*verdict
	results  []*smtpc.Result
	setupErr error
	kept     map[int]bool // transaction → the server kept the message
	ended    map[int]bool // transaction → its end of data reached the server
}

const engineTxs = 3

func runEngine(t *testing.T, ext []string, h hostile) *engineRun {
	t.Helper()
	run := &engineRun{kept: map[int]bool{}, ended: map[int]bool{}, verdicts: make([]*verdict, engineTxs), results: make([]*smtpc.Result, engineTxs)}
	var mu sync.Mutex
	srv := fakesmtp.Listen(t, h.session(ext, func(tx int, kept bool) {
		mu.Lock()
		run.ended[tx] = true
		run.kept[tx] = run.kept[tx] || kept
		mu.Unlock()
	}).Serve)
	defer srv.Close()

	nc, err := net.Dial("tcp", srv.Addr)
	require.NoError(t, err)
	sc := smtpc.New(nc, smtpc.Config{Timeout: 500 * time.Millisecond, Window: 8, MaxLine: smtpc.MaxLineLength})
	if err := sc.Greet(); err != nil {
		run.setupErr = err
		nc.Close()
		return run
	}
	if err := sc.Hello("client.test"); err != nil {
		run.setupErr = err
		nc.Close()
		return run
	}
	sc.Start()
	done := make(chan struct{}, engineTxs)
	sent := 0
	for i := range engineTxs {
		body := fmt.Sprintf("Subject: m%d\r\n\r\nbody %d\r\n", i+1, i+1)
		if h.bodyStall && i == 0 {
			body = "Subject: m1\r\n\r\n" + strings.Repeat(strings.Repeat("x", 78)+"\r\n", 200_000) // 16 MB: more than the socket buffers
		}
		rcpts := []string{"r@example.com"}
		mail, err := sc.MailCommand("s@example.com", nil, 0, rcpts)
		require.NoError(t, err)
		rcpt, err := sc.RcptCommand(rcpts[0], nil)
		require.NoError(t, err)
		tx := &smtpc.Tx{Mail: mail, Rcpts: []string{rcpt}, Body: strings.NewReader(body)}
		tx.Done = func(res *smtpc.Result) {
			a := attempt{rcpts: rcpts, res: res}
			if res.Err != nil {
				a.broke = res.Err
			}
			v := decide(a)
			mu.Lock()
			if run.verdicts[i] != nil {
				t.Errorf("transaction %d: a second result", i+1)
			}
			run.verdicts[i], run.results[i] = &v, res
			mu.Unlock()
			done <- struct{}{}
		}
		sent++
		if sc.Send(tx) != nil {
			break
		}
	}
	if sc.Wait() == nil {
		sc.Quit()
	}
	sc.Close(nil)
	for range sent {
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Fatal("a transaction sent never got its result")
		}
	}
	return run
}

// session is the honest server with h's misbehaviour, telling ended of
// each end of data it read and whether it kept the message.
func (h hostile) session(ext []string, ended func(tx int, kept bool)) *fakesmtp.Session {
	return &fakesmtp.Session{Greeting: h.greeting, Ext: ext, Enhanced: true,
		Answer: func(cmd fakesmtp.Cmd) ([]string, bool) {
			switch cmd.Verb {
			case "EHLO":
				if h.ehlo != nil {
					return h.ehlo(cmd.Honest), true
				}
			case "BDAT":
				if h.bodyStall && cmd.Tx == 1 {
					return []string{"STALL"}, true
				}
			case "DATA":
				if h.bodyStall && cmd.Tx == 1 {
					return []string{cmd.Honest, "STALL"}, true
				}
				if h.reply != nil {
					return h.reply(cmd.Tx, cmd.Verb, cmd.Honest), true
				}
			case "CHUNK":
				if h.reply != nil {
					return h.reply(cmd.Tx, "BDAT", cmd.Honest), true
				}
			case "END":
				ws, kept := []string{cmd.Honest}, true
				if h.end != nil {
					ws, kept = h.end(cmd.Tx)
				}
				ended(cmd.Tx, kept)
				return ws, true
			default:
				if h.reply != nil {
					return h.reply(cmd.Tx, cmd.Verb, cmd.Honest), true
				}
			}
			return nil, false
		}}
}

// stray returns a reply hook that writes extra before the honest reply
// to verb in transaction tx, and the honest reply only once the client
// has sent its next command: it crosses the commands already written.
func stray(atTx int, atVerb string, extra ...string) func(int, string, string) []string {
	return func(tx int, verb, honest string) []string {
		if tx == atTx && verb == atVerb {
			return append(append([]string(nil), extra...), "AWAIT", honest)
		}
		return []string{honest}
	}
}

func hostileCorpus() []hostile {
	refuseEnd := func(int) ([]string, bool) { return []string{"554 5.6.0 refused"}, false }
	return []hostile{
		{name: "honest (control)", want: func(t *testing.T, run *engineRun) {
			for i, v := range run.verdicts {
				require.NotNil(t, v, "transaction %d", i+1)
				assert.Equal(t, []string{"r@example.com"}, v.accepted, "transaction %d: %v", i+1, v.err)
			}
		}},
		{name: "the last EHLO line twice, end of data refused",
			ehlo: func(honest string) []string { return []string{honest, "250 ENHANCEDSTATUSCODES"} },
			end:  refuseEnd, want: protocolErrorBeforeAnything},
		{name: "a 250 before any command",
			greeting: []string{"220 mx.hostile.test ESMTP", "250 2.0.0 what"},
			end:      refuseEnd, want: protocolErrorBeforeAnything},
		{name: "a 250 after the EHLO reply, once the client sent its next command",
			ehlo: func(honest string) []string { return []string{honest, "AWAIT", "250 2.0.0 late"} },
			end:  refuseEnd},
		{name: "a stray 250 crossing MAIL, end of data refused",
			reply: stray(1, "MAIL", "250 2.0.0 stray"), end: refuseEnd},
		{name: "two stray 250s crossing MAIL, end of data refused",
			reply: stray(1, "MAIL", "250 2.0.0 stray", "250 2.0.0 stray again"), end: refuseEnd},
		{name: "a stray 250 crossing MAIL, end of data 4xx",
			reply: stray(1, "MAIL", "250 2.0.0 stray"),
			end:   func(int) ([]string, bool) { return []string{"451 4.3.0 try later"}, false }},
		{name: "a stray 250 crossing RCPT, every end refused",
			reply: stray(2, "RCPT", "250 2.0.0 stray"), end: refuseEnd},
		{name: "RCPT answered twice",
			reply: func(tx int, verb, honest string) []string {
				if verb == "RCPT" && tx == 1 {
					return []string{honest, honest}
				}
				return []string{honest}
			}, end: refuseEnd},
		{name: "the end of data answered twice",
			end: func(tx int) ([]string, bool) { return []string{"250 2.0.0 queued", "250 2.0.0 queued"}, true }},
		{name: "a reply to a command not sent yet",
			end: func(tx int) ([]string, bool) {
				return []string{"250 2.0.0 queued", "250 2.0.0 for the next command"}, true
			}},
		{name: "354 to the end of data, message kept",
			end: func(int) ([]string, bool) { return []string{"354 queued"}, true },
			want: func(t *testing.T, run *engineRun) {
				v := run.verdicts[0]
				require.NotNil(t, v)
				assert.True(t, v.unknown, "kept, and answered out of grammar: unknown, never 'not sent'")
			}},
		{name: "250 with a 5.x.x enhanced code to the end of data",
			end: func(int) ([]string, bool) { return []string{"250 5.6.0 rejected, or not"}, true },
			want: func(t *testing.T, run *engineRun) {
				for i, v := range run.verdicts {
					if v != nil && run.results[i].End != nil {
						assert.True(t, v.unknown, "transaction %d: a reply that contradicts itself decides nothing", i+1)
					}
				}
			}},
		{name: "550 with a 2.x.x enhanced code to the end of data",
			end: func(int) ([]string, bool) { return []string{"550 2.0.0 queued, or not"}, true }},
		{name: "250 with a 5.x.x enhanced code to RCPT (the code wins)",
			reply: func(tx int, verb, honest string) []string {
				if verb == "RCPT" {
					return []string{"250 5.1.1 ok, or not"}
				}
				return []string{honest}
			}},
		{name: "354 to MAIL",
			reply: func(tx int, verb, honest string) []string {
				if verb == "MAIL" && tx == 2 {
					return []string{"354 go ahead"}
				}
				return []string{honest}
			}},
		{name: "an unsolicited 421 in the middle",
			reply: func(tx int, verb, honest string) []string {
				if verb == "RCPT" && tx == 2 {
					return []string{"421 4.3.2 shutting down", "CUT"}
				}
				return []string{honest}
			}},
		{name: "cut after the end of data, message kept",
			end: func(tx int) ([]string, bool) {
				if tx == 2 {
					return []string{"CUT"}, true
				}
				return []string{"250 2.0.0 queued"}, true
			}},
		{name: "cut right after a 250 to the end of data",
			end: func(tx int) ([]string, bool) {
				if tx == 1 {
					return []string{"250 2.0.0 queued", "CUT"}, true
				}
				return []string{"250 2.0.0 queued"}, true
			}},
		{name: "a server that stops reading in the middle of a body", bodyStall: true,
			want: func(t *testing.T, run *engineRun) {
				if v := run.verdicts[0]; v != nil {
					assert.Empty(t, v.accepted)
				}
			}},
	}
}

// protocolErrorBeforeAnything: the stray bytes were waiting when the
// session started, so no transaction was delivered, and none was
// written.
func protocolErrorBeforeAnything(t *testing.T, run *engineRun) {
	if run.setupErr != nil {
		assert.ErrorIs(t, run.setupErr, smtpc.ErrProtocol)
		return
	}
	for i, v := range run.verdicts {
		if v == nil {
			continue
		}
		assert.Empty(t, v.accepted, "transaction %d", i+1)
		assert.False(t, v.unknown, "transaction %d: nothing was written", i+1)
		assert.True(t, errors.Is(run.results[i].Err, smtpc.ErrProtocol), "transaction %d: %v", i+1, run.results[i].Err)
	}
	assert.Empty(t, run.ended, "no end of data reached the server")
}

func TestHostileUpstreamEngine(t *testing.T) {
	for _, h := range hostileCorpus() {
		for _, m := range fakesmtp.EngineModes {
			t.Run(h.name+"/"+m.Name, func(t *testing.T) {
				t.Parallel()
				run := runEngine(t, m.Ext, h)
				checkAgainstServer(t, run)
				if h.want != nil {
					h.want(t, run)
				}
			})
		}
	}
}

// checkAgainstServer is the rule: delivered only what the server kept;
// "not delivered" without "unknown" only for what it did not keep.
func checkAgainstServer(t *testing.T, run *engineRun) {
	t.Helper()
	for i, v := range run.verdicts {
		tx := i + 1
		if v == nil {
			assert.False(t, run.kept[tx], "transaction %d was never sent, yet the server kept it", tx)
			continue
		}
		if len(v.accepted) > 0 {
			assert.True(t, run.kept[tx], "transaction %d: a false delivered (reply %v)", tx, run.results[i].End)
		}
		if len(v.accepted) == 0 && !v.unknown {
			assert.False(t, run.kept[tx], "transaction %d: the server kept it, the client says %v without 'unknown': a silent duplicate if retried (%v)", tx, v.outcome, v.err)
		}
	}
}
