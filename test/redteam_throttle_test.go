package test

import (
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mxrelay/mxrelay"
	"github.com/mxrelay/mxrelay/internal/fakesmtp"
	"github.com/mxrelay/mxrelay/internal/testkit"
	"github.com/mxrelay/mxrelay/relaytest"
)

// Red team 8: throttle feedback against hostile upstreams. Each test
// holds one promise of README's Guarantees where a "slow down" reply
// meets another rule (an unknown outcome, a refusal of one recipient).

// throttleAfterEnd is an upstream that, on its first connection, answers
// the end of data 250 and then the next command (the one that would
// confirm that 250: RSET, NOOP or QUIT) with a 421 that asks the client
// to slow down, and closes. Later connections are honest. It counts the
// ends of data it read.
type throttleAfterEnd struct {
	ext  []string
	ends atomic.Int64
}

func (u *throttleAfterEnd) serve(c *fakesmtp.Conn) {
	ended := false
	(&fakesmtp.Session{Ext: u.ext, Enhanced: true, Answer: func(cmd fakesmtp.Cmd) ([]string, bool) {
		switch {
		case cmd.Verb == "END":
			u.ends.Add(1)
			ended = true
		case ended && c.N == 1 && cmd.Verb != "CHUNK" && cmd.Verb != "BDAT":
			return []string{"421 4.7.0 Too many messages, slow down", "CUT"}, true
		}
		return nil, false
	}}).Serve(c)
}

// A 250 to the end of data that the next reply, a "slow down" 421, did
// not confirm leaves the email unknown: the upstream may have it. It is
// not the upstream refusing it, so it takes no free try: with
// RetryUnknown and no retries left it is not sent again (a second copy
// the retry cap was meant to bound), and without RetryUnknown never.
func TestRedteam8UnknownOutcomeTakesNoFreeTry(t *testing.T) {
	for _, m := range fakesmtp.EngineModes {
		for _, retryUnknown := range []bool{false, true} {
			name := m.Name + "/RetryUnknown=" + map[bool]string{false: "no", true: "yes"}[retryUnknown]
			t.Run(name, func(t *testing.T) {
				u := &throttleAfterEnd{ext: m.Ext}
				up := fakesmtp.Listen(t, u.serve)
				s := testkit.NewRelay(t, &relaytest.Options{UpstreamAddr: up.Addr})
				c := testkit.NewClient(t, s, &mxrelay.Options{RetryUnknown: retryUnknown})
				res, err := c.Send(testkit.Ctx(t), testkit.Mail("maybe"), mxrelay.WithRetries(0))
				require.ErrorIs(t, err, mxrelay.ErrUnknownOutcome)
				assert.Equal(t, mxrelay.OutcomeUnknown, res.Outcome)
				assert.True(t, res.MaybeDelivered)
				assert.Equal(t, 1, res.Attempts, "no retry was left")
				assert.EqualValues(t, 1, u.ends.Load(), "the end of data went out once")
			})
		}
	}
}

// rcptThrottle is an upstream that refuses the recipient slow@ with a 5xx
// throttling text (DefaultThrottleTexts) the first refuse times, and
// keeps every message it reads with a recipient, by recipients.
type rcptThrottle struct {
	ext    []string
	refuse int64
	n      atomic.Int64
	kept   atomic.Pointer[[]string]
}

func (u *rcptThrottle) serve(c *fakesmtp.Conn) {
	var rcpts []string
	(&fakesmtp.Session{Ext: u.ext, Enhanced: true, Answer: func(cmd fakesmtp.Cmd) ([]string, bool) {
		switch cmd.Verb {
		case "MAIL":
			rcpts = nil
		case "RCPT":
			if strings.Contains(cmd.Line, "slow@") && u.n.Add(1) <= u.refuse {
				return []string{"550 5.7.1 Rate limit exceeded for this recipient"}, true
			}
			rcpts = append(rcpts, cmd.Line)
		case "END":
			if len(rcpts) == 0 {
				// Refused by every RCPT: nobody gets it (the client
				// counts it so, whatever this 250 says).
				break
			}
			for {
				old := u.kept.Load()
				var next []string
				if old != nil {
					next = append(next, *old...)
				}
				next = append(next, strings.Join(rcpts, ","))
				if u.kept.CompareAndSwap(old, &next) {
					break
				}
			}
		}
		return nil, false
	}}).Serve(c)
}

func (u *rcptThrottle) messages() []string {
	if p := u.kept.Load(); p != nil {
		return *p
	}
	return nil
}

