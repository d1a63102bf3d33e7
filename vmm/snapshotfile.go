package vmm

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"path/filepath"

	"github.com/ftvm/ftvm/replay"
)

// The snapshot file: a State, written in one pass and read back with every
// length checked before it is used.
//
//	magic "FTVMSNAP", version u32
//	image sha256 [32], cpuid digest [32], config digest [32]
//	ABI profile, config text, backend, log VMID: each u32 length + bytes
//	exits u64; log seq u64, log hash u64, log last point (exit u64, 18 regs u64)
//	seen TSC u64, seen monotonic u64
//	regs: 18 u64 (replay.Regs order)
//	FP: fcw u16, fsw u16, ftw u8, 0 u8, fop u16, fip u64, fdp u64, mxcsr u32,
//	    st 8x10 bytes, xmm 16x16 bytes
//	mem size u64; perms: mem size/4096 bytes
//	runs u64, then per run: first page u64, pages u64, pages*4096 bytes
//	    (ascending, not overlapping, inside RAM)
//	CRC-32C (Castagnoli) u32 of every byte before it
//
// Integers are little-endian.
const (
	snapshotMagic   = "FTVMSNAP"
	snapshotVersion = 1
	maxSnapString   = 64 << 10
	// maxSnapMemory bounds the RAM size a snapshot may claim before
	// anything is allocated for it.
	maxSnapMemory = 1 << 40
)

var snapCRC = crc32.MakeTable(crc32.Castagnoli)

// ErrSnapshotCorrupt is wrapped by the error for a snapshot file that is
// truncated, damaged or not a snapshot.
var ErrSnapshotCorrupt = errors.New("the snapshot file is damaged or not a snapshot")

type snapWriter struct {
	w   io.Writer
	crc uint32
	err error
	buf [8]byte
}

func (w *snapWriter) bytes(b []byte) {
	if w.err != nil {
		return
	}
	w.crc = crc32.Update(w.crc, snapCRC, b)
	_, w.err = w.w.Write(b)
}
func (w *snapWriter) u8(v uint8)   { w.bytes([]byte{v}) }
func (w *snapWriter) u16(v uint16) { binary.LittleEndian.PutUint16(w.buf[:], v); w.bytes(w.buf[:2]) }
func (w *snapWriter) u32(v uint32) { binary.LittleEndian.PutUint32(w.buf[:], v); w.bytes(w.buf[:4]) }
func (w *snapWriter) u64(v uint64) { binary.LittleEndian.PutUint64(w.buf[:], v); w.bytes(w.buf[:8]) }
func (w *snapWriter) str(s string) { w.u32(uint32(len(s))); w.bytes([]byte(s)) }
func (w *snapWriter) regs(r *replay.Regs) {
	for _, v := range r.Array() {
		w.u64(v)
	}
}

// Encode writes s in the snapshot format.
func (s *State) Encode(out io.Writer) error {
	for _, str := range []string{s.ABIProfile, s.Config, s.Backend, s.LogVMID} {
		if len(str) > maxSnapString {
			return fmt.Errorf("vmm: snapshot: a string of %d bytes (at most %d)", len(str), maxSnapString)
		}
	}
	w := &snapWriter{w: out}
	w.bytes([]byte(snapshotMagic))
	w.u32(snapshotVersion)
	w.bytes(s.ImageSHA256[:])
	w.bytes(s.CPUIDDigest[:])
	w.bytes(s.ConfigDigest[:])
	w.str(s.ABIProfile)
	w.str(s.Config)
	w.str(s.Backend)
	w.str(s.LogVMID)
	w.u64(s.Exits)
	w.u64(s.Log.Seq)
	w.u64(s.Log.Hash)
	w.u64(s.Log.Last.Exit)
	w.regs(&s.Log.Last.Regs)
	w.u64(s.Seen.TSC)
	w.u64(s.Seen.Monotonic)
	w.regs(&s.Regs)
	fp := &s.FP
	w.u16(fp.FCW)
	w.u16(fp.FSW)
	w.u8(fp.FTW)
	w.u8(0)
	w.u16(fp.FOP)
	w.u64(fp.FIP)
	w.u64(fp.FDP)
	w.u32(fp.MXCSR)
	for i := range fp.ST {
		w.bytes(fp.ST[i][:])
	}
	for i := range fp.XMM {
		w.bytes(fp.XMM[i][:])
	}
	w.u64(s.MemSize)
	w.bytes(s.Perms)
	w.u64(uint64(len(s.RAM)))
	for _, r := range s.RAM {
		w.u64(r.FirstPage)
		w.u64(uint64(len(r.Data)) / pageSize)
		w.bytes(r.Data)
	}
	if w.err != nil {
		return fmt.Errorf("vmm: writing the snapshot: %w", w.err)
	}
	var crc [4]byte
	binary.LittleEndian.PutUint32(crc[:], w.crc)
	if _, err := out.Write(crc[:]); err != nil {
		return fmt.Errorf("vmm: writing the snapshot: %w", err)
	}
	return nil
}

