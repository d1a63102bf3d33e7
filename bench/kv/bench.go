package kv

import (
	"context"
	"fmt"
	"math/rand"
	"sort"
	"sync"
	"time"
)

// BenchResult summarises a load run.
type BenchResult struct {
	Ops, Errors, Retries int
	Elapsed              time.Duration
	Latencies            []time.Duration // sorted
}

// Quantile returns the q-quantile latency (0 <= q <= 1).
func (r BenchResult) Quantile(q float64) time.Duration {
	if len(r.Latencies) == 0 {
		return 0
	}
	return r.Latencies[min(len(r.Latencies)-1, int(q*float64(len(r.Latencies))))]
}

func (r BenchResult) String() string {
	return fmt.Sprintf("%d ops in %v: %.0f ops/s, latency p50 %v p99 %v p999 %v, %d retries, %d errors",
		r.Ops, r.Elapsed.Round(time.Millisecond), float64(r.Ops)/r.Elapsed.Seconds(),
		r.Quantile(0.5), r.Quantile(0.99), r.Quantile(0.999), r.Retries, r.Errors)
}

// Bench runs clients concurrent clients against addr for duration, each
// doing a mix of PUT (30%), GET (60%) and APPEND (10%) on 100 keys.
func Bench(ctx context.Context, addr string, clients int, duration time.Duration) (BenchResult, error) {
	var mu sync.Mutex
	var res BenchResult
	var wg sync.WaitGroup
	start := time.Now()
	stop := start.Add(duration)
	errs := make(chan error, clients)
	for i := 0; i < clients; i++ {
		c, err := Dial(addr)
		if err != nil {
			return res, err
		}
		wg.Add(1)
		go func(c *Client, seed int64) {
			defer wg.Done()
			defer c.Close()
			rng := rand.New(rand.NewSource(seed))
			var lat []time.Duration
			ops, errors, retries := 0, 0, 0
			for time.Now().Before(stop) && ctx.Err() == nil {
				key := fmt.Sprintf("k%d", rng.Intn(100))
				op, val := Get, ""
				switch p := rng.Intn(10); {
				case p < 3:
					op, val = Put, fmt.Sprintf("v%d", rng.Int63())
				case p < 4:
					op, val = Append, "x"
				}
				t0 := time.Now()
				opCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
				r, err := c.Do(opCtx, op, key, val)
				cancel()
				if err != nil {
					errors++
					continue
				}
				lat = append(lat, time.Since(t0))
				ops++
				retries += r.Tries - 1
				if op == Append && r.Status == "ERR" {
					c.Do(ctx, Put, key, "") // the value reached its 1024-byte limit: start again
				}
			}
			mu.Lock()
			res.Ops += ops
			res.Errors += errors
			res.Retries += retries
			res.Latencies = append(res.Latencies, lat...)
			mu.Unlock()
		}(c, int64(i)+1)
	}
	wg.Wait()
	close(errs)
	res.Elapsed = time.Since(start)
	sort.Slice(res.Latencies, func(i, j int) bool { return res.Latencies[i] < res.Latencies[j] })
	return res, nil
}
