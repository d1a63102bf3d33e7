package vmm

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"math/bits"
	"sync/atomic"
	"time"

	"github.com/ftvm/ftvm/replay"
	"github.com/ftvm/ftvm/vmm/backend"
)

// Pre-copy: the state of a running machine sent to a receiver while the
// guest runs on (FT VMotion's way of starting a new backup). Round 0 sends
// every non-zero page of RAM; each later round sends the pages written
// since the previous round began (the backend's dirty log for the guest's
// own writes, GuestMemory for the VMM's). Pages are read from the shared
// mapping while the guest writes them: a torn copy does not matter, since
// a page written during its copy is dirty and sent again. Once a round
// finds few dirty pages (or after MaxRounds), the guest is stopped at its
// next guest-caused exit, after the exit is handled, for the last dirty
// pages and the state captureState gives; it then runs on. The receiver
// (ReceivePrecopy) ends with the same *State a snapshot at that exit holds.

// PrecopyOptions bound the transfer.
type PrecopyOptions struct {
	// MaxRounds is the number of dirty rounds after the full copy at
	// most (0: 8); the pause then takes whatever is still dirty.
	MaxRounds int
	// StopPages: the pause is asked for once a round finds at most this
	// many dirty pages (0: 256, 1 MiB).
	StopPages int
	// AtPause, if set, is called on the vCPU thread in the final pause,
	// with the state about to be sent: the place to note where a recording
	// stands (State.Log) and to make what the guest does next go to the
	// receiver. An error ends the transfer.
	AtPause func(st *State) error
	// Nudge, if set, is called with the request for the pause: the world
	// makes a wait in progress return (LiveWorld.Nudge), since a guest
	// idle in a wait without timeout makes no exit to pause at.
	Nudge func()
	// Disk, if set, is the machine's local disk, and DiskOffer the
	// receiver's offer of its copy (DiskOffer): the transfer makes the
	// receiver's copy equal to Disk at the pause, sending the chunks
	// whose hashes differ, then those written since (disksync.go). A copy
	// of another size ends the transfer (ErrDiskSize), after the stream
	// told the receiver the size.
	Disk      *DiskFile
	DiskOffer []byte
	// StopDiskChunks: the pause also waits (up to MaxRounds) until a round
	// finds at most this many disk chunks written (0: 64, 4 MiB).
	StopDiskChunks int
	// ignoreGuestWrites (tests only) drops the backend's dirty log, to
	// show that a transfer without it ends in the wrong state.
	ignoreGuestWrites bool
	// Tests only: afterRound is called after each round is sent;
	// snapshotAtPause captures a plain snapshot in the pause too.
	afterRound      func(round int)
	snapshotAtPause bool
	// noDirtyLog (tests only) acts as a backend that cannot track.
	noDirtyLog bool
}

func (o PrecopyOptions) withDefaults() PrecopyOptions {
	if o.MaxRounds <= 0 {
		o.MaxRounds = 8
	}
	if o.StopPages <= 0 {
		o.StopPages = 256
	}
	if o.StopDiskChunks <= 0 {
		o.StopDiskChunks = 64
	}
	return o
}

// PrecopyRound is what one round sent.
type PrecopyRound struct {
	Pages uint64        // pages sent
	Bytes uint64        // bytes written to the stream, framing included
	Time  time.Duration // from the round's start to its last byte written
}

