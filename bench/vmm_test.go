package bench

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"regexp"
	"strconv"
	"testing"
	"time"

	"github.com/ftvm/ftvm/vmm"
	"github.com/ftvm/ftvm/vmm/backend"
	"github.com/ftvm/ftvm/vmm/vmmtest"
)

func TestMain(m *testing.M) {
	vmmtest.BuildGuests("../guests")
	os.Exit(m.Run())
}

func requireBackend(tb testing.TB) backend.Backend { tb.Helper(); return vmmtest.Backend(tb) }

func loadImage(tb testing.TB, name string) *vmm.Image {
	tb.Helper()
	file, err := os.ReadFile("../guests/build/" + name + ".elf")
	if err != nil {
		tb.Fatal(err)
	}
	img, err := vmm.LoadELF(file)
	if err != nil {
		tb.Fatal(err)
	}
	return img
}

// runPlain runs a guest in a live world and returns its console output.
func runPlain(tb testing.TB, img *vmm.Image, cfg vmm.Config) string {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	var out bytes.Buffer
	m, err := vmm.New(requireBackend(tb), img, cfg, vmm.NewLiveWorld(ctx, nil, &out))
	if err != nil {
		tb.Fatal(err)
	}
	defer m.Close()
	if res, err := m.Run(ctx); err != nil || res.Status != 0 {
		tb.Fatalf("run: status %d, %v\n%s", res.Status, err, out.String())
	}
	return out.String()
}

// BenchmarkCPUNative measures the cpu guest's compute speed in guest
// instructions per second: one configuration with very few exits (the
// native speed) and the default one (one RDTSC exit per 32,000 iterations).
func BenchmarkCPUNative(b *testing.B) {
	requireBackend(b)
	img := loadImage(b, "cpu")
	for _, args := range []string{"rounds=10 work=50000000", "rounds=10000 work=32000"} {
		b.Run(args, func(b *testing.B) {
			var insns float64
			for i := 0; i < b.N; i++ {
				out := runPlain(b, img, vmm.Config{Cmdline: args})
				insns += cpuInstructions(b, out)
			}
			b.ReportMetric(insns/b.Elapsed().Seconds()/1e6, "Minsn/s")
		})
	}
}

// cpuInstructions is rounds*work*insns_per_iter from the cpu guest's report.
func cpuInstructions(tb testing.TB, out string) float64 {
	m := regexp.MustCompile(`rounds=(\d+) work=(\d+)`).FindStringSubmatch(out)
	k := regexp.MustCompile(`insns_per_iter=(\d+)`).FindStringSubmatch(out)
	if m == nil || k == nil {
		tb.Fatalf("cpu output not understood:\n%s", out)
	}
	r, _ := strconv.ParseFloat(m[1], 64)
	w, _ := strconv.ParseFloat(m[2], 64)
	n, _ := strconv.ParseFloat(k[1], 64)
	return r * w * n
}

// BenchmarkExitRoundTrip measures one guest-caused exit, VMM work included:
// the cpu guest with work=1 is nearly all RDTSC exits.
func BenchmarkExitRoundTrip(b *testing.B) {
	requireBackend(b)
	img := loadImage(b, "cpu")
	const rounds = 20000
	for i := 0; i < b.N; i++ {
		runPlain(b, img, vmm.Config{Cmdline: fmt.Sprintf("rounds=%d work=1", rounds)})
	}
	b.ReportMetric(float64(b.Elapsed().Microseconds())/float64(b.N*rounds), "us/exit")
}
