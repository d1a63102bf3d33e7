package vmm

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"hash/crc64"
	"io"
	"os"

	"github.com/ftvm/ftvm/replay"
)

// The block device (guests/ABI.md, ports 0x30-0x31): requests in a
// descriptor array, many per exit, executed in order and complete when the
// call returns. Reads are inputs: their data comes from the World (logged
// on shared storage). Writes and flushes are one output per call, a disk
// batch (below), which a live world applies to the disk and a recorder
// holds under the Output Rule like a packet. The device keeps no state of
// its own: everything it does follows from guest memory and the config.

// DiskConfig is what the guest sees of its disk. Primary and backup must
// agree on it, so it is part of Config (and of the config digest).
type DiskConfig struct {
	Size uint64 // bytes, a multiple of DiskBlock
	// Local: each side has its own copy and writes it itself; reads are
	// not logged. Otherwise the disk is shared and only the live side
	// touches it.
	Local bool
	// Digest, for a local disk, is the SHA-256 (hex) of the copies when
	// the VM starts: part of the config digest, so a pair whose copies
	// differ is refused at its handshake.
	Digest string
	// File is this side's copy of a local disk: not part of the config
	// (each side has its own), the device reads and writes it.
	File *DiskFile
}

// DiskDigest is the SHA-256 (hex) of a disk image's bytes.
func DiskDigest(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", fmt.Errorf("vmm: disk: %w", err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", fmt.Errorf("vmm: disk %s: %w", path, err)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

const (
	portDiskInfo   = 0x30
	portDiskSubmit = 0x31

	// DiskBlock is the block size: offsets and lengths are multiples.
	DiskBlock = 4096
	// maxDiskBatch bounds the requests of one call, maxDiskCallBytes the
	// data they move: one call is one log entry or one held output.
	maxDiskBatch     = 64
	maxDiskCallBytes = 1 << 20
	diskDescSize     = 24 // struct ftvm_disk_desc: op u32, len u32, offset u64, addr u64

	diskOpRead  = 0
	diskOpWrite = 1
	diskOpFlush = 2

	// batch record tags (EncodeDiskWrite, EncodeDiskFlush, a local disk's
	// hash records)
	batchWrite = 'W'
	batchFlush = 'F'
	batchHash  = 'H'
)

// MaxDiskSize bounds a disk: offsets stay far from overflowing.
const MaxDiskSize = 1 << 40

type disk struct {
	cfg *DiskConfig
	// local is this side's copy of a local disk (AttachLocalDisk); nil
	// for a shared disk, which the World reads and writes.
	local *DiskFile
	reqs  []diskReq // scratch: the validated requests
	offs  []uint64  // scratch: a read batch
	bufs  [][]byte
	batch []byte // scratch: a write batch
	hash  [9]byte
}

// diskInfo: RDI = 16 bytes to fill: size u64, block size u32, max batch u32.
func (d *disk) info(x *exitContext) (bool, int, error) {
	if d.cfg == nil {
		x.setResult(errNoDev)
		return false, 0, nil
	}
	buf, err := x.mem.ForGuest(x.point.Regs.RDI, 16, true)
	if err != nil {
		x.setResult(errFault)
		return false, 0, nil
	}
	binary.LittleEndian.PutUint64(buf[0:], d.cfg.Size)
	binary.LittleEndian.PutUint32(buf[8:], DiskBlock)
	binary.LittleEndian.PutUint32(buf[12:], maxDiskBatch)
	x.setResult(0)
	return false, 0, nil
}

// diskReq is one validated request.
type diskReq struct {
	op  uint32
	off uint64
	buf []byte // guest memory
}

// submit: RDI = descriptor array, RSI = count. A call is all reads, or
// writes and flushes; every descriptor is validated before anything
// happens, and a bad one fails the call with -EINVAL or -EFAULT.
func (d *disk) submit(x *exitContext) (bool, int, error) {
	if d.cfg == nil {
		x.setResult(errNoDev)
		return false, 0, nil
	}
	reqs, errno := d.validate(x, x.point.Regs.RDI, x.point.Regs.RSI)
	if errno != 0 {
		x.setResult(errno)
		return false, 0, nil
	}
	if reqs[0].op == diskOpRead {
		d.offs, d.bufs = d.offs[:0], d.bufs[:0]
		for _, r := range reqs {
			d.offs = append(d.offs, r.off)
			d.bufs = append(d.bufs, r.buf)
		}
		if d.cfg.Local {
			if err := d.readLocal(x); err != nil {
				return false, 0, err
			}
		} else if err := x.world.DiskRead(x.point, d.offs, d.bufs); err != nil {
			return false, 0, err
		}
	} else {
		d.batch = d.batch[:0]
		for _, r := range reqs {
			if r.op == diskOpWrite {
				d.batch = EncodeDiskWrite(d.batch, r.off, r.buf)
			} else {
				d.batch = EncodeDiskFlush(d.batch)
			}
		}
		out := d.batch
		if d.cfg.Local {
			var err error
			if out, err = d.writeLocal(x); err != nil {
				return false, 0, err
			}
		}
		if err := x.world.Output(x.point, replay.OutputDisk, out); err != nil {
			return false, 0, err
		}
	}
	x.setResult(uint64(len(reqs)))
	return false, 0, nil
}

// readLocal reads a local disk: each side its own copy, nothing logged
// but a hash of what was read, an output that the backup's replay checks
// against its own, so copies that differ where the guest reads are a
// divergence, caught at that read.
func (d *disk) readLocal(x *exitContext) error {
	if d.local == nil {
		return x.fault("a read of the local disk, but this side has no copy attached")
	}
	if err := d.local.ReadAt(d.offs, d.bufs); err != nil {
		return err
	}
	h := crc64.New(diskHashTable)
	for _, b := range d.bufs {
		h.Write(b)
	}
	return x.world.Output(x.point, replay.OutputDisk, encodeDiskHash(d.hash[:0], h.Sum64()))
}

// writeLocal writes this side's copy of a local disk (a flush waits for
// it), and returns the output that stands for the batch: its hash.
func (d *disk) writeLocal(x *exitContext) ([]byte, error) {
	if d.local == nil {
		return nil, x.fault("a write to the local disk, but this side has no copy attached")
	}
	if err := d.local.Write(context.Background(), d.batch); err != nil {
		return nil, err
	}
	return encodeDiskHash(d.hash[:0], crc64.Checksum(d.batch, diskHashTable)), nil
}

var diskHashTable = crc64.MakeTable(crc64.ECMA)

// encodeDiskHash appends a hash record: what a local disk's call logs.
func encodeDiskHash(b []byte, h uint64) []byte {
	b = append(b, batchHash)
	return binary.LittleEndian.AppendUint64(b, h)
}

// validate checks count descriptors at addr and returns the requests.
func (d *disk) validate(x *exitContext, addr, count uint64) ([]diskReq, uint64) {
	if count == 0 || count > maxDiskBatch {
		return nil, errInval
	}
	table, err := x.mem.ForGuest(addr, count*diskDescSize, false)
	if err != nil {
		return nil, errFault
	}
	reqs := d.reqs[:0]
	defer func() { d.reqs = reqs[:0] }()
	var total uint64
	reads, writes := false, false
	for i := uint64(0); i < count; i++ {
		t := table[i*diskDescSize:]
		op, n := binary.LittleEndian.Uint32(t[0:]), uint64(binary.LittleEndian.Uint32(t[4:]))
		off, buf := binary.LittleEndian.Uint64(t[8:]), binary.LittleEndian.Uint64(t[16:])
		switch op {
		case diskOpFlush:
			if n != 0 || off != 0 || buf != 0 {
				return nil, errInval
			}
			writes = true
			reqs = append(reqs, diskReq{op: op})
			continue
		case diskOpRead:
			reads = true
		case diskOpWrite:
			writes = true
		default:
			return nil, errInval
		}
		if n == 0 || n%DiskBlock != 0 || off%DiskBlock != 0 || off > d.cfg.Size || n > d.cfg.Size-off {
			return nil, errInval
		}
		if total += n; total > maxDiskCallBytes {
			return nil, errInval
		}
		// A read writes guest memory, which the guest must be able to write.
		mem, err := x.mem.ForGuest(buf, n, op == diskOpRead)
		if err != nil {
			return nil, errFault
		}
		reqs = append(reqs, diskReq{op: op, off: off, buf: mem})
	}
	if reads && writes {
		return nil, errInval
	}
	return reqs, 0
}

// EncodeDiskWrite appends a write record to a disk batch: tag, offset,
// length, data.
func EncodeDiskWrite(b []byte, off uint64, data []byte) []byte {
	b = append(b, batchWrite)
	b = binary.AppendUvarint(b, off)
	b = binary.AppendUvarint(b, uint64(len(data)))
	return append(b, data...)
}

// EncodeDiskFlush appends a flush record: every earlier write is durable
// before the call that asked for it returns.
func EncodeDiskFlush(b []byte) []byte { return append(b, batchFlush) }

// DiskRecord is one record of a disk batch; Data aliases the batch.
// A Hash record stands for a local disk's call (its data stays out of the
// batch): no disk does anything with it.
type DiskRecord struct {
	Hash  bool
	Flush bool
	Off   uint64
	Data  []byte
}

// EachDiskRecord calls f for every record of a batch in order, and checks
// each write against a disk of size bytes: a batch comes from the guest
// through the device, or from a peer (a log, a backup's journal), and is
// not trusted either way.
func EachDiskRecord(batch []byte, size uint64, f func(DiskRecord) error) error {
	for rest := batch; len(rest) > 0; {
		tag := rest[0]
		rest = rest[1:]
		switch tag {
		case batchFlush:
			if err := f(DiskRecord{Flush: true}); err != nil {
				return err
			}
		case batchHash:
			if len(rest) < 8 {
				return fmt.Errorf("vmm: disk batch: a short hash record")
			}
			if err := f(DiskRecord{Hash: true}); err != nil {
				return err
			}
			rest = rest[8:]
		case batchWrite:
			off, k := binary.Uvarint(rest)
			if k <= 0 {
				return fmt.Errorf("vmm: disk batch: bad offset")
			}
			rest = rest[k:]
			n, k := binary.Uvarint(rest)
			if k <= 0 || n > uint64(len(rest)-k) {
				return fmt.Errorf("vmm: disk batch: bad length")
			}
			rest = rest[k:]
			if n == 0 || n%DiskBlock != 0 || off%DiskBlock != 0 || off > size || n > size-off {
				return fmt.Errorf("vmm: disk batch: a write of %d bytes at %d outside a disk of %d bytes or not block aligned", n, off, size)
			}
			if err := f(DiskRecord{Off: off, Data: rest[:n]}); err != nil {
				return err
			}
			rest = rest[n:]
		default:
			return fmt.Errorf("vmm: disk batch: unknown record %#x", tag)
		}
	}
	return nil
}

func (c *DiskConfig) check() error {
	if c.Size == 0 || c.Size%DiskBlock != 0 || c.Size > MaxDiskSize {
		return fmt.Errorf("vmm: a disk of %d bytes: the size is a non-zero multiple of %d, at most %d", c.Size, DiskBlock, uint64(MaxDiskSize))
	}
	if c.Digest != "" && !c.Local {
		return fmt.Errorf("vmm: a shared disk with a digest")
	}
	if c.File != nil && (!c.Local || c.File.Size() != c.Size) {
		return fmt.Errorf("vmm: the local disk's copy %s does not fit the VM's disk (%d bytes, local %t)", c.File.Path(), c.Size, c.Local)
	}
	return nil
}

// diskHashesOnly reports whether a batch holds only hash records: the
// output of a local disk's call, which has nothing to write anywhere.
func diskHashesOnly(batch []byte) bool {
	only := true
	err := EachDiskRecord(batch, MaxDiskSize, func(r DiskRecord) error {
		only = only && r.Hash
		return nil
	})
	return err == nil && only
}
