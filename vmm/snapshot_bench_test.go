package vmm

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"path/filepath"
	"testing"

	"github.com/ftvm/ftvm/replay"
)

// BenchmarkSnapshot measures what a snapshot costs for the default memory
// size and for 256 MiB: capture (the time the guest is stopped: FP state,
// page permissions, finding and copying the non-zero pages) and the file
// written from it (encode, CRC, sync, rename), for a guest that has touched
// only its image (heap=untouched) and one whose whole heap holds data
// (heap=full). file-MiB is the size of the snapshot file. capture is the
// pause with the buffer CaptureAfter prepares; capture-cold the same into
// freshly allocated memory.
//
//	go test -run XXX -bench BenchmarkSnapshot -benchtime 5x ./vmm
func BenchmarkSnapshot(b *testing.B) {
	for _, mem := range []uint64{DefaultMemory, 256 << 20} {
		for _, full := range []bool{false, true} {
			heap := "untouched"
			if full {
				heap = "full"
			}
			name := fmt.Sprintf("mem=%dMiB/heap=%s", mem>>20, heap)
			m, err := New(requireBackend(b), loadGuest(b, "hello"), Config{MemSize: mem}, &scriptedWorld{})
			if err != nil {
				b.Fatal(err)
			}
			if full {
				heapBytes := m.ram[m.layout.HeapStart:m.layout.HeapEnd]
				for i := 0; i+8 <= len(heapBytes); i += 8 {
					binary.LittleEndian.PutUint64(heapBytes[i:], uint64(i)|1)
				}
			}
			regs, err := m.Regs()
			if err != nil {
				b.Fatal(err)
			}
			var st *State
			b.Run(name+"/capture-cold", func(b *testing.B) {
				for i := 0; i < b.N; i++ {
					m.vcpu.Do(func() { st, err = m.captureState(&regs) })
					if err != nil {
						b.Fatal(err)
					}
				}
			})
			b.Run(name+"/capture", func(b *testing.B) {
				for i := 0; i < b.N; i++ {
					b.StopTimer()
					m.stage = make(chan []byte, 1)
					m.stage <- faultedBuffer(m.cfg.MemSize)
					b.StartTimer()
					m.vcpu.Do(func() { st, err = m.captureState(&regs) })
					if err != nil {
						b.Fatal(err)
					}
				}
				var size countWriter
				if err := st.Encode(&size); err != nil {
					b.Fatal(err)
				}
				b.ReportMetric(float64(size)/(1<<20), "file-MiB")
				b.ReportMetric(float64(st.Pages()), "pages")
			})
			b.Run(name+"/write", func(b *testing.B) {
				path := filepath.Join(b.TempDir(), "s.snap")
				for i := 0; i < b.N; i++ {
					if err := st.WriteFile(path); err != nil {
						b.Fatal(err)
					}
				}
			})
			b.Run(name+"/restore", func(b *testing.B) {
				for i := 0; i < b.N; i++ {
					if err := m.restore(st); err != nil {
						b.Fatal(err)
					}
				}
			})
			m.Close()
		}
	}
}

type countWriter int64

func (c *countWriter) Write(p []byte) (int, error) { *c += countWriter(len(p)); return len(p), nil }

var _ io.Writer = (*countWriter)(nil)

// TestCaptureRestoreRoundTrip: a machine restored from a captured state
// has the same state digest, registers and FP state, with pages written
// after loading (heap data) carried and pages zeroed again carried too.
func TestCaptureRestoreRoundTrip(t *testing.T) {
	b := requireBackend(t)
	m, err := New(b, loadGuest(t, "hello"), Config{MemSize: 8 << 20}, &scriptedWorld{})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	copy(m.ram[m.layout.HeapStart:], "heap data")
	regs := replay.Regs{RAX: 7, RIP: 0x100000, RSP: m.layout.StackTop, RFLAGS: 0x202}
	var st *State
	m.vcpu.Do(func() { st, err = m.captureState(&regs) })
	if err != nil {
		t.Fatal(err)
	}
	n, err := Restore(b, loadGuest(t, "hello"), st, &scriptedWorld{})
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	want := replay.StateDigest(&regs, m.ram)
	got, err := n.StateDigest()
	if err != nil {
		t.Fatal(err)
	}
	if got != want || !bytes.Equal(n.ram, m.ram) {
		t.Fatalf("restored state digest %x, want %x", got, want)
	}
}
