package vmm

import (
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
)

// Bringing a joining backup's copy of a local disk up to the live side's:
// the backup offers the SHA-256 of each chunk of its copy (DiskOffer),
// the live side's pre-copy sends the chunks whose hash differs while the
// guest runs, then the chunks written since the comparison began, the
// last of them in the final pause, and a root hash over every chunk's
// hash at the pause, which the backup checks against its copy read back
// whole (see precopystream.go for the records).

// maxDiskChunks bounds the chunks of a disk, so that an offer is at most
// 2 MiB of hashes however large the disk: chunks are 64 KiB, or larger
// for disks over 4 GiB.
const maxDiskChunks = 1 << 16

// DiskChunkSize is the chunk the copies of a disk of size bytes are
// compared and sent in: a power of two, at least 64 KiB.
func DiskChunkSize(size uint64) uint64 {
	c := uint64(64 << 10)
	for (size+c-1)/c > maxDiskChunks {
		c *= 2
	}
	return c
}

// The offer: magic "FTVMDOFR", version u32, disk size u64, chunk size
// u64, the SHA-256 of each chunk in order (the last may be short), and a
// CRC-32C u32 of the bytes before it.
const (
	diskOfferMagic   = "FTVMDOFR"
	diskOfferVersion = 1
	diskOfferHead    = 8 + 4 + 8 + 8
)

// DiskOffer reads d whole and returns its offer: what a joining backup
// tells the live side of its copy.
func DiskOffer(d *DiskFile) ([]byte, error) {
	chunk := DiskChunkSize(d.size)
	hashes, err := diskChunkHashes(d, chunk)
	if err != nil {
		return nil, err
	}
	b := make([]byte, 0, diskOfferHead+len(hashes)*sha256.Size+4)
	b = append(b, diskOfferMagic...)
	b = binary.LittleEndian.AppendUint32(b, diskOfferVersion)
	b = binary.LittleEndian.AppendUint64(b, d.size)
	b = binary.LittleEndian.AppendUint64(b, chunk)
	for _, h := range hashes {
		b = append(b, h[:]...)
	}
	return binary.LittleEndian.AppendUint32(b, crc32.Checksum(b, snapCRC)), nil
}

// ErrDiskSize is wrapped by the error for two copies of a local disk
// whose sizes differ: the joining side needs a copy of the same size.
var ErrDiskSize = errors.New("the copies of the local disk differ in size")

// parseDiskOffer checks an offer from a joining side against this side's
// disk of size bytes and returns its chunk hashes.
func parseDiskOffer(b []byte, size uint64) ([][sha256.Size]byte, error) {
	bad := func(format string, a ...any) error {
		return fmt.Errorf("vmm: the joining side's offer of its disk: "+format, a...)
	}
	if len(b) < diskOfferHead+4 || string(b[:8]) != diskOfferMagic {
		return nil, bad("%d bytes, not an offer", len(b))
	}
	body := b[:len(b)-4]
	if crc := binary.LittleEndian.Uint32(b[len(b)-4:]); crc != crc32.Checksum(body, snapCRC) {
		return nil, bad("checksum %#08x does not match its bytes", crc)
	}
	if v := binary.LittleEndian.Uint32(b[8:]); v != diskOfferVersion {
		return nil, bad("version %d, this ftvm reads %d", v, diskOfferVersion)
	}
	theirSize, chunk := binary.LittleEndian.Uint64(b[12:]), binary.LittleEndian.Uint64(b[20:])
	if theirSize != size {
		return nil, fmt.Errorf("vmm: the joining side's copy of the disk has %d bytes, this side's %d: %w", theirSize, size, ErrDiskSize)
	}
	if chunk != DiskChunkSize(size) {
		return nil, bad("chunks of %d bytes, want %d", chunk, DiskChunkSize(size))
	}
	n := (size + chunk - 1) / chunk
	if uint64(len(body)-diskOfferHead) != n*sha256.Size {
		return nil, bad("%d bytes of hashes for %d chunks", len(body)-diskOfferHead, n)
	}
	hashes := make([][sha256.Size]byte, n)
	for i := range hashes {
		copy(hashes[i][:], body[diskOfferHead+i*sha256.Size:])
	}
	return hashes, nil
}

// diskChunkHashes reads d whole, chunk by chunk, and hashes each chunk.
func diskChunkHashes(d *DiskFile, chunk uint64) ([][sha256.Size]byte, error) {
	n := (d.size + chunk - 1) / chunk
	hashes := make([][sha256.Size]byte, n)
	buf := make([]byte, chunk)
	for i := range n {
		b, err := readChunk(d, chunk, i, buf)
		if err != nil {
			return nil, err
		}
		hashes[i] = sha256.Sum256(b)
	}
	return hashes, nil
}

// readChunk reads chunk i of d into buf (as long as a chunk) and returns
// the part the chunk fills: the last one may be short.
func readChunk(d *DiskFile, chunk, i uint64, buf []byte) ([]byte, error) {
	off := i * chunk
	b := buf[:min(chunk, d.size-off)]
	if err := d.ReadAt([]uint64{off}, [][]byte{b}); err != nil {
		return nil, err
	}
	return b, nil
}

// diskRoot is the hash of a whole disk from its chunks' hashes.
func diskRoot(size, chunk uint64, hashes [][sha256.Size]byte) [sha256.Size]byte {
	h := sha256.New()
	var head [16]byte
	binary.LittleEndian.PutUint64(head[0:], size)
	binary.LittleEndian.PutUint64(head[8:], chunk)
	h.Write([]byte("ftvm-disk-root"))
	h.Write(head[:])
	for _, c := range hashes {
		h.Write(c[:])
	}
	var r [sha256.Size]byte
	h.Sum(r[:0])
	return r
}
