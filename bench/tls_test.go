package bench

import (
	"context"
	"syscall"
	"testing"
	"time"
)

// cpuSeconds is the CPU time (user + system) this process has used.
func cpuSeconds() float64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	tv := func(t syscall.Timeval) float64 { return float64(t.Sec) + float64(t.Usec)/1e6 }
	return tv(ru.Utime) + tv(ru.Stime)
}

// BenchmarkNetsinkTLS measures what TLS on the logging channel costs:
// netsink receive under FT with the channel over mutual TLS and in clear,
// alternately in one run, each for the same wall time. It reports the
// guest-counted Mbit/s of each, their ratio, and the CPU seconds this
// process (primary, backup and the sending client together) spent per
// second of wall time and per Gbit received.
//
//	go test ./bench -run '^$' -bench NetsinkTLS -benchtime 1x
func BenchmarkNetsinkTLS(b *testing.B) {
	be := requireBackend(b)
	img := loadImage(b, "netsink")
	const d = 3 * time.Second
	const reps = 3
	type figures struct{ mbps, wall, cpu, gbit float64 }
	measure := func(mode Mode, rep int) figures {
		spec, addr, _, err := userNet(7001)
		if err != nil {
			b.Fatal(err)
		}
		var mbps float64
		var nerr error
		cpu0, began := cpuSeconds(), time.Now()
		run := startVM(context.Background(), mode, vmSpec{Backend: be, Image: img, Config: nicConfig(spec, ""), Net: spec, Ready: func(ctx context.Context) {
			mbps, nerr = BlastSink(ctx, addr, d)
		}}, b.TempDir())
		f := figures{mbps: mbps, wall: time.Since(began).Seconds(), cpu: cpuSeconds() - cpu0, gbit: mbps * d.Seconds() / 1e3}
		if run.Err != nil {
			nerr = run.Err
		}
		if nerr != nil {
			b.Fatalf("%s: %v", mode, nerr)
		}
		b.Logf("%-9s rep %d: %7.1f Mbit/s received, %.2f s wall, %.2f CPU-s (%.2f CPU-s per wall s), log %.1f Mbit/s",
			mode, rep, f.mbps, f.wall, f.cpu, f.cpu/f.wall, logMbps(run))
		return f
	}
	for i := 0; i < b.N; i++ {
		var tls, clear figures
		for rep := 0; rep < reps; rep++ {
			// Alternate, so that drift in the machine's load hits both.
			c := measure(FTNoTLS, rep)
			t := measure(FT, rep)
			clear.mbps, clear.wall, clear.cpu, clear.gbit = clear.mbps+c.mbps/reps, clear.wall+c.wall, clear.cpu+c.cpu, clear.gbit+c.gbit
			tls.mbps, tls.wall, tls.cpu, tls.gbit = tls.mbps+t.mbps/reps, tls.wall+t.wall, tls.cpu+t.cpu, tls.gbit+t.gbit
		}
		b.Logf("ft-no-tls: %.1f Mbit/s, %.2f CPU-s in %.2f s wall (%.2f CPU-s/Gbit)", clear.mbps, clear.cpu, clear.wall, clear.cpu/clear.gbit)
		b.Logf("ft (TLS):  %.1f Mbit/s, %.2f CPU-s in %.2f s wall (%.2f CPU-s/Gbit)", tls.mbps, tls.cpu, tls.wall, tls.cpu/tls.gbit)
		b.Logf("TLS / no TLS: throughput %.3f, CPU-s per Gbit %.3f", tls.mbps/clear.mbps, (tls.cpu/tls.gbit)/(clear.cpu/clear.gbit))
		b.ReportMetric(tls.mbps, "Mbit/s-tls")
		b.ReportMetric(clear.mbps, "Mbit/s-clear")
		b.ReportMetric(tls.mbps/clear.mbps, "ratio")
		b.ReportMetric(tls.cpu/tls.gbit, "CPU-s/Gbit-tls")
		b.ReportMetric(clear.cpu/clear.gbit, "CPU-s/Gbit-clear")
	}
}
