package test

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mxrelay/mxrelay"
	"github.com/mxrelay/mxrelay/internal/testkit"
)

// A RateLimit whose next token is further off than a session can wait
// (SessionTimeout less CommandTimeout) ends the session rather than hold
// it: the next one must wait for the token, not open at once, find the
// same wait, and end again, a session a few milliseconds for as long as
// the wait lasts. Here the second email's token is a minute off and a
// session lasts 30 s: two sessions do. (Under the bubble's clock a loop
// of sessions never lets the minute pass: at 20 sessions the test
// withdraws the email so that it ends.)
func TestRedteam8RateLimitWaitOpensNoSessionLoop(t *testing.T) {
	testkit.Bubble(t, func(t *testing.T) {
		s := testkit.NewRelay(t, nil)
		var sessions atomic.Int64
		var second atomic.Pointer[mxrelay.Handle]
		c := testkit.NewClient(t, s, &mxrelay.Options{
			RateLimit:      mxrelay.RateLimit{Emails: 1, Per: time.Minute},
			SessionTimeout: 30 * time.Second,
			CommandTimeout: 3 * time.Second,
			OnEvent: func(e mxrelay.Event) {
				if e.Type == mxrelay.EventSessionStarted && sessions.Add(1) == 20 {
					second.Load().Cancel()
				}
			},
		})
		h1, err := c.Enqueue(testkit.Mail("first"))
		require.NoError(t, err)
		h2, err := c.Enqueue(testkit.Mail("second"))
		require.NoError(t, err)
		second.Store(h2)
		// The bubble's clock: a minute passes in no time, and a hang is
		// a deadlock synctest reports.
		for _, h := range []*mxrelay.Handle{h1, h2} {
			res, err := h.Wait(context.Background())
			require.NotNil(t, res)
			assert.NoError(t, err)
			assert.Equal(t, mxrelay.OutcomeDelivered, res.Outcome)
		}
		assert.LessOrEqual(t, sessions.Load(), int64(2), "sessions opened while the rate limit made them wait")
		assert.Equal(t, []string{"first", "second"}, testkit.Subjects(s))
	})
}
