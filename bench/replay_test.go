package bench

import (
	"bytes"
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/ftvm/ftvm/replay"
	"github.com/ftvm/ftvm/vmm"
	"github.com/ftvm/ftvm/vmm/backend"
	"github.com/ftvm/ftvm/vmm/session"
)

// run runs img once in the given mode and returns the log it wrote (record).
func run(tb testing.TB, mode string, img *vmm.Image, cfg vmm.Config, input string, log []byte) []byte {
	tb.Helper()
	b := requireBackend(tb)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	live := vmm.NewLiveWorld(ctx, strings.NewReader(input), &bytes.Buffer{})
	var end session.End
	var err error
	var out bytes.Buffer
	switch mode {
	case "record":
		enc := replay.NewEncoder(&out)
		if end, err = session.Record(ctx, b, img, cfg, "bench", live, enc); err == nil {
			err = enc.Flush()
		}
	case "replay":
		pick := func() (backend.Backend, error) { return b, nil }
		end, err = session.Replay(ctx, pick, img, replay.NewDecoder(bytes.NewReader(log)), nil)
	default:
		end, err = session.RunOn(ctx, b, img, cfg, live)
	}
	if err != nil || end.Result.Status != 0 || end.Fault != nil {
		tb.Fatalf("%s: status %d, %v %v", mode, end.Result.Status, err, end.Err())
	}
	return out.Bytes()
}

// BenchmarkRecordReplay runs cpu and echo plain, recorded and replayed,
// alternating the three in each iteration so that machine noise hits all
// alike, and reports each mode's time relative to the plain run.
func BenchmarkRecordReplay(b *testing.B) {
	requireBackend(b)
	var lines strings.Builder
	for i := 0; i < 2000; i++ {
		fmt.Fprintf(&lines, "line %d of the echo benchmark\n", i)
	}
	workloads := []struct {
		guest, input string
		cfg          vmm.Config
	}{
		{"cpu", "", vmm.Config{Cmdline: "rounds=10000 work=32000"}},
		{"echo", lines.String(), vmm.Config{}},
	}
	for _, w := range workloads {
		b.Run(w.guest, func(b *testing.B) {
			img := loadImage(b, w.guest)
			var plain, recd, repd time.Duration
			var log []byte
			for i := 0; i < b.N; i++ {
				t0 := time.Now()
				run(b, "plain", img, w.cfg, w.input, nil)
				t1 := time.Now()
				log = run(b, "record", img, w.cfg, w.input, nil)
				t2 := time.Now()
				run(b, "replay", img, w.cfg, w.input, log)
				t3 := time.Now()
				plain, recd, repd = plain+t1.Sub(t0), recd+t2.Sub(t1), repd+t3.Sub(t2)
			}
			b.ReportMetric(float64(recd)/float64(plain), "record/plain")
			b.ReportMetric(float64(repd)/float64(plain), "replay/plain")
			b.ReportMetric(float64(len(log)), "log-bytes")
			reportKinds(b, log)
		})
	}
}

// reportKinds reports the encoded bytes per entry of each kind in log.
func reportKinds(b *testing.B, log []byte) {
	dec := replay.NewDecoder(bytes.NewReader(log))
	count, size := map[replay.Kind]int{}, map[replay.Kind]int{}
	for {
		e, err := dec.Next()
		if err != nil {
			break
		}
		count[e.Kind]++
		size[e.Kind] += dec.EntrySize()
	}
	for k, n := range count {
		if n >= 10 {
			b.ReportMetric(float64(size[k])/float64(n), k.String()+"-bytes/entry")
		}
	}
}
