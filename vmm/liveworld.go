package vmm

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/ftvm/ftvm/replay"
	"github.com/ftvm/ftvm/vmm/vnet"
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
	// eofSeen: the guest has been told the input ended (a read returned
	// EOF), so wait stops reporting it; otherwise a server whose stdin is
	// closed would never sleep.
	eofSeen bool

	net      vnet.Backend // nil: no network
	netReady bool         // a Pending token was taken and frames may remain
	disk     *DiskFile    // nil: no disk (or a local disk, not the world's)

	nudge chan struct{} // Nudge: the next blocking wait returns
}

// AttachNet connects the world to a network backend: received frames
// become NetReceive answers, packet outputs are sent through it.
func (w *LiveWorld) AttachNet(b vnet.Backend) { w.net = b }

// AttachDisk gives the world the shared disk: reads come from it, disk
// outputs are written to it.
func (w *LiveWorld) AttachDisk(d *DiskFile) { w.disk = d }

// Disk is the attached disk, or nil.
func (w *LiveWorld) Disk() *DiskFile { return w.disk }

// maxPendingInput bounds buffered console input: the reader stops reading
// its source (and so pushes back on it) rather than growing without bound.
const maxPendingInput = 1 << 20

// NewLiveWorld makes a live world reading console input from in (nil: no
// input, at end at once) and writing console output to out. ctx ends waits.
func NewLiveWorld(ctx context.Context, in io.Reader, out io.Writer) *LiveWorld {
	w := &LiveWorld{ctx: ctx, out: out, start: time.Now(), changed: make(chan struct{}), nudge: make(chan struct{}, 1)}
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
	if n == 0 && w.eof {
		w.eofSeen = true
	}
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
	var netPending <-chan struct{}
	if w.net != nil {
		netPending = w.net.Pending()
	}
	for {
		w.mu.Lock()
		console, ch := len(w.pending) > 0 || w.eof && !w.eofSeen, w.changed
		w.mu.Unlock()
		if !w.netReady && netPending != nil {
			select {
			case <-netPending:
				w.netReady = true
			default:
			}
		}
		var res replay.WaitResult
		if console {
			res |= replay.WaitConsoleInput
		}
		if w.netReady {
			res |= replay.WaitNetRX
		}
		if res != 0 {
			return res, nil
		}
		if timeoutNS == 0 {
			return replay.WaitTimeout, nil
		}
		select {
		case <-ch:
		case <-netPending:
			w.netReady = true
		case <-timer:
			return replay.WaitTimeout, nil
		case <-w.nudge:
			return replay.WaitTimeout, nil
		case <-w.ctx.Done():
			return 0, ErrInterrupted
		}
	}
}

// Nudge makes a wait in progress, or the next one that would block,
// return at once as if its timeout had expired (the ABI allows a wait to
// end early): the VMM needs an exit from a guest idle in a wait, for a
// live transfer's pause. The answer is logged like any other.
func (w *LiveWorld) Nudge() {
	select {
	case w.nudge <- struct{}{}:
	default:
	}
}

// NetReceive hands over pending received frames without blocking.
func (w *LiveWorld) NetReceive(_ replay.ExecPoint, frames [][]byte, lens []int) (int, error) {
	if w.net == nil {
		return 0, nil
	}
	n := 0
	for ; n < len(frames); n++ {
		l, ok := w.net.Receive(frames[n])
		if !ok {
			w.netReady = false // drained; the backend's token says when more come
			break
		}
		lens[n] = l
	}
	return n, nil
}

// DiskRead reads the attached disk.
func (w *LiveWorld) DiskRead(_ replay.ExecPoint, offs []uint64, bufs [][]byte) error {
	if w.disk == nil {
		return errors.New("vmm: a disk read but no disk attached")
	}
	return w.disk.ReadAt(offs, bufs)
}

// Output writes console output to the world's writer, sends a batch of
// packets (frames as replay.AppendFrame wrote them) through the backend
// and writes a disk batch, waiting for it when it flushes.
func (w *LiveWorld) Output(_ replay.ExecPoint, kind replay.OutputKind, data []byte) error {
	if kind != replay.OutputDisk || w.disk == nil {
		return SendOutput(w.out, w.net, nil, kind, data)
	}
	return w.disk.Write(w.ctx, data)
}

// StageDisk takes a disk batch at the exit that wrote it (DiskFile.Stage):
// a holder calls it before it holds the batch.
func (w *LiveWorld) StageDisk(data []byte) (ticket uint64, flush bool, err error) {
	if w.disk == nil {
		return 0, false, errors.New("vmm: a disk write but no disk attached")
	}
	return w.disk.Stage(w.ctx, data)
}

// WaitDisk waits until the batch of ticket is written: a flush's call
// returns only then.
func (w *LiveWorld) WaitDisk(ticket uint64) error { return w.disk.Wait(w.ctx, ticket) }

// ReissueDisk writes a batch at once and waits for it (a backup going
// live rewrites what the primary may not have completed).
func (w *LiveWorld) ReissueDisk(batch []byte) error {
	if len(batch) == 0 {
		return nil
	}
	if w.disk == nil {
		return errors.New("vmm: a disk write but no disk attached")
	}
	return w.disk.Write(w.ctx, batch) // it ends with a flush: written and synced on return
}

// SendOutput delivers one output to its sink: console bytes to out, a
// packet batch to net, a disk batch to disk (staged already). A frame the
// network drops is lost on the wire, as on a real NIC, not an error of
// the VM.
func SendOutput(out io.Writer, net vnet.Backend, disk *DiskFile, kind replay.OutputKind, data []byte) error {
	switch kind {
	case replay.OutputDisk:
		if disk == nil {
			if diskHashesOnly(data) {
				return nil // a local disk's: the machine wrote its copy itself
			}
			return fmt.Errorf("vmm: a disk output but no disk")
		}
		return disk.Apply(data)
	case replay.OutputConsole:
		if _, err := out.Write(data); err != nil {
			return fmt.Errorf("vmm: console output: %w", err)
		}
	case replay.OutputPacket:
		if net == nil {
			return fmt.Errorf("vmm: a packet output but no network backend")
		}
		for rest := data; len(rest) > 0; {
			frame, next, ok := replay.NextFrame(rest)
			if !ok {
				return fmt.Errorf("vmm: malformed packet batch")
			}
			if err := net.Send(frame); err != nil && !errors.Is(err, vnet.ErrDropped) {
				return fmt.Errorf("vmm: sending a packet: %w", err)
			}
			rest = next
		}
	default:
		return fmt.Errorf("vmm: no sink for output kind %d", kind)
	}
	return nil
}

// PowerOff needs nothing from a live world.
func (w *LiveWorld) PowerOff(replay.ExecPoint, int) error { return nil }
