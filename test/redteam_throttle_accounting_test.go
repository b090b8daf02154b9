package test

import (
	"math/rand/v2"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"

	"github.com/mxrelay/mxrelay"
	"github.com/mxrelay/mxrelay/relaytest"
)

// slowDowns are "slow down" replies of the kinds throttle feedback
// reads, by the command they answer: 421, 45x with 4.7.x or a throttling
// text, a 5xx with one of DefaultThrottleTexts.
var slowDowns = []struct{ cmd, reply string }{
	{"MAIL", "421 4.7.0 Too many connections, slow down"},
	{"MAIL", "451 4.7.0 Throttling: too many messages"},
	{"RCPT", "452 4.7.1 Rate limit exceeded"},
	{"RCPT", "550 5.7.1 Too many emails per second"},
	{".", "554 5.7.1 Too many emails per second, slow down"},
	{".", "454 4.7.0 Throttling failure: Maximum sending rate exceeded"},
}

// throttleFault picks one of slowDowns, a 1008 close of the relay (its
// rate limit), or, one time in three, one of randomFault's.
func throttleFault(r *rand.Rand, data string) (relaytest.Fault, bool) {
	switch k := r.IntN(len(slowDowns) * 3 / 2); {
	case k < len(slowDowns):
		return relaytest.Fault{Kind: relaytest.ReplaceReply, Command: slowDowns[k].cmd, Reply: slowDowns[k].reply}, false
	case k == len(slowDowns):
		return relaytest.Fault{Kind: relaytest.CloseWebSocket, Command: "RSET", Code: 1008}, false
	}
	return randomFault(r, data)
}

// The accounting rule (checkAccounting, which also checks the Stats by
// Outcome) under an upstream that keeps asking the client to slow down,
// mixed with randomFault's cuts and stalls: throttle feedback's free
// tries, cuts, halved sessions and 1008 closes must leave every email
// ended once, delivered only where the upstream has it, and no copy but
// of an email maybe delivered.
func TestRedteam8AccountingUnderThrottling(t *testing.T) {
	for _, v := range []struct {
		name         string
		chunking     bool
		sessions     int
		retryUnknown bool
		closeAfter   int
	}{
		{"pipelined BDAT, 3 sessions", true, 3, false, 0},
		{"pipelined DATA", false, 1, false, 0},
		{"RetryUnknown", true, 2, true, 0},
		{"closed halfway", true, 2, false, 150},
	} {
		t.Run(v.name, func(t *testing.T) {
			n := accountingRun(t, faultRun{emails: 300, faultEvery: 3, chunking: v.chunking, closeAfter: v.closeAfter, fault: throttleFault, opts: mxrelay.Options{
				CommandTimeout:        300 * time.Millisecond,
				MaxEmailsPerSession:   10,
				MaxConcurrentSessions: v.sessions,
				MaxReconnectAttempts:  50,
				Retries:               3,
				RetryUnknown:          v.retryUnknown,
				MaxQueueSize:          300,
				// Cuts go no lower than this, so that the run ends in
				// seconds: the pacing is not what is checked here.
				Throttle: mxrelay.Throttle{MinRate: 300},
			}})
			if v.closeAfter > 0 {
				assert.GreaterOrEqual(t, n.delivered+n.failed+n.unknown, v.closeAfter)
				return
			}
			assert.Greater(t, n.delivered+n.unknown, 150, "most emails get through, or may have")
		})
	}
}
