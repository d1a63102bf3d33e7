package ft

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ftvm/ftvm/replay"
	"github.com/ftvm/ftvm/vmm"
)

// stuckWriter is a console nobody reads (a terminal paused with Ctrl-S, a
// full pipe): every Write waits until release is closed.
type stuckWriter struct {
	release chan struct{}
	mu      sync.Mutex
	buf     bytes.Buffer
}

func (w *stuckWriter) Write(p []byte) (int, error) {
	<-w.release
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.buf.Write(p)
}

// TestAcksNeverWaitForTheConsole: with the console stuck, the acks, which
// the logging channel's reader delivers, keep returning (a reader stuck in
// a console write reads no heartbeats, and the pair would take its peer
// for lost); the vCPU waits once the console queue and the held buffer are
// full; and once the console writes again every output reaches it, whole
// and in order. Alone (no backup, no acks) the vCPU waits at the same
// bound.
func TestAcksNeverWaitForTheConsole(t *testing.T) {
	for _, protected := range []bool{true, false} {
		t.Run(fmt.Sprintf("protected=%v", protected), func(t *testing.T) {
			testStuckConsole(t, protected)
		})
	}
}

func testStuckConsole(t *testing.T, protected bool) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	out := &stuckWriter{release: make(chan struct{})}
	var once sync.Once
	unstick := func() { once.Do(func() { close(out.release) }) }
	t.Cleanup(unstick) // a failed test leaves no goroutine stuck
	p := newProtection(ctx, cancel, &Common{Stdout: out}, vmm.NewLiveWorld(ctx, nil, io.Discard), nil, 0)
	if protected {
		p.hw.protectAgain(0, func(uint64) {}, nil) // as when a backup joins
	}
	const size = 32 << 10
	// The outputs the console queue and the held buffer take before the
	// vCPU must wait; then some more.
	bound := (maxConsoleQueued + maxHeldBytes) / size
	n := bound + 64
	var want bytes.Buffer
	outputs := make([][]byte, n+1)
	for i := 1; i <= n; i++ {
		outputs[i] = bytes.Repeat([]byte{byte('a' + i%26)}, size)
		copy(outputs[i], fmt.Sprintf("[%d]", i))
		want.Write(outputs[i])
	}

	var holds, acks atomic.Int64
	held := make(chan uint64, n)
	vcpuErr := make(chan error, 1)
	go func() { // the vCPU
		defer close(held)
		for i := 1; i <= n; i++ {
			if err := p.hw.HoldOutput(replay.ExecPoint{}, uint64(i), replay.OutputConsole, outputs[i]); err != nil {
				vcpuErr <- err
				return
			}
			holds.Store(int64(i))
			held <- uint64(i)
		}
		vcpuErr <- nil
	}()
	acked := make(chan struct{})
	go func() { // the logging channel's reader
		defer close(acked)
		for seq := range held {
			if protected {
				p.hw.Ack(seq)
			}
			acks.Store(int64(seq))
		}
	}()

	waitUntil(t, 20*time.Second, "the acks of the outputs held so far, with the console stuck", func() bool {
		h := holds.Load()
		return h >= int64(bound) && acks.Load() == h
	})
	if h := holds.Load(); h != int64(bound) {
		t.Fatalf("with the console stuck the vCPU produced %d outputs of %d bytes; want it to wait after %d", h, size, bound)
	}
	unstick()
	if err := <-vcpuErr; err != nil {
		t.Fatal(err)
	}
	<-acked
	if err := p.drain(); err != nil {
		t.Fatal(err)
	}
	p.close()
	out.mu.Lock()
	defer out.mu.Unlock()
	if got := out.buf.Bytes(); !bytes.Equal(got, want.Bytes()) {
		t.Fatalf("the console got %d bytes, want %d (%d outputs in order); first difference at byte %d",
			len(got), want.Len(), n, firstDiff(got, want.Bytes()))
	}
}

func firstDiff(a, b []byte) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}
