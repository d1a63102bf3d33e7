package vmm

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"sync/atomic"
)

// The pre-copy stream: one writer and one reader over one record format.
//
//	header: magic "FTVMPCPY", version u32, RAM size u64, CRC-32C u32 of them
//	records, each: kind u8, round u32, first page u64, count u64,
//	    payload, CRC-32C u32 of the record's bytes before it
//	  kind 1 (pages): count pages of data at page first
//	      (0 < count <= 256, first+count <= RAM pages); a later record for a
//	      page replaces an earlier one
//	  kind 2 (clear): every page becomes zero (first = count = 0, no payload)
//	  kind 3 (state): count bytes of a snapshot file (State.Encode) with no
//	      RAM runs; the last record
//	  kind 4 (disk begin): the live side's local disk follows: first is
//	      its size, count its chunk size (DiskChunkSize); no payload; at
//	      most once, before any other disk record
//	  kind 5 (disk): count bytes of the disk at byte first (block
//	      aligned, 0 < count <= 1 MiB, within the disk); a later record
//	      for a block replaces an earlier one
//	  kind 6 (disk done): first = 0, count = 32: the disk's root hash
//	      (diskRoot) at the final pause, which the receiver's copy, read
//	      back whole, must have; before the state
//
// Rounds never decrease. Integers are little-endian. A stream for a
// receiver with a local disk has the disk records; one without has none.
const (
	precopyMagic    = "FTVMPCPY"
	precopyVersion  = 2
	precopyMaxPages = 256
	recPages        = 1
	recClear        = 2
	recState        = 3
	recDiskBegin    = 4
	recDisk         = 5
	recDiskDone     = 6
	recHeadSize     = 1 + 4 + 8 + 8
	maxDiskRecord   = 1 << 20
)

// ErrPrecopyCorrupt is wrapped by ReceivePrecopy's error for a stream that
// is truncated, damaged or not a pre-copy stream.
var ErrPrecopyCorrupt = errors.New("the pre-copy stream is damaged or not a pre-copy stream")

type precopyWriter struct {
	w *bufio.Writer
	n uint64 // bytes written
	// page holds one record's pages copied out of RAM, so that the CRC
	// and the bytes sent are of the same copy while the guest writes on.
	page []byte
	// stop, if set, ends the transfer at the next record: the machine is
	// being closed (Machine.Close).
	stop *atomic.Bool
}

// errMachineClosed ends a transfer whose machine was closed under it.
var errMachineClosed = errors.New("vmm: pre-copy: the machine was closed")

func newPrecopyWriter(w io.Writer) *precopyWriter {
	return &precopyWriter{w: bufio.NewWriterSize(w, 1<<20)}
}

func (w *precopyWriter) write(parts ...[]byte) error {
	crc := uint32(0)
	for _, b := range parts {
		crc = crc32.Update(crc, snapCRC, b)
		if _, err := w.w.Write(b); err != nil {
			return fmt.Errorf("vmm: pre-copy: writing the stream: %w", err)
		}
		w.n += uint64(len(b))
	}
	var c [4]byte
	binary.LittleEndian.PutUint32(c[:], crc)
	if _, err := w.w.Write(c[:]); err != nil {
		return fmt.Errorf("vmm: pre-copy: writing the stream: %w", err)
	}
	w.n += 4
	return nil
}

func (w *precopyWriter) header(memSize uint64) error {
	h := make([]byte, 0, 20)
	h = append(h, precopyMagic...)
	h = binary.LittleEndian.AppendUint32(h, precopyVersion)
	h = binary.LittleEndian.AppendUint64(h, memSize)
	return w.write(h)
}

func recHead(kind uint8, round uint32, first, count uint64) []byte {
	h := make([]byte, 0, recHeadSize)
	h = append(h, kind)
	h = binary.LittleEndian.AppendUint32(h, round)
	h = binary.LittleEndian.AppendUint64(h, first)
	return binary.LittleEndian.AppendUint64(h, count)
}

// pages writes data (whole pages at page first, possibly changing as it
// is read) as records of at most precopyMaxPages pages.
func (w *precopyWriter) pages(round uint32, first uint64, data []byte) error {
	if w.page == nil {
		w.page = make([]byte, precopyMaxPages*pageSize)
	}
	for len(data) > 0 {
		if w.stop != nil && w.stop.Load() {
			return errMachineClosed
		}
		n := min(uint64(len(data))/pageSize, precopyMaxPages)
		copy(w.page, data[:n*pageSize])
		if err := w.write(recHead(recPages, round, first, n), w.page[:n*pageSize]); err != nil {
			return err
		}
		first, data = first+n, data[n*pageSize:]
	}
	return nil
}

func (w *precopyWriter) clearAll(round uint32) error {
	return w.write(recHead(recClear, round, 0, 0))
}

func (w *precopyWriter) state(round uint32, s *State) error {
	cpu := *s
	cpu.RAM = nil
	var b bytes.Buffer
	if err := cpu.Encode(&b); err != nil {
		return err
	}
	return w.write(recHead(recState, round, 0, uint64(b.Len())), b.Bytes())
}

