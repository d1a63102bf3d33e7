package vmm

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"testing"
)

// BenchmarkPrecopy measures a live transfer (pre-copy) of a guest whose
// heap is full of data, for three RAM sizes, to a receiver in the same
// process over a pipe: idle (guests/dirty writing one page, with an exit
// every ~20,000 loop iterations) and dirty (writing a 16 MiB working set
// as fast as it can, one exit per 64 pages). Reported: rounds (the full
// copy included), MiB sent, the total time, the final pause (the guest
// stopped), the wait for an exit once the pause was asked for, and the
// pages sent in the pause.
//
//	FTVM_BACKEND=kvm go test -run XXX -bench BenchmarkPrecopy -benchtime 1x ./vmm
func BenchmarkPrecopy(b *testing.B) {
	loads := []struct{ name, cmdline string }{
		{"idle", "pages=1 every=1 spin=20000"},
		{"dirty16MiB", "pages=4096 every=64"},
	}
	img := loadGuest(b, "dirty")
	be := requireBackend(b)
	for _, mem := range []uint64{64 << 20, 256 << 20, 1 << 30} {
		for _, load := range loads {
			b.Run(fmt.Sprintf("%s/mem=%dMiB/%s", be.Name(), mem>>20, load.name), func(b *testing.B) {
				for i := 0; i < b.N; i++ {
					b.StopTimer()
					world := newMarkerWorld("")
					m, err := New(be, img, Config{MemSize: mem, Cmdline: load.cmdline}, world)
					if err != nil {
						b.Fatal(err)
					}
					heap := m.ram[m.layout.HeapStart:m.layout.HeapEnd]
					for j := 0; j+8 <= len(heap); j += 8 {
						binary.LittleEndian.PutUint64(heap[j:], uint64(j)|1)
					}
					ctx, cancel := context.WithCancel(context.Background())
					runErr := make(chan error, 1)
					go func() { _, err := m.Run(ctx); runErr <- err }()
					<-world.busy
					pr, pw := io.Pipe()
					recv := make(chan error, 1)
					go func() {
						_, err := ReceivePrecopy(pr)
						io.Copy(io.Discard, pr)
						recv <- err
					}()
					b.StartTimer()
					p, err := m.StartPrecopy(pw, PrecopyOptions{})
					if err != nil {
						b.Fatal(err)
					}
					st, err := p.Wait()
					pw.Close()
					rerr := <-recv
					b.StopTimer()
					cancel()
					if e := <-runErr; !errors.Is(e, ErrInterrupted) {
						b.Fatalf("the run ended with %v", e)
					}
					m.Close()
					if err != nil || rerr != nil {
						b.Fatalf("pre-copy: %v; receiver: %v", err, rerr)
					}
					b.ReportMetric(float64(len(st.Rounds)), "rounds")
					b.ReportMetric(float64(st.Bytes())/(1<<20), "MiB-sent")
					b.ReportMetric(float64(st.Total.Microseconds())/1000, "total-ms")
					b.ReportMetric(float64(st.Pause.Microseconds())/1000, "pause-ms")
					b.ReportMetric(float64(st.WaitForExit.Microseconds())/1000, "wait-exit-ms")
					b.ReportMetric(float64(st.Final.Pages), "final-pages")
					if st.Tracking != nil {
						b.Logf("no dirty tracking (stop-and-copy): %v", st.Tracking)
					}
					for r, round := range st.Rounds {
						b.Logf("round %d: %d pages, %.1f MiB, %v", r, round.Pages, float64(round.Bytes)/(1<<20), round.Time)
					}
				}
			})
		}
	}
}
