package test

import (
	"fmt"
	"math"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"

	"github.com/mxrelay/mxrelay"
	"github.com/mxrelay/mxrelay/internal/testkit"
	"github.com/mxrelay/mxrelay/relaytest"
)

// PipelineWindow has no upper bound, and math.MaxInt reads as "no
// bound": the window, stored as an int32, wrapped to 0 or below at 2^31
// and past, and Send waited for good for a free place that could never
// be. Every email must be delivered, whatever the window's most, fixed or
// adaptive. On the bubble's clock: a stall is a deadlock there.
func TestRedteam13HugePipelineWindowDoesNotStall(t *testing.T) {
	for _, most := range []int{math.MaxInt32 + 1, 1 << 32, math.MaxInt} {
		for _, fixed := range []bool{true, false} {
			t.Run(fmt.Sprint(most, fixed), func(t *testing.T) {
				testkit.Bubble(t, func(t *testing.T) {
					s := testkit.NewRelay(t, &relaytest.Options{})
					c := testkit.NewClient(t, s, &mxrelay.Options{PipelineWindow: most, FixedWindow: fixed, MaxEmailsPerSession: 50, BatchWait: time.Second})
					for i, res := range testkit.EnqueueBatch(t, c, 50) {
						assert.Equal(t, mxrelay.OutcomeDelivered, res.Outcome, "p%d: %v", i, res.Err)
					}
				})
			})
		}
	}
}
