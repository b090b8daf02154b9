package test

import (
	"sync/atomic"
	"testing"

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
