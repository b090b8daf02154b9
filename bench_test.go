package mxrelay_test

import (
	"bytes"
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/mxrelay/mxrelay"
	"github.com/mxrelay/mxrelay/internal/bench"
	"github.com/mxrelay/mxrelay/relaytest"
)

// The benchmarks of cmd/mxbench, one measurement per b.N, with the same
// code (internal/bench): emails/s and latency percentiles are reported as
// metrics, nothing about speed is asserted. Each email is 1 KiB to one
// recipient, through relaytest (with the RTT injected) in front of a
// discarding SMTP server. For example:
//
//	go test -run '^$' -bench 'Send/rtt=10ms' -benchtime 2000x .
//	go test -run '^$' -bench Lockstep -benchtime 20x .
//	go run ./cmd/mxbench    # all of it, with medians and ratios, as a table

var benchRTTs = []time.Duration{0, 2 * time.Millisecond, 10 * time.Millisecond, 50 * time.Millisecond}

// BenchmarkSend is our client: b.N emails enqueued at once, on a client
// whose WebSocket is already up, in binary and JSON frames, and in binary
// frames to an upstream that offers PIPELINING but not CHUNKING.
func BenchmarkSend(b *testing.B) {
	modes := []struct {
		name string
		up   bench.Upstream
		c    bench.Client
	}{
		{"binary", bench.Chunking, bench.Client{}},
		{"json", bench.Chunking, bench.Client{JSON: true}},
		{"binary-no-chunking", bench.PipeliningOnly, bench.Client{}},
	}
	for _, rtt := range benchRTTs {
		for _, m := range modes {
			b.Run(fmt.Sprintf("rtt=%v/%s", rtt, m.name), func(b *testing.B) { benchOurs(b, rtt, m.up, m.c) })
		}
	}
}

// BenchmarkSendSessions is our client, binary frames, at 10 ms RTT, with
// 1 to 4 concurrent sessions.
func BenchmarkSendSessions(b *testing.B) {
	for k := 1; k <= 4; k++ {
		b.Run(fmt.Sprintf("sessions=%d", k), func(b *testing.B) {
			benchOurs(b, 10*time.Millisecond, bench.Chunking, bench.Client{Sessions: k})
		})
	}
}

func benchOurs(b *testing.B, rtt time.Duration, up bench.Upstream, cl bench.Client) {
	e, m := benchEnv(b, rtt, up)
	c, err := e.NewClient(cl, b.N)
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close(context.Background())
	ctx := context.Background()
	if _, err := bench.RunOurs(ctx, c, e.Sink, m, 1); err != nil { // brings the WebSocket up
		b.Fatal(err)
	}
	timed(b, func() (bench.Sample, error) { return bench.RunOurs(ctx, c, e.Sink, m, b.N) })
}

// BenchmarkLockstep is go-smtp's Client, lock-step, in one session of b.N
// emails: through the relay (binary frames), and over TCP through a proxy
// with the same RTT (directly at 0).
func BenchmarkLockstep(b *testing.B) {
	for _, rtt := range benchRTTs {
		for _, relay := range []bool{true, false} {
			name := "tcp"
			if relay {
				name = "relay"
			}
			b.Run(fmt.Sprintf("rtt=%v/%s", rtt, name), func(b *testing.B) {
				e, m := benchEnv(b, rtt, bench.Chunking)
				ctx := context.Background()
				dial := e.Direct()
				if relay {
					conn, err := e.DialRelay(ctx, true)
					if err != nil {
						b.Fatal(err)
					}
					defer conn.Close(1000, "")
					dial = bench.RelayChannels(conn)
				}
				timed(b, func() (bench.Sample, error) { return bench.RunLockstep(ctx, dial, e.Sink, m, b.N) })
			})
		}
	}
}

