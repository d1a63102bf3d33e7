package vmm

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sort"
	"sync"

	"golang.org/x/sys/unix"
)

// DiskFile is the live side's disk: a file, on storage both sides reach in
// shared mode. Writes reach it in two steps. Stage, on the vCPU thread at
// the exit that wrote, puts the data in an overlay that reads see at once
// (the guest reads what it wrote); Apply, when the Output Rule lets the
// batch leave, queues it for a writer goroutine, which writes the file in
// order and drops the overlay blocks it wrote. Nothing touches the file
// before Apply, and nothing blocks the caller of Apply: the acks that
// release outputs must never wait for the disk.
type DiskFile struct {
	f    *os.File
	size uint64

	mu      sync.Mutex
	overlay map[uint64]overlayBlock // block number -> newest staged data not yet written
	free    [][]byte                // overlay buffers to reuse: no allocation per block written
	spare   [][]byte                // job buffers to reuse, likewise per batch
	staged  uint64                  // batches staged (tickets given)
	queued  uint64                  // batches applied (queued for the writer)
	written uint64                  // batches written (and synced where they flushed)
	// unwritten is the bytes of the batches staged and not yet written:
	// Stage waits while it is over maxUnwrittenDisk, so a guest that
	// writes faster than the file takes it is held back, not buffered
	// without end.
	unwritten int
	jobs      []diskJob
	changed   chan struct{} // closed and replaced when written or err changes, or a job comes
	err       error         // the first write error: the disk is gone for this side
	closing   bool
	done      chan struct{}
	// scratch: writes stay in the overlay and never reach the file (a
	// replay of a local disk, which must not change the copy it reads).
	scratch bool
	// track, while a transfer of a local disk runs (StartTracking), has
	// a bit for each chunk of 1<<trackShift bytes written since the last
	// TakeDirty: what the joining side must be sent again.
	track      []uint64
	trackShift uint
}

type overlayBlock struct {
	data   []byte
	ticket uint64
}

type diskJob struct {
	ticket uint64
	batch  []byte
}

// OpenDiskFile opens a disk image: its size is the disk's, a non-zero
// multiple of DiskBlock of at most MaxDiskSize.
func OpenDiskFile(path string) (*DiskFile, error) { return openDiskFile(path, false) }

// OpenDiskScratch opens a disk image read-only: writes stay in memory, for
// a replay that must leave the image as it was.
func OpenDiskScratch(path string) (*DiskFile, error) { return openDiskFile(path, true) }

func openDiskFile(path string, scratch bool) (*DiskFile, error) {
	flag := os.O_RDWR
	if scratch {
		flag = os.O_RDONLY
	}
	f, err := os.OpenFile(path, flag, 0)
	if err != nil {
		return nil, fmt.Errorf("vmm: disk: %w", err)
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("vmm: disk: %w", err)
	}
	size := uint64(fi.Size())
	if !fi.Mode().IsRegular() || size == 0 || size%DiskBlock != 0 || size > MaxDiskSize {
		f.Close()
		return nil, fmt.Errorf("vmm: disk %s: %d bytes: a disk image is a regular file of a non-zero multiple of %d bytes, at most %d", path, size, DiskBlock, uint64(MaxDiskSize))
	}
	d := &DiskFile{f: f, size: size, overlay: map[uint64]overlayBlock{}, changed: make(chan struct{}), done: make(chan struct{}), scratch: scratch}
	go d.writer()
	return d, nil
}

// Size is the disk's size in bytes.
func (d *DiskFile) Size() uint64 { return d.size }

// Path is the file's name.
func (d *DiskFile) Path() string { return d.f.Name() }

// wakeLocked wakes everyone waiting on changed.
func (d *DiskFile) wakeLocked() {
	close(d.changed)
	d.changed = make(chan struct{})
}

// maxUnwrittenDisk bounds the bytes staged and not yet written.
const maxUnwrittenDisk = 32 << 20