// PrecopyStats describes a finished transfer.
type PrecopyStats struct {
	// Rounds: round 0 is the full copy, then the dirty rounds.
	Rounds []PrecopyRound
	// Final is what was sent for the pause: the last dirty pages and the
	// state (registers, FP state, permissions, counters).
	Final PrecopyRound
	// Pause is how long the guest was stopped; WaitForExit how long the
	// transfer waited, after asking for the pause, for a guest-caused exit.
	Pause, WaitForExit time.Duration
	// Total is from the start to the last byte.
	Total time.Duration
	// Exit is the exit the state was captured after.
	Exit uint64
	// Tracking is nil when dirty pages were tracked; otherwise why the
	// backend could not, and the transfer was stop-and-copy (every page
	// sent during the pause).
	Tracking error
	// The local disk (PrecopyOptions.Disk): DiskSize its bytes;
	// DiskDiffer the chunks found different from the receiver's offer;
	// DiskChunks the chunks sent in all (the differing ones, then those
	// written during the transfer), DiskPauseChunks those of the pause;
	// DiskBytes the disk data sent.
	DiskSize                                uint64
	DiskDiffer, DiskChunks, DiskPauseChunks uint64
	DiskBytes                               uint64
}

// Bytes is the size of the whole stream.
func (s *PrecopyStats) Bytes() uint64 {
	n := s.Final.Bytes
	for _, r := range s.Rounds {
		n += r.Bytes
	}
	return n
}

// Precopy is a live transfer in progress.
type Precopy struct {
	m           *Machine
	opt         PrecopyOptions
	enc         *precopyWriter
	pauseWanted atomic.Bool
	// final carries the pause's result from the vCPU thread.
	final    chan precopyFinal
	carry    []uint64 // dirty pages not yet sent, handed to the pause
	fullCopy bool     // no tracking: the pause copies all of RAM
	done     chan struct{}
	stats    PrecopyStats
	err      error
	// pauseSnapshot: a snapshot at the pause (snapshotAtPause).
	pauseSnapshot *State
	// The local disk: its chunk size, each chunk's hash as last sent (or
	// found equal), and the chunks written and not yet sent.
	diskChunk  uint64
	diskHashes [][32]byte
	diskDirty  []uint64
	diskBuf    []byte
	// compared counts the disk bytes compared with the receiver's offer:
	// progress that sends nothing while the copies agree (Compared).
	compared atomic.Uint64
}

// Compared returns the bytes of the local disk compared so far with the
// receiver's copy: a transfer working through a large disk whose copies
// mostly agree sends little for a while, yet makes progress.
func (p *Precopy) Compared() uint64 { return p.compared.Load() }

type precopyFinal struct {
	snap  *State
	runs  []MemRun
	disk  []diskRun
	state *State
	pause time.Duration
	err   error
}

// diskRun is a chunk of the disk copied in the pause.
type diskRun struct {
	chunk uint64
	data  []byte
}

// StartPrecopy begins sending the machine's state to w while the guest
// runs; Wait returns when the final state is written. It may be called
// before Run or while Run runs, from any goroutine, one transfer at a
// time; Run must then run the guest to the final pause (a Run that returns
// first ends the transfer with an error). The transfer's goroutine only
// reads RAM and the dirty logs; it never touches the vCPU.
func (m *Machine) StartPrecopy(w io.Writer, opt PrecopyOptions) (*Precopy, error) {
	p := &Precopy{m: m, opt: opt.withDefaults(), enc: newPrecopyWriter(w), final: make(chan precopyFinal, 1), done: make(chan struct{})}
	m.xferMu.Lock()
	defer m.xferMu.Unlock()
	if m.closed {
		return nil, errors.New("vmm: pre-copy: the machine is closed")
	}
	if !m.precopy.CompareAndSwap(nil, p) {
		return nil, errors.New("vmm: pre-copy: a transfer is already under way")
	}
	m.xfers++
	p.enc.stop = &m.closing
	go p.send()
	return p, nil
}

// Wait returns the transfer's figures once it has ended.
func (p *Precopy) Wait() (PrecopyStats, error) {
	<-p.done
	return p.stats, p.err
}

func (p *Precopy) send() {
	defer close(p.done)
	t0 := time.Now()
	if p.opt.Disk != nil {
		defer p.opt.Disk.StopTracking()
	}
	p.err = p.rounds()
	if p.err == nil {
		p.err = p.finish(t0)
	}
	p.stats.Total = time.Since(t0)
	// A transfer that failed before its pause (the receiver went away)
	// still holds the machine's slot: free it, or no later transfer could
	// start. A pause the vCPU takes meanwhile goes to p.final, unread.
	p.m.precopy.CompareAndSwap(p, nil)
	m := p.m
	m.xferMu.Lock()
	defer m.xferMu.Unlock()
	if m.xfers--; m.xfers == 0 && m.release {
		m.releaseLocked()
	}
}