// A 5xx with a throttling text to one RCPT of two is temporary: the
// other recipient has the email once, and the throttled one gets it in a
// later transaction of its own, without spending a retry; past its free
// tries and its retries it is refused with that reply.
func TestRedteam8ThrottledRecipientGoesAgainAlone(t *testing.T) {
	for _, m := range fakesmtp.EngineModes {
		t.Run(m.Name, func(t *testing.T) {
			u := &rcptThrottle{ext: m.Ext, refuse: 1}
			up := fakesmtp.Listen(t, u.serve)
			s := testkit.NewRelay(t, &relaytest.Options{UpstreamAddr: up.Addr})
			c := testkit.NewClient(t, s, &mxrelay.Options{Throttle: mxrelay.Throttle{MinRate: 1000}})
			res, err := c.Send(testkit.Ctx(t), testkit.Mail("two", "fast@example.com", "slow@example.com"), mxrelay.WithRetries(0))
			require.NoError(t, err)
			assert.Equal(t, mxrelay.OutcomeDelivered, res.Outcome)
			assert.ElementsMatch(t, []string{"fast@example.com", "slow@example.com"}, res.Accepted)
			assert.Empty(t, res.Rejected)
			assert.Equal(t, 2, res.Attempts)
			msgs := u.messages()
			require.Len(t, msgs, 2, "one transaction each: %q", msgs)
			assert.Contains(t, msgs[0], "fast@")
			assert.NotContains(t, msgs[0], "slow@")
			assert.Contains(t, msgs[1], "slow@")
			assert.NotContains(t, msgs[1], "fast@", "no second copy to the recipient that had it")
		})
	}
	t.Run("throttled forever", func(t *testing.T) {
		u := &rcptThrottle{ext: fakesmtp.EngineModes[0].Ext, refuse: 1 << 30}
		up := fakesmtp.Listen(t, u.serve)
		s := testkit.NewRelay(t, &relaytest.Options{UpstreamAddr: up.Addr})
		c := testkit.NewClient(t, s, &mxrelay.Options{Throttle: mxrelay.Throttle{MinRate: 1000}})
		res, err := c.Send(testkit.Ctx(t), testkit.Mail("two", "fast@example.com", "slow@example.com"), mxrelay.WithRetries(1))
		require.NoError(t, err, "delivered to one of two")
		assert.Equal(t, mxrelay.OutcomeDelivered, res.Outcome)
		assert.Equal(t, []string{"fast@example.com"}, res.Accepted)
		require.Len(t, res.Rejected, 1)
		assert.Equal(t, "slow@example.com", res.Rejected[0].Address)
		assert.Equal(t, 550, res.Rejected[0].Code)
		assert.Equal(t, 10, res.Attempts, "the first, 8 free tries and one retry")
		assert.Len(t, u.messages(), 1, "the message went once")
	})
}

// A "slow down" 421 in the middle of a pipeline: the upstream answers the
// first email's end of data 250, then the next command 421 4.7.0 and
// closes. The first email is unknown (its 250 unconfirmed), and those
// behind it in flight, whose commands the upstream never processed, go
// again without spending a retry: delivered on the next connection, once
// each.
func TestRedteam8Throttled421MidPipeline(t *testing.T) {
	for _, m := range fakesmtp.EngineModes {
		t.Run(m.Name, func(t *testing.T) {
			u := &throttleAfterEnd{ext: m.Ext}
			up := fakesmtp.Listen(t, u.serve)
			s := testkit.NewRelay(t, &relaytest.Options{UpstreamAddr: up.Addr})
			c := testkit.NewClient(t, s, &mxrelay.Options{MaxEmailsPerSession: 5, BatchWait: time.Second})
			var hs []*mxrelay.Handle
			for i := range 5 {
				h, err := c.Enqueue(testkit.Mail(fmt.Sprint("p", i)), mxrelay.WithRetries(0))
				require.NoError(t, err)
				hs = append(hs, h)
			}
			for i, res := range testkit.Results(t, hs) {
				if i == 0 {
					assert.Equal(t, mxrelay.OutcomeUnknown, res.Outcome, "%v", res.Err)
					assert.Equal(t, 1, res.Attempts)
					continue
				}
				assert.Equal(t, mxrelay.OutcomeDelivered, res.Outcome, "p%d: %v", i, res.Err)
				// In flight when the 421 came: the next email, and in a
				// BDAT window all of them. The others waited in the queue.
				want := 1
				if i == 1 || m.Name == "pipelined BDAT" {
					want = 2
				}
				assert.Equal(t, want, res.Attempts, "p%d", i)
			}
			assert.EqualValues(t, 5, u.ends.Load(), "each end of data went out once")
			assert.EqualValues(t, 1, c.Stats().ThrottleCuts)
		})
	}
}