func (w *precopyWriter) diskBegin(size, chunk uint64) error {
	return w.write(recHead(recDiskBegin, 0, size, chunk))
}

// disk writes data (whole blocks of the disk at byte off, a copy that
// does not change) as records of at most maxDiskRecord bytes.
func (w *precopyWriter) disk(round uint32, off uint64, data []byte) error {
	for len(data) > 0 {
		if w.stop != nil && w.stop.Load() {
			return errMachineClosed
		}
		n := min(len(data), maxDiskRecord)
		if err := w.write(recHead(recDisk, round, off, uint64(n)), data[:n]); err != nil {
			return err
		}
		off, data = off+uint64(n), data[n:]
	}
	return nil
}

func (w *precopyWriter) diskDone(round uint32, root [32]byte) error {
	return w.write(recHead(recDiskDone, round, 0, uint64(len(root))), root[:])
}

func (w *precopyWriter) flush() error {
	if err := w.w.Flush(); err != nil {
		return fmt.Errorf("vmm: pre-copy: writing the stream: %w", err)
	}
	return nil
}

// ReceivePrecopy reads a pre-copy stream to its state record, applying its
// pages to a fresh RAM, and returns the State the sender's machine had at
// the final pause: what Restore takes. Every length is checked before it is
// used; a damaged stream is an error wrapping ErrPrecopyCorrupt.
func ReceivePrecopy(r io.Reader) (*State, error) { return ReceivePrecopyDisk(r, nil) }