// rounds runs the full copy and the dirty rounds, up to asking for the pause.
func (p *Precopy) rounds() error {
	m := p.m
	pages := uint64(len(m.ram)) / pageSize
	m.guest.mem.startTracking()
	dl, ok := m.vcpu.(backend.DirtyLog)
	if p.opt.noDirtyLog {
		p.stats.Tracking = fmt.Errorf("vmm: dirty tracking turned off: %w", backend.ErrNoDirtyLog)
	} else if !ok {
		p.stats.Tracking = fmt.Errorf("vmm: the %s backend: %w", m.backend, backend.ErrNoDirtyLog)
	} else if err := dl.StartDirtyLog(); err != nil {
		p.stats.Tracking = err
	}
	if err := p.enc.header(uint64(len(m.ram))); err != nil {
		return err
	}
	// Round 0: the local disk's chunks that differ from the receiver's,
	// then every non-zero page, found as a snapshot finds them.
	t := time.Now()
	before := p.enc.n
	if p.opt.Disk != nil {
		if err := p.diskPass(); err != nil {
			return err
		}
	}
	var sent uint64
	err := eachNonZeroPage(m.ramFile, m.ram, func(first, n uint64) error {
		sent += n
		return p.enc.pages(0, first, m.ram[first*pageSize:(first+n)*pageSize])
	})
	if err == nil {
		err = p.enc.flush()
	}
	if err != nil {
		return err
	}
	p.stats.Rounds = append(p.stats.Rounds, PrecopyRound{Pages: sent, Bytes: p.enc.n - before, Time: time.Since(t)})
	if p.opt.afterRound != nil {
		p.opt.afterRound(0)
	}
	if p.stats.Tracking != nil {
		p.fullCopy = true
		p.askPause()
		return nil
	}
	dirty := make([]uint64, (pages+63)/64)
	for round := 1; ; round++ {
		clear(dirty)
		t := time.Now()
		if err := p.collect(dl, dirty); err != nil {
			return err
		}
		n := popcount(dirty)
		var dn uint64
		if p.opt.Disk != nil {
			p.opt.Disk.TakeDirty(p.diskDirty)
			dn = popcount(p.diskDirty)
		}
		if n <= uint64(p.opt.StopPages) && dn <= uint64(p.opt.StopDiskChunks) || round > p.opt.MaxRounds {
			p.carry = dirty
			break
		}
		before := p.enc.n
		err := eachSetRun(dirty, pages, func(first, n uint64) error {
			return p.enc.pages(uint32(round), first, m.ram[first*pageSize:(first+n)*pageSize])
		})
		if err == nil && dn > 0 {
			err = p.sendDirtyDisk(uint32(round))
		}
		if err == nil {
			err = p.enc.flush()
		}
		if err != nil {
			return err
		}
		p.stats.Rounds = append(p.stats.Rounds, PrecopyRound{Pages: n, Bytes: p.enc.n - before, Time: time.Since(t)})
		if p.opt.afterRound != nil {
			p.opt.afterRound(round)
		}
	}
	p.askPause()
	return nil
}

// askPause asks the vCPU for the final pause at its next exit.
func (p *Precopy) askPause() {
	p.pauseWanted.Store(true)
	p.m.Kick() // a guest that exits rarely still reaches an exit soon
	if p.opt.Nudge != nil {
		p.opt.Nudge() // and one idle in a wait returns from it
	}
}