// BenchmarkLargeMessage sends b.N messages of 100 MiB, generated as they
// are read, through our client (binary frames) and with go-smtp's Client
// over TCP, at 0 RTT, and reports MiB/s and the process's peak heap above
// its level before each send.
func BenchmarkLargeMessage(b *testing.B) {
	const size = 100 << 20
	for _, ours := range []bool{true, false} {
		name := "tcp"
		if ours {
			name = "ours"
		}
		b.Run(name, func(b *testing.B) {
			e, m := benchEnv(b, 0, bench.Chunking)
			ctx := context.Background()
			c, err := e.NewClient(bench.Client{}, 1)
			if err != nil {
				b.Fatal(err)
			}
			defer c.Close(ctx)
			var elapsed time.Duration
			var peak uint64
			b.ResetTimer()
			for range b.N {
				var l bench.Large
				if ours {
					l, err = bench.LargeOurs(ctx, c, e, m, size)
				} else {
					l, err = bench.LargeDirect(ctx, e.Direct(), e, m, size)
				}
				if err != nil {
					b.Fatal(err)
				}
				elapsed += l.Elapsed
				peak = max(peak, l.PeakHeap)
			}
			b.StopTimer()
			b.ReportMetric(float64(b.N)*size/(1<<20)/elapsed.Seconds(), "MiB/s")
			b.ReportMetric(float64(peak)/(1<<20), "peak-heap-MiB")
		})
	}
}

func benchEnv(b *testing.B, rtt time.Duration, up bench.Upstream) (*bench.Env, bench.Mail) {
	b.Helper()
	e, err := bench.NewEnv(rtt, up)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(e.Close)
	m, err := bench.NewMail(1024, 1)
	if err != nil {
		b.Fatal(err)
	}
	return e, m
}

// timed times run, fails the benchmark if it failed and reports its
// emails/s and latency percentiles.
func timed(b *testing.B, run func() (bench.Sample, error)) {
	b.ResetTimer()
	s, err := run()
	b.StopTimer()
	if err != nil {
		b.Fatal(err)
	}
	ms := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
	b.ReportMetric(s.Rate(), "emails/s")
	b.ReportMetric(ms(bench.Percentile(s.Latency, 50)), "p50-ms")
	b.ReportMetric(ms(bench.Percentile(s.Latency, 99)), "p99-ms")
}

// BenchmarkEnqueueSpool is the cost of Enqueue itself, which with a
// SpoolDir writes and fsyncs each email (1 KiB) before returning: in
// memory, spooled, and spooled with SpoolSyncAll, one caller at a time
// and from parallel callers (whose fsyncs the file system may overlap).
// The relay is down, so nothing is sent during the measurement.
//
//	go test -run '^$' -bench EnqueueSpool -benchtime 2000x .
func BenchmarkEnqueueSpool(b *testing.B) {
	m, err := bench.NewMail(1024, 1)
	if err != nil {
		b.Fatal(err)
	}
	for _, v := range []struct {
		name       string
		spool, all bool
	}{{"memory", false, false}, {"spool", true, false}, {"spool-syncall", true, true}} {
		for _, parallel := range []bool{false, true} {
			name := v.name + map[bool]string{false: "/serial", true: "/parallel"}[parallel]
			b.Run(name, func(b *testing.B) {
				relay := relaytest.NewServer(nil)
				defer relay.Close()
				relay.SetDown(true)
				o := &mxrelay.Options{MaxQueueSize: b.N + 1, ReconnectInterval: time.Hour, SpoolSyncAll: v.all}
				if v.spool {
					o.SpoolDir = b.TempDir()
				}
				c, err := mxrelay.New(relay.URL, relay.APIKey, o)
				if err != nil {
					b.Fatal(err)
				}
				defer func() {
					ctx, cancel := context.WithCancel(context.Background())
					cancel()
					c.Close(ctx)
				}()
				enqueue := func() {
					if _, err := c.Enqueue(mxrelay.Email{From: m.From, To: m.To, Body: bytes.NewReader(m.Body)}); err != nil {
						b.Error(err)
					}
				}
				b.ResetTimer()
				if parallel {
					b.SetParallelism(4)
					b.RunParallel(func(pb *testing.PB) {
						for pb.Next() {
							enqueue()
						}
					})
				} else {
					for range b.N {
						enqueue()
					}
				}
				b.StopTimer()
				b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "emails/s")
			})
		}
	}
}