// Stage takes a disk batch at the exit that wrote it: reads see its data
// from now on. It returns the batch's ticket and whether it flushes. While
// too much is staged and not yet written it waits (ctx ends the wait):
// what is staged is written once it is released, which acks do, not the
// caller.
func (d *DiskFile) Stage(ctx context.Context, batch []byte) (ticket uint64, flush bool, err error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	for !d.scratch && d.err == nil && d.unwritten > 0 && d.unwritten+len(batch) > maxUnwrittenDisk {
		ch := d.changed
		d.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			d.mu.Lock()
			return 0, false, ErrInterrupted
		}
		d.mu.Lock()
	}
	if d.err != nil {
		return 0, false, d.err
	}
	t := d.staged + 1
	err = EachDiskRecord(batch, d.size, func(r DiskRecord) error {
		if r.Hash {
			return nil
		}
		if r.Flush {
			flush = true
			return nil
		}
		if d.track != nil {
			for c := r.Off >> d.trackShift; c <= (r.Off+uint64(len(r.Data))-1)>>d.trackShift; c++ {
				d.track[c/64] |= 1 << (c % 64)
			}
		}
		for i := 0; i < len(r.Data); i += DiskBlock {
			blk := (r.Off + uint64(i)) / DiskBlock
			ob := d.overlay[blk]
			if ob.data == nil {
				ob.data = d.blockBuf()
			}
			copy(ob.data, r.Data[i:i+DiskBlock])
			ob.ticket = t
			d.overlay[blk] = ob
		}
		return nil
	})
	if err != nil {
		return 0, false, err
	}
	d.staged = t
	if !d.scratch {
		d.unwritten += len(batch)
	}
	return t, flush, nil
}

// blockBuf is a block's buffer for the overlay, reused if one is free.
func (d *DiskFile) blockBuf() []byte {
	if n := len(d.free); n > 0 {
		b := d.free[n-1]
		d.free = d.free[:n-1]
		return b
	}
	return make([]byte, DiskBlock)
}

// Apply queues the next staged batch (batches are applied in the order
// they were staged) for the writer. It never blocks.
func (d *DiskFile) Apply(batch []byte) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.err != nil {
		return d.err
	}
	if d.queued == d.staged {
		return errors.New("vmm: disk: a batch applied that was never staged")
	}
	if d.scratch {
		return errors.New("vmm: disk: a write to a disk opened for replay")
	}
	d.queued++
	var buf []byte
	if n := len(d.spare); n > 0 {
		buf, d.spare = d.spare[n-1][:0], d.spare[:n-1]
	}
	d.jobs = append(d.jobs, diskJob{ticket: d.queued, batch: append(buf, batch...)})
	d.wakeLocked()
	return nil
}

// Write stages batch and applies it at once, then waits for it if it
// flushes: a write no Output Rule holds (a plain run, a side's own copy of
// a local disk, a backup writing again what its primary may not have). A
// disk opened for replay keeps it in its overlay.
func (d *DiskFile) Write(ctx context.Context, batch []byte) error {
	ticket, flush, err := d.Stage(ctx, batch)
	if err != nil || d.scratch {
		return err
	}
	if err := d.Apply(batch); err != nil {
		return err
	}
	if flush {
		return d.Wait(ctx, ticket)
	}
	return nil
}

// Wait blocks until the batch of ticket is written (and synced, if it
// flushes), the disk fails, or ctx ends.
func (d *DiskFile) Wait(ctx context.Context, ticket uint64) error {
	for {
		d.mu.Lock()
		written, err, ch := d.written, d.err, d.changed
		d.mu.Unlock()
		switch {
		case err != nil:
			return err
		case written >= ticket:
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return ErrInterrupted
		}
	}
}

// Drain waits until everything staged so far is written: outputs that
// are still held wait for their release first.
func (d *DiskFile) Drain(ctx context.Context) error {
	d.mu.Lock()
	t := d.staged
	d.mu.Unlock()
	return d.Wait(ctx, t)
}

// Sync waits until everything staged is written, then syncs the file.
func (d *DiskFile) Sync(ctx context.Context) error {
	if err := d.Drain(ctx); err != nil {
		return err
	}
	if err := unix.Fdatasync(int(d.f.Fd())); err != nil {
		return fmt.Errorf("vmm: disk %s: %w", d.f.Name(), err)
	}
	return nil
}

