package vmm

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/ftvm/ftvm/replay"
)

// LiveWorld answers the guest's questions from the real world: the host's
// clocks, its random numbers, a console input stream, a console output
// writer. It is the world of a plain run and what a recorder wraps.
type LiveWorld struct {
	ctx    context.Context
	out    io.Writer
	start  time.Time
	tscOff uint64 // added to ns since start, so a new live world can continue a log's TSC
	clkOff uint64 // likewise for the monotonic clock
	lastTS uint64
	lastCk uint64

	mu      sync.Mutex
	changed chan struct{} // closed and replaced when input arrives or ends
	pending []byte
	eof     bool
	inErr   error
}

// maxPendingInput bounds buffered console input: the reader stops reading
// its source (and so pushes back on it) rather than growing without bound.
const maxPendingInput = 1 << 20

// NewLiveWorld makes a live world reading console input from in (nil: no
// input, at end at once) and writing console output to out. ctx ends waits.
func NewLiveWorld(ctx context.Context, in io.Reader, out io.Writer) *LiveWorld {
	w := &LiveWorld{ctx: ctx, out: out, start: time.Now(), changed: make(chan struct{})}
	if in == nil {
		w.eof = true
	} else {
		go w.readInput(in)
	}
	return w
}

// ContinueFrom makes the virtual TSC and monotonic clock continue strictly
// after the given values, for a world that takes over from a log (go-live).
func (w *LiveWorld) ContinueFrom(lastTSC, lastMonotonic uint64) {
	now := uint64(time.Since(w.start))
	if lastTSC >= now {
		w.tscOff = lastTSC - now + 1
	}
	if lastMonotonic >= now {
		w.clkOff = lastMonotonic - now + 1
	}
	w.lastTS, w.lastCk = lastTSC, lastMonotonic
}

func (w *LiveWorld) readInput(in io.Reader) {
	buf := make([]byte, 32<<10)
	for {
		w.mu.Lock()
		for len(w.pending) >= maxPendingInput && w.ctx.Err() == nil {
			ch := w.changed
			w.mu.Unlock()
			select {
			case <-ch:
			case <-w.ctx.Done():
			}
			w.mu.Lock()
		}
		w.mu.Unlock()
		if w.ctx.Err() != nil {
			return
		}
		n, err := in.Read(buf)
		w.mu.Lock()
		w.pending = append(w.pending, buf[:n]...)
		if err != nil {
			w.eof = true
			if err != io.EOF {
				w.inErr = err
			}
		}
		close(w.changed)
		w.changed = make(chan struct{})
		w.mu.Unlock()
		if err != nil {
			return
		}
	}
}

// TSC is nanoseconds since the VM started (a 1 GHz TSC), strictly increasing.
func (w *LiveWorld) TSC(replay.ExecPoint) (uint64, error) {
	t := uint64(time.Since(w.start)) + w.tscOff
	if t <= w.lastTS {
		t = w.lastTS + 1
	}
	w.lastTS = t
	return t, nil
}

// Random is 64 bits from the host's cryptographic random source.
func (w *LiveWorld) Random(replay.ExecPoint, replay.RandKind) (uint64, error) {
	var b [8]byte
	if _, err := rand.Read(b[:]); err != nil {
		return 0, fmt.Errorf("vmm: random source: %w", err)
	}
	return binary.LittleEndian.Uint64(b[:]), nil
}

// Clock reads the monotonic (never backwards) or the real-time clock.
func (w *LiveWorld) Clock(_ replay.ExecPoint, c replay.ClockID) (uint64, error) {
	if c == replay.ClockRealtime {
		return uint64(time.Now().UnixNano()), nil
	}
	t := uint64(time.Since(w.start)) + w.clkOff
	if t < w.lastCk {
		t = w.lastCk
	}
	w.lastCk = t
	return t, nil
}

// ConsoleRead hands over pending console input without blocking.
func (w *LiveWorld) ConsoleRead(_ replay.ExecPoint, buf []byte) (int, bool, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	n := copy(buf, w.pending)
	w.pending = w.pending[n:]
	if n > 0 && len(w.pending) < maxPendingInput {
		close(w.changed) // wake a reader held back by a full buffer
		w.changed = make(chan struct{})
	}
	return n, w.eof && len(w.pending) == 0, nil
}

// Wait blocks until console input is pending or has ended, or the timeout
// passes, or the world's context ends (then it returns ErrInterrupted).
func (w *LiveWorld) Wait(_ replay.ExecPoint, timeoutNS uint64) (replay.WaitResult, error) {
	var timer <-chan time.Time
	if timeoutNS != ^uint64(0) {
		t := time.NewTimer(time.Duration(min(timeoutNS, uint64(1<<62))))
		defer t.Stop()
		timer = t.C
	}
	for {
		w.mu.Lock()
		ready, ch := len(w.pending) > 0 || w.eof, w.changed
		w.mu.Unlock()
		if ready {
			return replay.WaitConsoleInput, nil
		}
		if timeoutNS == 0 {
			return replay.WaitTimeout, nil
		}
		select {
		case <-ch:
		case <-timer:
			return replay.WaitTimeout, nil
		case <-w.ctx.Done():
			return 0, ErrInterrupted
		}
	}
}

// NetReceive delivers nothing: this world has no network.
func (w *LiveWorld) NetReceive(replay.ExecPoint, [][]byte, []int) (int, error) { return 0, nil }

// Output writes console output to the world's writer.
func (w *LiveWorld) Output(_ replay.ExecPoint, kind replay.OutputKind, data []byte) error {
	if kind != replay.OutputConsole {
		return fmt.Errorf("vmm: live world has no sink for output kind %d", kind)
	}
	if _, err := w.out.Write(data); err != nil {
		return fmt.Errorf("vmm: console output: %w", err)
	}
	return nil
}

// PowerOff needs nothing from a live world.
func (w *LiveWorld) PowerOff(replay.ExecPoint, int) error { return nil }