// WriteFile writes s to path: to path.incomplete first, synced, then
// renamed, so that path is never a half-written snapshot.
func (s *State) WriteFile(path string) (err error) {
	tmp := path + ".incomplete"
	f, err := os.Create(tmp)
	if err != nil {
		return fmt.Errorf("vmm: creating the snapshot: %w", err)
	}
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(tmp)
		}
	}()
	bw := newBufWriter(f)
	if err := s.Encode(bw); err != nil {
		return err
	}
	if err := bw.Flush(); err != nil {
		return fmt.Errorf("vmm: writing the snapshot: %w", err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("vmm: syncing the snapshot: %w", err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("vmm: closing the snapshot: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("vmm: naming the snapshot: %w", err)
	}
	if d, err := os.Open(filepath.Dir(path)); err == nil {
		d.Sync()
		d.Close()
	}
	return nil
}

// ReadStateFile reads a snapshot file written by WriteFile.
func ReadStateFile(path string) (*State, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("vmm: reading the snapshot: %w", err)
	}
	s, err := DecodeState(b)
	if err != nil {
		return nil, fmt.Errorf("%w (%s)", err, path)
	}
	return s, nil
}

// DecodeState parses a snapshot. A truncated or damaged one is an error
// wrapping ErrSnapshotCorrupt that says what is wrong.
func DecodeState(b []byte) (*State, error) {
	if len(b) < len(snapshotMagic)+4+4 || string(b[:len(snapshotMagic)]) != snapshotMagic {
		return nil, fmt.Errorf("vmm: no snapshot header (magic %q): %w", snapshotMagic, ErrSnapshotCorrupt)
	}
	if v := binary.LittleEndian.Uint32(b[len(snapshotMagic):]); v != snapshotVersion {
		return nil, fmt.Errorf("vmm: snapshot format version %d; this ftvm reads version %d: %w", v, snapshotVersion, ErrSnapshotCorrupt)
	}
	body, sum := b[:len(b)-4], binary.LittleEndian.Uint32(b[len(b)-4:])
	if got := crc32.Checksum(body, snapCRC); got != sum {
		return nil, fmt.Errorf("vmm: snapshot checksum %#08x, its bytes give %#08x (truncated or damaged): %w", sum, got, ErrSnapshotCorrupt)
	}
	return decodeBody(body[len(snapshotMagic)+4:])
}

type snapReader struct {
	b   []byte
	off int
	err error
}

func (r *snapReader) take(n uint64, what string) []byte {
	if r.err != nil {
		return nil
	}
	if n > uint64(len(r.b)-r.off) {
		r.err = fmt.Errorf("vmm: snapshot ends inside %s (needs %d bytes at offset %d, %d left): %w", what, n, r.off, len(r.b)-r.off, ErrSnapshotCorrupt)
		return nil
	}
	s := r.b[r.off : r.off+int(n)]
	r.off += int(n)
	return s
}

func (r *snapReader) u8(what string) uint8 {
	if s := r.take(1, what); s != nil {
		return s[0]
	}
	return 0
}
func (r *snapReader) u16(what string) uint16 {
	if s := r.take(2, what); s != nil {
		return binary.LittleEndian.Uint16(s)
	}
	return 0
}
func (r *snapReader) u32(what string) uint32 {
	if s := r.take(4, what); s != nil {
		return binary.LittleEndian.Uint32(s)
	}
	return 0
}
func (r *snapReader) u64(what string) uint64 {
	if s := r.take(8, what); s != nil {
		return binary.LittleEndian.Uint64(s)
	}
	return 0
}
func (r *snapReader) str(what string) string {
	n := r.u32(what)
	if r.err == nil && n > maxSnapString {
		r.err = fmt.Errorf("vmm: snapshot %s of %d bytes (at most %d): %w", what, n, maxSnapString, ErrSnapshotCorrupt)
	}
	return string(r.take(uint64(n), what))
}
func (r *snapReader) regs(what string) replay.Regs {
	var a [18]uint64
	for i := range a {
		a[i] = r.u64(what)
	}
	return regsFromArray(a)
}
func (r *snapReader) fixed(dst []byte, what string) { copy(dst, r.take(uint64(len(dst)), what)) }

// regsFromArray is the inverse of replay.Regs.Array.
func regsFromArray(a [18]uint64) replay.Regs {
	var r replay.Regs
	p := [18]*uint64{&r.RAX, &r.RBX, &r.RCX, &r.RDX, &r.RSI, &r.RDI, &r.RSP, &r.RBP,
		&r.R8, &r.R9, &r.R10, &r.R11, &r.R12, &r.R13, &r.R14, &r.R15, &r.RIP, &r.RFLAGS}
	for i := range a {
		*p[i] = a[i]
	}
	return r
}

// decodeBody parses what follows the magic and version, up to the CRC.
// Every length is checked against what is left before anything is
// allocated for it.
func decodeBody(b []byte) (*State, error) {
	r := &snapReader{b: b}
	s := &State{}
	r.fixed(s.ImageSHA256[:], "the image hash")
	r.fixed(s.CPUIDDigest[:], "the cpuid digest")
	r.fixed(s.ConfigDigest[:], "the config digest")
	s.ABIProfile = r.str("the ABI profile")
	s.Config = r.str("the configuration")
	s.Backend = r.str("the backend name")
	s.LogVMID = r.str("the log's VM id")
	s.Exits = r.u64("the exit count")
	s.Log.Seq = r.u64("the log position")
	s.Log.Hash = r.u64("the log position")
	s.Log.Last.Exit = r.u64("the log position")
	s.Log.Last.Regs = r.regs("the log position")
	s.Seen.TSC = r.u64("the clocks")
	s.Seen.Monotonic = r.u64("the clocks")
	s.Regs = r.regs("the registers")
	fp := &s.FP
	fp.FCW = r.u16("the FPU state")
	fp.FSW = r.u16("the FPU state")
	fp.FTW = r.u8("the FPU state")
	r.u8("the FPU state")
	fp.FOP = r.u16("the FPU state")
	fp.FIP = r.u64("the FPU state")
	fp.FDP = r.u64("the FPU state")
	fp.MXCSR = r.u32("the FPU state")
	for i := range fp.ST {
		r.fixed(fp.ST[i][:], "the x87 registers")
	}
	for i := range fp.XMM {
		r.fixed(fp.XMM[i][:], "the XMM registers")
	}
	s.MemSize = r.u64("the memory size")
	if r.err != nil {
		return nil, r.err
	}
	if s.MemSize == 0 || s.MemSize%pageSize != 0 || s.MemSize > maxSnapMemory {
		return nil, fmt.Errorf("vmm: snapshot memory size %d is not a whole number of pages up to %d: %w", s.MemSize, uint64(maxSnapMemory), ErrSnapshotCorrupt)
	}
	if s.Log.Last.Exit > s.Exits {
		return nil, fmt.Errorf("vmm: snapshot log position at exit %d, after its exit count %d: %w", s.Log.Last.Exit, s.Exits, ErrSnapshotCorrupt)
	}
	pages := s.MemSize / pageSize
	s.Perms = append([]byte(nil), r.take(pages, "the page permissions")...)
	nruns := r.u64("the memory")
	if r.err != nil {
		return nil, r.err
	}
	if nruns > pages {
		return nil, fmt.Errorf("vmm: snapshot claims %d memory runs for %d pages: %w", nruns, pages, ErrSnapshotCorrupt)
	}
	next := uint64(0) // the first page the next run may start at
	for i := uint64(0); i < nruns; i++ {
		first, n := r.u64("a memory run"), r.u64("a memory run")
		if r.err != nil {
			return nil, r.err
		}
		if first < next || n == 0 || first >= pages || n > pages-first {
			return nil, fmt.Errorf("vmm: snapshot memory run %d (pages %d+%d) is out of order or outside %d pages: %w", i, first, n, pages, ErrSnapshotCorrupt)
		}
		data := r.take(n*pageSize, "a memory run")
		if r.err != nil {
			return nil, r.err
		}
		s.RAM = append(s.RAM, MemRun{FirstPage: first, Data: data})
		next = first + n
	}
	if r.off != len(b) {
		return nil, fmt.Errorf("vmm: %d bytes after the snapshot's last memory run: %w", len(b)-r.off, ErrSnapshotCorrupt)
	}
	return s, nil
}

func newBufWriter(w io.Writer) *bufio.Writer { return bufio.NewWriterSize(w, 1<<20) }