// StartTracking begins to remember the chunks (of chunk bytes, a power of
// two) that writes staged from now on touch, for TakeDirty. One tracker
// at a time: a transfer to a joining backup.
func (d *DiskFile) StartTracking(chunk uint64) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if chunk == 0 || chunk&(chunk-1) != 0 || chunk < DiskBlock {
		return fmt.Errorf("vmm: disk: tracking chunks of %d bytes", chunk)
	}
	if d.track != nil {
		return errors.New("vmm: disk: a transfer already tracks the disk's writes")
	}
	chunks := (d.size + chunk - 1) / chunk
	d.track = make([]uint64, (chunks+63)/64)
	for d.trackShift = 0; 1<<d.trackShift < chunk; d.trackShift++ {
	}
	return nil
}

// TakeDirty sets in dst (a bit per chunk, as long as StartTracking's) the
// chunks written since tracking started or the last TakeDirty, and
// forgets them.
func (d *DiskFile) TakeDirty(dst []uint64) {
	d.mu.Lock()
	defer d.mu.Unlock()
	for i, w := range d.track {
		dst[i] |= w
		d.track[i] = 0
	}
}

// StopTracking ends StartTracking.
func (d *DiskFile) StopTracking() {
	d.mu.Lock()
	d.track = nil
	d.mu.Unlock()
}

// Fill writes data at off straight into the file: for a joining backup,
// which makes its copy equal to the live side's before its machine runs.
// Nothing may be staged.
func (d *DiskFile) Fill(off uint64, data []byte) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	switch {
	case d.scratch:
		return errors.New("vmm: disk: a write to a disk opened for replay")
	case d.staged != 0 || len(d.overlay) != 0:
		return errors.New("vmm: disk: a copy filled while the guest writes it")
	case off%DiskBlock != 0 || len(data)%DiskBlock != 0 || off > d.size || uint64(len(data)) > d.size-off:
		return fmt.Errorf("vmm: disk: a fill of %d bytes at %d outside a disk of %d bytes or not block aligned", len(data), off, d.size)
	}
	if _, err := d.f.WriteAt(data, int64(off)); err != nil {
		return fmt.Errorf("vmm: disk %s: %w", d.f.Name(), err)
	}
	return nil
}

// Pending says how many staged batches are not written yet.
func (d *DiskFile) Pending() uint64 {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.staged - d.written
}

// ReadAt fills each bufs[i] with the disk at offs[i]: the file, with the
// staged blocks not yet written laid over it.
func (d *DiskFile) ReadAt(offs []uint64, bufs [][]byte) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	for i, b := range bufs {
		off := offs[i]
		if off%DiskBlock != 0 || len(b)%DiskBlock != 0 || off > d.size || uint64(len(b)) > d.size-off {
			return fmt.Errorf("vmm: disk: a read of %d bytes at %d", len(b), off)
		}
		if _, err := d.f.ReadAt(b, int64(off)); err != nil {
			return fmt.Errorf("vmm: disk: reading %d bytes at %d: %w", len(b), off, err)
		}
		if len(d.overlay) == 0 {
			continue
		}
		for j := 0; j < len(b); j += DiskBlock {
			if ob, ok := d.overlay[(off+uint64(j))/DiskBlock]; ok {
				copy(b[j:j+DiskBlock], ob.data)
			}
		}
	}
	return nil
}

// writer writes the queued batches in order.
func (d *DiskFile) writer() {
	defer close(d.done)
	for {
		d.mu.Lock()
		for len(d.jobs) == 0 && !d.closing {
			ch := d.changed
			d.mu.Unlock()
			<-ch
			d.mu.Lock()
		}
		if len(d.jobs) == 0 {
			d.mu.Unlock()
			return
		}
		job, failed := d.jobs[0], d.err != nil
		d.jobs = d.jobs[1:]
		d.mu.Unlock()
		if failed {
			continue // nothing after a failed write may reach the file
		}

		err := EachDiskRecord(job.batch, d.size, func(r DiskRecord) error {
			if r.Hash {
				return nil
			}
			if r.Flush {
				return unix.Fdatasync(int(d.f.Fd()))
			}
			_, err := d.f.WriteAt(r.Data, int64(r.Off))
			return err
		})

		d.mu.Lock()
		if err != nil && d.err == nil {
			d.err = fmt.Errorf("vmm: disk %s: %w", d.f.Name(), err)
		}
		if err == nil {
			_ = EachDiskRecord(job.batch, d.size, func(r DiskRecord) error {
				for i := 0; i < len(r.Data); i += DiskBlock {
					blk := (r.Off + uint64(i)) / DiskBlock
					if ob, ok := d.overlay[blk]; ok && ob.ticket == job.ticket {
						delete(d.overlay, blk)
						if len(d.free) < maxUnwrittenDisk/DiskBlock {
							d.free = append(d.free, ob.data)
						}
					}
				}
				return nil
			})
			d.written = job.ticket
			d.unwritten -= len(job.batch)
		}
		if len(d.spare) < 4 {
			d.spare = append(d.spare, job.batch)
		}
		d.wakeLocked()
		d.mu.Unlock()
	}
}