// collect sets in dirty the pages the guest and the VMM wrote since the
// last collection.
func (p *Precopy) collect(dl backend.DirtyLog, dirty []uint64) error {
	if p.opt.ignoreGuestWrites {
		scratch := make([]uint64, len(dirty))
		if err := dl.DirtyPages(scratch); err != nil {
			return fmt.Errorf("vmm: pre-copy: %w", err)
		}
	} else if err := dl.DirtyPages(dirty); err != nil {
		return fmt.Errorf("vmm: pre-copy: %w", err)
	}
	p.m.guest.mem.takeWritten(dirty)
	return nil
}

// finalPause runs on the vCPU thread at the first exit after the pause was
// asked for, with the guest stopped and about to resume with regs.
func (p *Precopy) finalPause(m *Machine, regs *replay.Regs) {
	t := time.Now()
	var f precopyFinal
	f.runs, f.err = p.pausePages(m)
	if f.err == nil && p.opt.Disk != nil {
		f.disk, f.err = p.pauseDisk()
	}
	if f.err == nil {
		f.state, f.err = m.captureCPUState(regs)
	}
	if f.err == nil && p.opt.AtPause != nil {
		f.err = p.opt.AtPause(f.state)
	}
	f.pause = time.Since(t)
	if f.err == nil && p.opt.snapshotAtPause {
		f.snap, f.err = m.captureState(regs)
	}
	p.final <- f
}

func (p *Precopy) pausePages(m *Machine) ([]MemRun, error) {
	if p.fullCopy {
		return nonZeroPages(m.ramFile, m.ram, nil)
	}
	dl := m.vcpu.(backend.DirtyLog)
	if err := p.collect(dl, p.carry); err != nil {
		return nil, err
	}
	pages := uint64(len(m.ram)) / pageSize
	buf := make([]byte, popcount(p.carry)*pageSize)
	var runs []MemRun
	eachSetRun(p.carry, pages, func(first, n uint64) error {
		k := copy(buf, m.ram[first*pageSize:(first+n)*pageSize])
		runs = append(runs, MemRun{FirstPage: first, Data: buf[:k:k]})
		buf = buf[k:]
		return nil
	})
	return runs, nil
}

// pauseMissed ends a transfer whose Run returned before its final pause.
func (p *Precopy) pauseMissed(res Result, err error) {
	why := fmt.Sprintf("the guest stopped at exit %d (status %d) first", res.Exits, res.Status)
	if err != nil {
		why = fmt.Sprintf("the run ended first: %v", err)
	}
	p.final <- precopyFinal{err: fmt.Errorf("vmm: pre-copy: no exit to pause at: %s", why)}
}

// finish waits for the pause and sends its pages and the state.
func (p *Precopy) finish(t0 time.Time) error {
	asked := time.Now()
	f := <-p.final
	if f.err != nil {
		return f.err
	}
	p.stats.Pause, p.stats.Exit = f.pause, f.state.Exits
	p.pauseSnapshot = f.snap
	p.stats.WaitForExit = time.Since(asked) - f.pause
	t := time.Now()
	before := p.enc.n
	round := uint32(len(p.stats.Rounds))
	if p.fullCopy {
		if err := p.enc.clearAll(round); err != nil {
			return err
		}
	}
	var sent uint64
	for _, r := range f.runs {
		sent += uint64(len(r.Data)) / pageSize
		if err := p.enc.pages(round, r.FirstPage, r.Data); err != nil {
			return err
		}
	}
	if p.opt.Disk != nil {
		for _, r := range f.disk {
			if err := p.sendChunk(round, r.chunk, r.data); err != nil {
				return err
			}
		}
		p.stats.DiskPauseChunks = uint64(len(f.disk))
		if err := p.enc.diskDone(round, diskRoot(p.opt.Disk.Size(), p.diskChunk, p.diskHashes)); err != nil {
			return err
		}
	}
	if err := p.enc.state(round, f.state); err != nil {
		return err
	}
	if err := p.enc.flush(); err != nil {
		return err
	}
	p.stats.Final = PrecopyRound{Pages: sent, Bytes: p.enc.n - before, Time: time.Since(t)}
	return nil
}

