package mxrelay_test

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mxrelay/mxrelay"
	"github.com/mxrelay/mxrelay/relaytest"
)

// BenchmarkSend measures emails per second through relaytest on loopback,
// with b.N emails of 1 KiB queued at once (so sessions are full), in both
// encodings and with an injected round-trip time. It asserts nothing about
// speed. Run: go test -run '^$' -bench BenchmarkSend -benchtime 2000x .
func BenchmarkSend(b *testing.B) {
	body := msg("bench") + strings.Repeat("x", 1024-len(msg("bench"))-2) + "\r\n"
	for _, rtt := range []time.Duration{0, 2 * time.Millisecond} {
		for _, binary := range []bool{true, false} {
			name := fmt.Sprintf("rtt=%v/binary=%v", rtt, binary)
			b.Run(name, func(b *testing.B) {
				s := relaytest.NewServer(&relaytest.Options{
					DisableBinary: !binary,
					Latency:       relaytest.Latency{ToServer: rtt / 2, ToClient: rtt / 2},
				})
				defer s.Close()
				c, err := mxrelay.New(s.URL, s.APIKey, &mxrelay.Options{MaxQueueSize: b.N + 1, MaxEmailsPerSession: 100})
				if err != nil {
					b.Fatal(err)
				}
				defer c.Close(context.Background())
				b.SetBytes(int64(len(body)))
				b.ResetTimer()
				start := time.Now()
				var wg sync.WaitGroup
				for range b.N {
					h, err := c.Enqueue(mxrelay.Email{From: "a@example.com", To: []string{"b@example.com"}, Body: strings.NewReader(body)})
					if err != nil {
						b.Fatal(err)
					}
					wg.Add(1)
					go func() {
						defer wg.Done()
						if _, err := h.Wait(context.Background()); err != nil {
							b.Error(err)
						}
					}()
				}
				wg.Wait()
				b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "emails/s")
			})
		}
	}
}