// Close writes what was applied, syncs and closes the file. Batches staged
// and never applied (outputs still held when the VM stopped) are not
// written: they never left.
func (d *DiskFile) Close() error {
	d.mu.Lock()
	d.closing = true
	d.wakeLocked()
	d.mu.Unlock()
	<-d.done
	d.mu.Lock()
	err := d.err
	d.mu.Unlock()
	if d.scratch {
		return d.f.Close()
	}
	if serr := unix.Fdatasync(int(d.f.Fd())); err == nil && serr != nil {
		err = fmt.Errorf("vmm: disk %s: %w", d.f.Name(), serr)
	}
	if cerr := d.f.Close(); err == nil && cerr != nil {
		err = cerr
	}
	return err
}

// DiskJournal is a backup's memory of the disk writes it replayed that the
// primary may not have completed: at go-live it writes them again (Batch),
// which is idempotent. A flush's call returns on the primary only once the
// flush is done, so when the replay reaches the next flush, every write
// before the previous flush is known durable and is forgotten: the journal
// holds the writes since the flush before last, at most one copy of each
// block, the newest.
type DiskJournal struct {
	size   uint64
	gen    uint64 // flushes seen
	blocks map[uint64]journalBlock
	free   [][]byte // buffers of forgotten blocks, to reuse
}

type journalBlock struct {
	data []byte
	gen  uint64
}

// NewDiskJournal makes a journal for a disk of size bytes.
func NewDiskJournal(size uint64) *DiskJournal {
	return &DiskJournal{size: size, blocks: map[uint64]journalBlock{}}
}

// Observe takes a replayed disk batch.
func (j *DiskJournal) Observe(batch []byte) error {
	return EachDiskRecord(batch, j.size, func(r DiskRecord) error {
		if r.Hash {
			return nil
		}
		if r.Flush {
			j.gen++
			for blk, b := range j.blocks {
				if b.gen+1 < j.gen {
					delete(j.blocks, blk)
					if len(j.free) < maxUnwrittenDisk/DiskBlock {
						j.free = append(j.free, b.data)
					}
				}
			}
			return nil
		}
		for i := 0; i < len(r.Data); i += DiskBlock {
			blk := (r.Off + uint64(i)) / DiskBlock
			b := j.blocks[blk]
			if b.data == nil {
				if n := len(j.free); n > 0 {
					b.data, j.free = j.free[n-1], j.free[:n-1]
				} else {
					b.data = make([]byte, DiskBlock)
				}
			}
			copy(b.data, r.Data[i:i+DiskBlock])
			b.gen = j.gen
			j.blocks[blk] = b
		}
		return nil
	})
}

// Blocks says how many blocks the journal holds.
func (j *DiskJournal) Blocks() int { return len(j.blocks) }

// Batch is a disk batch that writes every block the journal holds, in
// block order, then flushes; nil when it holds none.
func (j *DiskJournal) Batch() []byte {
	if len(j.blocks) == 0 {
		return nil
	}
	blks := make([]uint64, 0, len(j.blocks))
	for blk := range j.blocks {
		blks = append(blks, blk)
	}
	sort.Slice(blks, func(a, b int) bool { return blks[a] < blks[b] })
	var batch []byte
	for _, blk := range blks {
		batch = EncodeDiskWrite(batch, blk*DiskBlock, j.blocks[blk].data)
	}
	return EncodeDiskFlush(batch)
}