// diskPass starts tracking the disk's writes, then compares every chunk
// with the receiver's offer and sends those that differ. A chunk written
// after its read is tracked, and sent again later.
func (p *Precopy) diskPass() error {
	d := p.opt.Disk
	size := d.Size()
	p.diskChunk = DiskChunkSize(size)
	p.stats.DiskSize = size
	// The size first, so that a receiver with a copy of another size
	// says so too.
	if err := p.enc.diskBegin(size, p.diskChunk); err != nil {
		return err
	}
	if err := p.enc.flush(); err != nil {
		return err
	}
	theirs, err := parseDiskOffer(p.opt.DiskOffer, size)
	if err != nil {
		return err
	}
	if err := d.StartTracking(p.diskChunk); err != nil {
		return err
	}
	p.diskHashes = make([][32]byte, len(theirs))
	p.diskDirty = make([]uint64, (len(theirs)+63)/64)
	p.diskBuf = make([]byte, p.diskChunk)
	for i := range uint64(len(theirs)) {
		b, err := readChunk(d, p.diskChunk, i, p.diskBuf)
		if err != nil {
			return err
		}
		p.diskHashes[i] = sha256.Sum256(b)
		p.compared.Add(uint64(len(b)))
		if p.diskHashes[i] == theirs[i] {
			continue
		}
		p.stats.DiskDiffer++
		if err := p.sendChunk(0, i, b); err != nil {
			return err
		}
	}
	return p.enc.flush()
}

// sendDirtyDisk sends the chunks in diskDirty, read now, and clears it.
func (p *Precopy) sendDirtyDisk(round uint32) error {
	n := uint64(len(p.diskHashes))
	err := eachSetRun(p.diskDirty, n, func(first, k uint64) error {
		for i := first; i < first+k; i++ {
			b, err := readChunk(p.opt.Disk, p.diskChunk, i, p.diskBuf)
			if err != nil {
				return err
			}
			if err := p.sendChunk(round, i, b); err != nil {
				return err
			}
		}
		return nil
	})
	clear(p.diskDirty)
	return err
}

// sendChunk sends chunk i's data b and notes its hash.
func (p *Precopy) sendChunk(round uint32, i uint64, b []byte) error {
	p.diskHashes[i] = sha256.Sum256(b)
	p.stats.DiskChunks++
	p.stats.DiskBytes += uint64(len(b))
	return p.enc.disk(round, i*p.diskChunk, b)
}

// pauseDisk copies, in the pause, the chunks written since the last
// round took them: sent (and hashed) once the guest runs on.
func (p *Precopy) pauseDisk() ([]diskRun, error) {
	p.opt.Disk.TakeDirty(p.diskDirty)
	var runs []diskRun
	err := eachSetRun(p.diskDirty, uint64(len(p.diskHashes)), func(first, k uint64) error {
		for i := first; i < first+k; i++ {
			b, err := readChunk(p.opt.Disk, p.diskChunk, i, make([]byte, p.diskChunk))
			if err != nil {
				return err
			}
			runs = append(runs, diskRun{chunk: i, data: b})
		}
		return nil
	})
	clear(p.diskDirty)
	return runs, err
}

func popcount(b []uint64) uint64 {
	n := 0
	for _, w := range b {
		n += bits.OnesCount64(w)
	}
	return uint64(n)
}

// eachSetRun calls f for each run of consecutive set bits below pages.
func eachSetRun(b []uint64, pages uint64, f func(first, n uint64) error) error {
	for p := uint64(0); p < pages; {
		w := b[p/64] >> (p % 64)
		if w == 0 {
			p = (p/64 + 1) * 64
			continue
		}
		p += uint64(bits.TrailingZeros64(w))
		first := p
		for p < pages && b[p/64]&(1<<(p%64)) != 0 {
			p++
		}
		if err := f(first, min(p, pages)-first); err != nil {
			return err
		}
	}
	return nil
}
