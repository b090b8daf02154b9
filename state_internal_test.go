package mxrelay

import (
	"testing"

	"github.com/stretchr/testify/assert"
)

// With several workers, the client's ConnState is the most advanced of
// theirs, FAILED only when all failed; its SessionState is PROCESSING if
// any processes, else FAILED if any failed.
func TestAggregateStates(t *testing.T) {
	for _, tc := range []struct {
		name   string
		states []ConnState
		want   ConnState
	}{
		{"one worker", []ConnState{StateReconnecting}, StateReconnecting},
		{"all failed", []ConnState{StateFailed, StateFailed}, StateFailed},
		{"one failed, one disconnected", []ConnState{StateFailed, StateDisconnected}, StateDisconnected},
		{"one failed, one in a session", []ConnState{StateChannelReady, StateFailed}, StateChannelReady},
		{"reconnecting and a channel closed", []ConnState{StateReconnecting, StateChannelClosed}, StateChannelClosed},
		{"a channel closed and connecting", []ConnState{StateChannelClosed, StateConnecting}, StateConnecting},
		{"authenticated and opening", []ConnState{StateChannelOpening, StateAuthenticated, StateAuthenticating}, StateChannelOpening},
	} {
		t.Run(tc.name, func(t *testing.T) {
			assert.Equal(t, tc.want, mostAdvanced(tc.states))
		})
	}
	for _, tc := range []struct {
		name   string
		states []SessionState
		want   SessionState
	}{
		{"all idle", []SessionState{SessionIdle, SessionIdle}, SessionIdle},
		{"one failed", []SessionState{SessionIdle, SessionFailed}, SessionFailed},
		{"one processing", []SessionState{SessionFailed, SessionProcessing, SessionIdle}, SessionProcessing},
	} {
		t.Run(tc.name, func(t *testing.T) {
			assert.Equal(t, tc.want, busiest(tc.states))
		})
	}
	// Every state has a rank of its own: a state added later must be
	// placed in the order.
	seen := map[int]ConnState{}
	for s := StateDisconnected; s <= StateFailed; s++ {
		r := connRank[s]
		prev, dup := seen[r]
		assert.False(t, dup, "%v and %v share rank %d", s, prev, r)
		seen[r] = s
	}
	assert.Len(t, connRank, len(connStateNames))
}