// ReceivePrecopyDisk is ReceivePrecopy for a receiver with a local disk,
// disk (nil for none): the stream's disk records are written into it, and
// before the state is returned the copy is synced, read back whole and
// proven equal to the sender's at the pause (the disk done record). A
// stream whose disk is of another size is refused (ErrDiskSize).
func ReceivePrecopyDisk(r io.Reader, disk *DiskFile) (*State, error) {
	br := bufio.NewReaderSize(r, 1<<20)
	bad := func(format string, a ...any) error {
		return fmt.Errorf("vmm: pre-copy: "+format+": %w", append(a, ErrPrecopyCorrupt)...)
	}
	var hdr [20]byte
	if _, err := io.ReadFull(br, hdr[:]); err != nil {
		return nil, bad("reading the header: %v", err)
	}
	if string(hdr[:8]) != precopyMagic {
		return nil, bad("no header (magic %q)", precopyMagic)
	}
	if v := binary.LittleEndian.Uint32(hdr[8:]); v != precopyVersion {
		return nil, bad("format version %d, this ftvm reads %d", v, precopyVersion)
	}
	if err := checkCRC(br, hdr[:]); err != nil {
		return nil, bad("header: %v", err)
	}
	memSize := binary.LittleEndian.Uint64(hdr[12:])
	if memSize == 0 || memSize%pageSize != 0 || memSize > maxSnapMemory {
		return nil, bad("RAM size %d is not a whole number of pages up to %d", memSize, uint64(maxSnapMemory))
	}
	pages := memSize / pageSize
	ram := make([]byte, memSize)
	// A state record holds a snapshot without RAM: its permissions are
	// one byte a page, the rest far less than 64 KiB of strings and fields.
	maxState := pages + 5*maxSnapString + 4096
	lastRound := uint32(0)
	// The disk: begun at its begin record, proven at its done record.
	var diskBuf []byte
	var diskChunk uint64
	diskProven := false
	for rec := 0; ; rec++ {
		var h [recHeadSize]byte
		if _, err := io.ReadFull(br, h[:]); err != nil {
			return nil, bad("record %d: %v (the stream ends before its state)", rec, err)
		}
		kind, round := h[0], binary.LittleEndian.Uint32(h[1:])
		first, count := binary.LittleEndian.Uint64(h[5:]), binary.LittleEndian.Uint64(h[13:])
		if round < lastRound {
			return nil, bad("record %d of round %d after round %d", rec, round, lastRound)
		}
		lastRound = round
		switch kind {
		case recPages:
			if count == 0 || count > precopyMaxPages || first >= pages || count > pages-first {
				return nil, bad("record %d: pages %d+%d outside %d pages or over %d", rec, first, count, pages, precopyMaxPages)
			}
			dst := ram[first*pageSize : (first+count)*pageSize]
			if _, err := io.ReadFull(br, dst); err != nil {
				return nil, bad("record %d: %v", rec, err)
			}
			if err := checkCRC(br, h[:], dst); err != nil {
				return nil, bad("record %d (pages %d+%d): %v", rec, first, count, err)
			}
		case recClear:
			if first != 0 || count != 0 {
				return nil, bad("record %d: a clear with operands %d, %d", rec, first, count)
			}
			if err := checkCRC(br, h[:]); err != nil {
				return nil, bad("record %d: %v", rec, err)
			}
			clear(ram)
		case recDiskBegin:
			if err := checkCRC(br, h[:]); err != nil {
				return nil, bad("record %d: %v", rec, err)
			}
			switch {
			case disk == nil:
				return nil, bad("record %d: a local disk of %d bytes, but this side has no local disk to write it to", rec, first)
			case diskChunk != 0:
				return nil, bad("record %d: a second disk begin", rec)
			case first != disk.Size():
				return nil, fmt.Errorf("vmm: pre-copy: the sender's disk has %d bytes, this side's copy %s %d: %w", first, disk.Path(), disk.Size(), ErrDiskSize)
			case count != DiskChunkSize(first):
				return nil, bad("record %d: disk chunks of %d bytes, want %d", rec, count, DiskChunkSize(first))
			}
			diskChunk = count
		case recDisk:
			if diskChunk == 0 || diskProven {
				return nil, bad("record %d: disk data outside the disk's begin and done", rec)
			}
			if count == 0 || count > maxDiskRecord || count%DiskBlock != 0 || first%DiskBlock != 0 || first >= disk.Size() || count > disk.Size()-first {
				return nil, bad("record %d: disk data of %d bytes at %d, outside a disk of %d bytes, over %d or not block aligned", rec, count, first, disk.Size(), maxDiskRecord)
			}
			if diskBuf == nil {
				diskBuf = make([]byte, maxDiskRecord)
			}
			b := diskBuf[:count]
			if _, err := io.ReadFull(br, b); err != nil {
				return nil, bad("record %d: %v", rec, err)
			}
			if err := checkCRC(br, h[:], b); err != nil {
				return nil, bad("record %d (disk %d+%d): %v", rec, first, count, err)
			}
			if err := disk.Fill(first, b); err != nil {
				return nil, fmt.Errorf("vmm: pre-copy: %w", err)
			}
		case recDiskDone:
			if diskChunk == 0 || diskProven || first != 0 || count != sha256.Size {
				return nil, bad("record %d: a disk done with operands %d, %d, out of place", rec, first, count)
			}
			var root [sha256.Size]byte
			if _, err := io.ReadFull(br, root[:]); err != nil {
				return nil, bad("record %d: %v", rec, err)
			}
			if err := checkCRC(br, h[:], root[:]); err != nil {
				return nil, bad("record %d (disk done): %v", rec, err)
			}
			if err := disk.Sync(context.Background()); err != nil {
				return nil, err
			}
			hashes, err := diskChunkHashes(disk, diskChunk)
			if err != nil {
				return nil, err
			}
			if mine := diskRoot(disk.Size(), diskChunk, hashes); mine != root {
				return nil, fmt.Errorf("vmm: pre-copy: this side's copy of the disk, read back, hashes to %x, the sender's at the pause to %x: the copies differ", mine[:8], root[:8])
			}
			diskProven = true
		case recState:
			if disk != nil && !diskProven {
				return nil, bad("record %d: the state, but the stream never proved this side's copy of the disk equal to the sender's", rec)
			}
			if count > maxState {
				return nil, bad("record %d: a state of %d bytes (at most %d for %d pages)", rec, count, maxState, pages)
			}
			b := make([]byte, count)
			if _, err := io.ReadFull(br, b); err != nil {
				return nil, bad("record %d: %v", rec, err)
			}
			if err := checkCRC(br, h[:], b); err != nil {
				return nil, bad("record %d (the state): %v", rec, err)
			}
			st, err := DecodeState(b)
			if err != nil {
				return nil, fmt.Errorf("vmm: pre-copy: the state: %w", err)
			}
			if st.MemSize != memSize || len(st.RAM) != 0 {
				return nil, bad("the state has %d bytes of RAM and %d runs, the stream %d bytes", st.MemSize, len(st.RAM), memSize)
			}
			st.RAM = ramRuns(ram)
			return st, nil
		default:
			return nil, bad("record %d of unknown kind %d", rec, kind)
		}
	}
}

func checkCRC(r io.Reader, parts ...[]byte) error {
	var c [4]byte
	if _, err := io.ReadFull(r, c[:]); err != nil {
		return err
	}
	crc := uint32(0)
	for _, b := range parts {
		crc = crc32.Update(crc, snapCRC, b)
	}
	if got := binary.LittleEndian.Uint32(c[:]); got != crc {
		return fmt.Errorf("checksum %#08x, its bytes give %#08x", got, crc)
	}
	return nil
}

// ramRuns returns the non-zero pages of ram as runs aliasing it.
func ramRuns(ram []byte) []MemRun {
	var runs []MemRun
	for p := 0; p < len(ram)/pageSize; p++ {
		if bytes.Equal(ram[p*pageSize:(p+1)*pageSize], zeroPage[:]) {
			continue
		}
		if n := len(runs); n > 0 && runs[n-1].FirstPage+uint64(len(runs[n-1].Data))/pageSize == uint64(p) {
			runs[n-1].Data = ram[runs[n-1].FirstPage*pageSize : (p+1)*pageSize]
			continue
		}
		runs = append(runs, MemRun{FirstPage: uint64(p), Data: ram[p*pageSize : (p+1)*pageSize]})
	}
	return runs
}
