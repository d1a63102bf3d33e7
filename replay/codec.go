package replay

// The log format, version 1. One encoder and one decoder serve the log file,
// the logging channel and the tests.
//
//	stream  = header frame*
//	header  = magic "FTVMLOG\x00" (8 bytes), version uint16 LE, flags uint16 LE (0)
//	frame   = uvarint payload length (<= MaxFrameLen)
//	          uvarint entry count (>= 1, <= payload length)
//	          payload
//	          CRC-32C (Castagnoli) uint32 LE of everything above in the frame
//	payload = uvarint Seq of the frame's first entry, then the entries
//	entry   = tag byte, [exit], [rip], body
//
// Every frame decodes on its own: the delta state below starts from zero at
// each frame, so a reader can start at any frame boundary (a backup that
// reconnects, a file read from a known frame). Entries within one stream
// must carry consecutive Seqs; a gap between frames is an error.
//
// The tag byte holds the Kind in its low five bits and three flags:
//
//	0x20 exit-next: the entry's Exit is the previous entry's Exit + 1
//	     (otherwise a uvarint Exit - previous Exit follows)
//	0x40 same-rip: RIP equals the last RIP of an entry of this kind in the
//	     frame (otherwise a zigzag varint RIP - that RIP follows)
//	0x80 kind flag, meaning by kind (below); must be clear where unused
//
// Control entries (Start, End) have no exit or rip field and their exit
// and rip flags are clear. The "previous" Exit and per-kind RIPs start at 0
// in each frame. Bodies:
//
//	tsc          [zigzag varint delta-of-delta]; kind flag: it is 0 and absent
//	clock        zigzag varint delta-of-delta, per clock; kind flag: realtime
//	random       8 bytes LE; kind flag: rdseed
//	console-read uvarint length, bytes; kind flag: eof
//	wait         uvarint result
//	output       uvarint length, 8-byte LE OutputHash; kind flag: packet
//	disk-output  (tag kind 13: an output entry of OutputDisk) uvarint
//	             length, 8-byte LE OutputHash; kind flag clear
//	power-off    zigzag varint status
//	checkpoint   8-byte LE PointHash sum, uvarint mask of the registers that
//	             changed since the frame's previous checkpoint (bit i is
//	             RegNames[i]; never rip, which is the entry's), then for
//	             each set bit a zigzag varint delta from that value
//	net-rx, disk-read  uvarint length, bytes
//	start        image, cpuid, config digests (32 bytes each), uvarint
//	             length, VM id bytes
//	end          32-byte digest
//
// Delta-of-delta: a counter read at a steady pace (the TSC in a compute
// loop) has nearly equal deltas, so the difference between this delta and
// the previous one is small; when the pace is exact it is 0 and costs
// nothing. All arithmetic wraps modulo 2^64, so any values round-trip.

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
)

const (
	// Magic opens every log stream.
	Magic = "FTVMLOG\x00"
	// Version is the format version this package writes and reads.
	Version uint16 = 1
	// headerLen is the size of the stream header.
	headerLen = len(Magic) + 2 + 2
	// DefaultFrameSize is the payload size at which an Encoder closes a
	// frame by itself: large enough that framing costs nothing per entry,
	// small enough that a frame is a moment of recording.
	DefaultFrameSize = 64 << 10
)

const (
	tagKindMask = 0x1f
	tagExitNext = 0x20
	tagSameRIP  = 0x40
	tagKindFlag = 0x80
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// Header is the start of a log stream.
type Header struct {
	// Version is the format version; this package reads only Version.
	Version uint16
	// Flags are reserved and 0.
	Flags uint16
}

// deltaOfDelta is the state of one delta-of-delta coded counter.
type deltaOfDelta struct {
	prev, delta uint64
	// started is false until the first value of the frame: that value's
	// delta is from 0 and is not taken as the pace of the next one.
	started bool
}

// next returns the delta-of-delta that codes v and advances the state.
func (s *deltaOfDelta) next(v uint64) int64 {
	delta := v - s.prev
	dod := int64(delta - s.delta)
	s.prev = v
	if s.started {
		s.delta = delta
	}
	s.started = true
	return dod
}

// value returns the value coded by dod and advances the state; the inverse
// of next.
func (s *deltaOfDelta) value(dod int64) uint64 {
	delta := s.delta + uint64(dod)
	v := s.prev + delta
	s.prev = v
	if s.started {
		s.delta = delta
	}
	s.started = true
	return v
}

// frameState is the delta state shared by the encoder and the decoder; it
// is zero at the start of every frame.
type frameState struct {
	exit  uint64
	rip   [wireKindDiskOutput + 1]uint64 // by wire kind
	tsc   deltaOfDelta
	clock [ClockRealtime + 1]deltaOfDelta
	regs  [18]uint64 // of the frame's previous checkpoint
}

// ripIndex is the index of rip in RegNames.
const ripIndex = 16

// Encoder writes entries to a stream: it collects them in an open frame and
// Flush writes the frame. It checks every entry against Entry's invariants,
// so whatever it writes decodes. Not safe for concurrent use.
type Encoder struct {
	w         io.Writer
	frameSize int

	payload []byte // of the open frame
	count   int    // entries in the open frame
	st      frameState
	out     []byte // scratch for the framed bytes

	wroteHeader bool
	nextSeq     uint64 // Seq the next entry must have; 0 before the first
	lastExit    uint64
	written     int64
	frames      uint64
	err         error // a write error: the stream is broken from here on
}

// NewEncoder returns an Encoder writing to w with DefaultFrameSize.
func NewEncoder(w io.Writer) *Encoder { return NewEncoderSize(w, DefaultFrameSize) }

// NewEncoderSize returns an Encoder that closes a frame by itself once its
// payload reaches frameSize bytes (clamped to 1..MaxFrameLen/2, so that a
// frame with one more entry of MaxDataLen still fits in MaxFrameLen).
func NewEncoderSize(w io.Writer, frameSize int) *Encoder {
	frameSize = max(1, min(frameSize, MaxFrameLen/2))
	return &Encoder{w: w, frameSize: frameSize}
}

// Append adds e to the open frame, and writes the frame if it has reached
// the frame size. e.Seq must be one more than the previous entry's (the
// first entry may start anywhere, as a stream resumed at a later entry
// does), and e.Exit must not be less than an earlier entry's. An invalid
// entry is refused (the error wraps ErrInvalidEntry) and the encoder stays
// usable; after a write error every call returns that error. Append keeps
// no reference to e.Data.
func (enc *Encoder) Append(e Entry) error {
	if enc.err != nil {
		return enc.err
	}
	if err := e.check(); err != nil {
		return fmt.Errorf("replay: cannot encode %w", err)
	}
	if enc.nextSeq != 0 && e.Seq != enc.nextSeq {
		return fmt.Errorf("replay: entry seq %d (%v) after seq %d: %w", e.Seq, e.Kind, enc.nextSeq-1, ErrInvalidEntry)
	}
	if !e.Kind.IsControl() && e.Exit < enc.lastExit {
		return fmt.Errorf("replay: entry seq %d (%v) at exit %d after an entry at exit %d: %w", e.Seq, e.Kind, e.Exit, enc.lastExit, ErrInvalidEntry)
	}
	if enc.count == 0 {
		enc.payload = binary.AppendUvarint(enc.payload, e.Seq)
	}
	enc.payload = enc.st.appendEntry(enc.payload, &e)
	enc.count++
	enc.nextSeq = e.Seq + 1
	if !e.Kind.IsControl() {
		enc.lastExit = e.Exit
	}
	if len(enc.payload) >= enc.frameSize {
		return enc.Flush()
	}
	return nil
}

// Flush closes the open frame and writes it, with the stream header before
// the first frame, in one Write. With no entries pending it writes only the
// header if that is not written yet (so an empty log is still a valid
// stream), and otherwise nothing.
func (enc *Encoder) Flush() error {
	if enc.err != nil {
		return enc.err
	}
	out := enc.out[:0]
	if !enc.wroteHeader {
		out = appendHeader(out, Header{Version: Version})
	}
	if enc.count > 0 {
		start := len(out)
		out = binary.AppendUvarint(out, uint64(len(enc.payload)))
		out = binary.AppendUvarint(out, uint64(enc.count))
		out = append(out, enc.payload...)
		out = binary.LittleEndian.AppendUint32(out, crc32.Checksum(out[start:], castagnoli))
	}
	enc.out = out[:0]
	if len(out) == 0 {
		return nil
	}
	n, err := enc.w.Write(out)
	enc.written += int64(n)
	if err == nil && n < len(out) {
		err = io.ErrShortWrite
	}
	if err != nil {
		enc.err = fmt.Errorf("replay: writing frame %d at byte %d: %w", enc.frames+1, enc.written-int64(n), err)
		return enc.err
	}
	enc.wroteHeader = true
	if enc.count > 0 {
		enc.frames++
		enc.payload = enc.payload[:0]
		enc.count = 0
		enc.st = frameState{}
	}
	return nil
}

// Buffered returns the number of payload bytes in the open frame.
func (enc *Encoder) Buffered() int { return len(enc.payload) }

// Bytes returns the number of bytes written to the stream so far.
func (enc *Encoder) Bytes() int64 { return enc.written }

// Frames returns the number of frames written so far.
func (enc *Encoder) Frames() uint64 { return enc.frames }

func appendHeader(b []byte, h Header) []byte {
	b = append(b, Magic...)
	b = binary.LittleEndian.AppendUint16(b, h.Version)
	return binary.LittleEndian.AppendUint16(b, h.Flags)
}

// wireKindDiskOutput is the tag kind of an Output entry of OutputDisk: the
// output body has one flag bit for its kind, taken by packet, so a third
// kind of output has a tag kind of its own on the wire (never a Kind).
const wireKindDiskOutput = 13

// appendEntry appends the encoding of e, which passed check, and advances
// the delta state.
func (st *frameState) appendEntry(b []byte, e *Entry) []byte {
	tagAt := len(b)
	wk := byte(e.Kind)
	if e.Kind == KindOutput && e.OutputKind == OutputDisk {
		wk = wireKindDiskOutput
	}
	tag := wk
	b = append(b, 0)
	if !e.Kind.IsControl() {
		if d := e.Exit - st.exit; d == 1 {
			tag |= tagExitNext
		} else {
			b = binary.AppendUvarint(b, d)
		}
		st.exit = e.Exit
		if e.RIP == st.rip[wk] {
			tag |= tagSameRIP
		} else {
			b = binary.AppendVarint(b, int64(e.RIP-st.rip[wk]))
			st.rip[wk] = e.RIP
		}
	}
	switch e.Kind {
	case KindStart:
		b = append(b, e.Start.ImageSHA256[:]...)
		b = append(b, e.Start.CPUIDDigest[:]...)
		b = append(b, e.Start.ConfigDigest[:]...)
		b = binary.AppendUvarint(b, uint64(len(e.Start.VMID)))
		b = append(b, e.Start.VMID...)
		b = binary.AppendUvarint(b, uint64(len(e.Start.Config)))
		b = append(b, e.Start.Config...)
	case KindEnd:
		b = append(b, e.Digest[:]...)
	case KindCheckpoint:
		b = binary.LittleEndian.AppendUint64(b, e.Hash)
		regs := e.Regs.Array()
		var mask uint64
		for i, v := range regs {
			if i != ripIndex && v != st.regs[i] {
				mask |= 1 << i
			}
		}
		b = binary.AppendUvarint(b, mask)
		for i, v := range regs {
			if mask&(1<<i) != 0 {
				b = binary.AppendVarint(b, int64(v-st.regs[i]))
			}
		}
		st.regs = regs
	case KindTSC:
		if dod := st.tsc.next(e.Value); dod == 0 {
			tag |= tagKindFlag
		} else {
			b = binary.AppendVarint(b, dod)
		}
	case KindClock:
		if e.Clock == ClockRealtime {
			tag |= tagKindFlag
		}
		b = binary.AppendVarint(b, st.clock[e.Clock].next(e.Value))
	case KindRandom:
		if e.RandKind == RandRDSEED {
			tag |= tagKindFlag
		}
		b = binary.LittleEndian.AppendUint64(b, e.Value)
	case KindConsoleRead:
		if e.EOF {
			tag |= tagKindFlag
		}
		b = binary.AppendUvarint(b, uint64(len(e.Data)))
		b = append(b, e.Data...)
	case KindWait:
		b = binary.AppendUvarint(b, e.Value)
	case KindOutput:
		if e.OutputKind == OutputPacket {
			tag |= tagKindFlag
		}
		b = binary.AppendUvarint(b, e.Length)
		b = binary.LittleEndian.AppendUint64(b, e.Hash)
	case KindPowerOff:
		b = binary.AppendVarint(b, e.Status)
	case KindNetRX, KindDiskRead:
		b = binary.AppendUvarint(b, uint64(len(e.Data)))
		b = append(b, e.Data...)
	}
	b[tagAt] = tag
	return b
}

// Errors a Decoder wraps in a *DecodeError.
var (
	// ErrChecksum: a frame's CRC does not match its bytes.
	ErrChecksum = errors.New("checksum mismatch")
	// ErrCorrupt: the bytes are not a log of this format (bad magic, a
	// length over a limit, an entry that does not parse or breaks an
	// invariant, a gap in the Seqs).
	ErrCorrupt = errors.New("corrupt log")
	// ErrVersion: the stream is of a format version this package does not
	// read.
	ErrVersion = errors.New("unsupported log version")
)

// DecodeError says where a stream could not be decoded. Err is
// io.ErrUnexpectedEOF when the stream ended inside the header or a frame,
// wraps ErrChecksum, ErrCorrupt or ErrVersion when its bytes are wrong, or
// is the reader's own error.
type DecodeError struct {
	// Frame is the number of the frame being read, the first frame being
	// 1; 0 means the stream header.
	Frame uint64
	// Offset is the byte offset in the stream of the problem: where the
	// stream ended for a truncation, where the frame starts for a checksum
	// mismatch, where the bad field starts otherwise.
	Offset int64
	Err    error
}

func (e *DecodeError) Error() string {
	where := "header"
	if e.Frame > 0 {
		where = fmt.Sprintf("frame %d", e.Frame)
	}
	if errors.Is(e.Err, io.ErrUnexpectedEOF) {
		return fmt.Sprintf("replay: log truncated at byte %d, inside %s: %v", e.Offset, where, e.Err)
	}
	return fmt.Sprintf("replay: log %s at byte %d: %v", where, e.Offset, e.Err)
}

func (e *DecodeError) Unwrap() error { return e.Err }

// Decoder reads entries from a stream written by an Encoder. It reads a
// whole frame and checks its CRC before it returns any entry of it, and
// never holds more than one frame (at most MaxFrameLen bytes, allocated
// only as the bytes arrive). Not safe for concurrent use.
type Decoder struct {
	r *bufio.Reader

	off       int64  // bytes consumed from the stream
	frame     uint64 // number of the current frame
	haveHdr   bool
	hdr       Header
	payload   []byte // of the current frame
	payloadAt int64  // stream offset of payload[0]
	pos       int    // next entry's position in payload
	left      int    // entries of the current frame not yet returned
	st        frameState
	raw       []byte // scratch: the frame's length and count varints

	lastSize int    // payload bytes of the last entry returned
	nextSeq  uint64 // 0 before the first entry
	lastExit uint64
	err      error // sticky: a stream is not resumed after an error
}

// NewDecoder returns a Decoder reading from r. It buffers r, so it may read
// past the last frame it returns.
func NewDecoder(r io.Reader) *Decoder {
	return &Decoder{r: bufio.NewReader(r)}
}

// Header reads the stream header if it is not read yet and returns it.
func (d *Decoder) Header() (Header, error) {
	if !d.haveHdr && d.err == nil {
		d.err = d.readHeader()
	}
	return d.hdr, d.err
}

// Bytes returns the number of bytes of the stream consumed so far.
func (d *Decoder) Bytes() int64 { return d.off }

// Frames returns the number of frames read so far.
func (d *Decoder) Frames() uint64 { return d.frame }

// Next returns the next entry. At the end of the stream, which must fall
// on a frame boundary, it returns io.EOF; any other error is a
// *DecodeError or the reader's error and is returned again by every later
// call. A log cut exactly at a frame boundary looks complete here: the End
// entry is what tells a complete log.
func (d *Decoder) Next() (Entry, error) {
	if d.err != nil {
		return Entry{}, d.err
	}
	if !d.haveHdr {
		if d.err = d.readHeader(); d.err != nil {
			return Entry{}, d.err
		}
	}
	for d.left == 0 {
		if d.err = d.readFrame(); d.err != nil {
			return Entry{}, d.err
		}
	}
	at := d.pos
	e, err := d.decodeEntry()
	if err != nil {
		d.err = err
		return Entry{}, err
	}
	d.lastSize = d.pos - at
	return e, nil
}

// EntrySize is the number of payload bytes the entry Next last returned
// took, without its frame's share of header, lengths and CRC.
func (d *Decoder) EntrySize() int { return d.lastSize }

func (d *Decoder) readHeader() error {
	var b [headerLen]byte
	n, err := io.ReadFull(d.r, b[:])
	d.off += int64(n)
	if err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return &DecodeError{Offset: d.off, Err: err}
	}
	if string(b[:len(Magic)]) != Magic {
		return &DecodeError{Err: fmt.Errorf("magic %q is not %q: %w", b[:len(Magic)], Magic, ErrCorrupt)}
	}
	h := Header{
		Version: binary.LittleEndian.Uint16(b[len(Magic):]),
		Flags:   binary.LittleEndian.Uint16(b[len(Magic)+2:]),
	}
	if h.Version != Version {
		return &DecodeError{Offset: int64(len(Magic)), Err: fmt.Errorf("%w %d (this build reads %d)", ErrVersion, h.Version, Version)}
	}
	if h.Flags != 0 {
		return &DecodeError{Offset: int64(len(Magic)) + 2, Err: fmt.Errorf("unknown header flags %#x: %w", h.Flags, ErrCorrupt)}
	}
	d.hdr, d.haveHdr = h, true
	return nil
}

// readFrame reads the next frame and checks its CRC. It returns io.EOF
// itself when the stream ends cleanly before the frame.
func (d *Decoder) readFrame() error {
	start := d.off
	d.frame++
	fail := func(at int64, err error) error { return &DecodeError{Frame: d.frame, Offset: at, Err: err} }

	d.raw = d.raw[:0]
	size, err := d.readUvarint()
	if err == io.EOF {
		d.frame--
		return io.EOF
	}
	if err != nil {
		return fail(d.off, err)
	}
	if size > MaxFrameLen {
		return fail(start, fmt.Errorf("frame length %d over the limit of %d: %w", size, MaxFrameLen, ErrCorrupt))
	}
	countAt := d.off
	count, err := d.readUvarint()
	if err == io.EOF {
		err = io.ErrUnexpectedEOF
	}
	if err != nil {
		return fail(d.off, err)
	}
	// Every entry takes at least one byte; this also bounds the count.
	if count == 0 || count > size {
		return fail(countAt, fmt.Errorf("frame of %d bytes claims %d entries: %w", size, count, ErrCorrupt))
	}

	if err := d.readPayload(int(size)); err != nil {
		return fail(d.off, err)
	}
	var sum [4]byte
	n, err := io.ReadFull(d.r, sum[:])
	d.off += int64(n)
	if err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return fail(d.off, err)
	}
	crc := crc32.Update(crc32.Checksum(d.raw, castagnoli), castagnoli, d.payload)
	if stored := binary.LittleEndian.Uint32(sum[:]); stored != crc {
		return fail(start, fmt.Errorf("%w: stored %#08x, computed %#08x", ErrChecksum, stored, crc))
	}
	d.pos, d.left = 0, int(count)
	d.st = frameState{}
	return nil
}

// readPayload reads size bytes into d.payload. The buffer grows with the
// bytes that actually arrive, so a bogus length in a short stream does not
// allocate the whole of it.
func (d *Decoder) readPayload(size int) error {
	buf := d.payload[:0]
	d.payloadAt = d.off
	for len(buf) < size {
		chunk := size - len(buf)
		if cap(buf) < size {
			chunk = min(chunk, max(64<<10, len(buf)))
			if cap(buf)-len(buf) < chunk {
				grown := make([]byte, len(buf), len(buf)+chunk)
				copy(grown, buf)
				buf = grown
			}
		}
		n, err := io.ReadFull(d.r, buf[len(buf):len(buf)+chunk])
		buf = buf[:len(buf)+n]
		d.off += int64(n)
		if err != nil {
			d.payload = buf[:0]
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return err
		}
	}
	d.payload = buf
	return nil
}

// readUvarint reads a uvarint from the stream, appending its bytes to
// d.raw. It returns io.EOF if the stream ends before its first byte and
// io.ErrUnexpectedEOF if it ends inside it.
func (d *Decoder) readUvarint() (uint64, error) {
	var x uint64
	for i, shift := 0, uint(0); i < binary.MaxVarintLen64; i, shift = i+1, shift+7 {
		b, err := d.r.ReadByte()
		if err != nil {
			if err == io.EOF && i > 0 {
				err = io.ErrUnexpectedEOF
			}
			return 0, err
		}
		d.off++
		d.raw = append(d.raw, b)
		if b < 0x80 {
			if i == binary.MaxVarintLen64-1 && b > 1 {
				break
			}
			return x | uint64(b)<<shift, nil
		}
		x |= uint64(b&0x7f) << shift
	}
	return 0, fmt.Errorf("varint overflows 64 bits: %w", ErrCorrupt)
}

// payloadReader reads the fields of one entry from a frame's payload. The
// first failure sticks; the caller checks err once at the end.
type payloadReader struct {
	b   []byte
	pos int
	err error
}

func (p *payloadReader) fail(what string) {
	if p.err == nil {
		p.err = fmt.Errorf("%s runs past the end of the frame or overflows: %w", what, ErrCorrupt)
	}
}

func (p *payloadReader) uvarint(what string) uint64 {
	if p.err != nil {
		return 0
	}
	v, n := binary.Uvarint(p.b[p.pos:])
	if n <= 0 {
		p.fail(what)
		return 0
	}
	p.pos += n
	return v
}

func (p *payloadReader) varint(what string) int64 {
	if p.err != nil {
		return 0
	}
	v, n := binary.Varint(p.b[p.pos:])
	if n <= 0 {
		p.fail(what)
		return 0
	}
	p.pos += n
	return v
}

func (p *payloadReader) bytes(what string, n uint64) []byte {
	if p.err != nil {
		return nil
	}
	if n > uint64(len(p.b)-p.pos) {
		p.fail(what)
		return nil
	}
	b := p.b[p.pos : p.pos+int(n)]
	p.pos += int(n)
	return b
}

func (p *payloadReader) uint64le(what string) uint64 {
	b := p.bytes(what, 8)
	if b == nil {
		return 0
	}
	return binary.LittleEndian.Uint64(b)
}

func (p *payloadReader) digest(what string) (d [32]byte) {
	copy(d[:], p.bytes(what, 32))
	return d
}

// data reads a length-prefixed byte string into a new slice (nil if
// empty), so an entry never aliases the frame buffer.
func (p *payloadReader) data(what string, limit int) []byte {
	n := p.uvarint(what + " length")
	if p.err == nil && n > uint64(limit) {
		p.err = fmt.Errorf("%s of %d bytes over the limit of %d: %w", what, n, limit, ErrCorrupt)
	}
	b := p.bytes(what, n)
	if len(b) == 0 {
		return nil
	}
	return append([]byte(nil), b...)
}

// decodeEntry decodes the next entry of the current frame.
func (d *Decoder) decodeEntry() (Entry, error) {
	p := payloadReader{b: d.payload, pos: d.pos}
	entryAt := d.payloadAt + int64(d.pos)
	fail := func(err error) (Entry, error) {
		return Entry{}, &DecodeError{Frame: d.frame, Offset: entryAt, Err: err}
	}
	var e Entry
	if d.left == 0 {
		panic("replay: decodeEntry with no entry left")
	}
	first := d.pos == 0
	if first {
		e.Seq = p.uvarint("first seq")
		if p.err == nil && (e.Seq == 0 || d.nextSeq != 0 && e.Seq != d.nextSeq) {
			return fail(fmt.Errorf("frame starts at seq %d, expected %d (a frame is missing or repeated): %w", e.Seq, d.nextSeq, ErrCorrupt))
		}
		entryAt = d.payloadAt + int64(p.pos)
	} else {
		e.Seq = d.nextSeq
	}
	tagBytes := p.bytes("tag", 1)
	if p.err != nil {
		return fail(p.err)
	}
	tag := tagBytes[0]
	wk := tag & tagKindMask
	e.Kind = Kind(wk)
	if wk == wireKindDiskOutput {
		e.Kind, e.OutputKind = KindOutput, OutputDisk
	}
	if !e.Kind.valid() {
		return fail(fmt.Errorf("unknown entry kind %d: %w", tag&tagKindMask, ErrCorrupt))
	}
	st := &d.st
	if e.Kind.IsControl() {
		if tag&(tagExitNext|tagSameRIP) != 0 {
			return fail(fmt.Errorf("%v entry with exit or rip flags %#x: %w", e.Kind, tag, ErrCorrupt))
		}
	} else {
		delta := uint64(1)
		if tag&tagExitNext == 0 {
			delta = p.uvarint("exit delta")
		}
		e.Exit = st.exit + delta
		if p.err == nil && e.Exit < st.exit {
			return fail(fmt.Errorf("exit overflows: %w", ErrCorrupt))
		}
		st.exit = e.Exit
		if tag&tagSameRIP == 0 {
			st.rip[wk] += uint64(p.varint("rip delta"))
		}
		e.RIP = st.rip[wk]
	}
	flag := tag&tagKindFlag != 0
	switch e.Kind {
	case KindStart:
		e.Start.ImageSHA256 = p.digest("image digest")
		e.Start.CPUIDDigest = p.digest("cpuid digest")
		e.Start.ConfigDigest = p.digest("config digest")
		e.Start.VMID = string(p.data("vm id", MaxVMIDLen))
		e.Start.Config = string(p.data("config", MaxConfigLen))
	case KindEnd:
		e.Digest = p.digest("digest")
	case KindCheckpoint:
		e.Hash = p.uint64le("hash")
		mask := p.uvarint("register mask")
		if p.err == nil && (mask >= 1<<18 || mask&(1<<ripIndex) != 0) {
			return fail(fmt.Errorf("checkpoint register mask %#x: %w", mask, ErrCorrupt))
		}
		for i := range st.regs {
			if mask&(1<<i) != 0 {
				st.regs[i] += uint64(p.varint(RegNames[i]))
			}
		}
		st.regs[ripIndex] = e.RIP
		e.Regs = regsFromArray(st.regs)
	case KindTSC:
		var dod int64
		if !flag {
			dod = p.varint("tsc")
		}
		e.Value = st.tsc.value(dod)
		flag = false
	case KindClock:
		if flag {
			e.Clock = ClockRealtime
		}
		e.Value = st.clock[e.Clock].value(p.varint("clock"))
		flag = false
	case KindRandom:
		if flag {
			e.RandKind = RandRDSEED
		}
		e.Value = p.uint64le("random")
		flag = false
	case KindConsoleRead:
		e.EOF = flag
		e.Data = p.data("console input", MaxDataLen)
		flag = false
	case KindWait:
		e.Value = p.uvarint("wait result")
	case KindOutput:
		if flag && e.OutputKind == OutputDisk {
			return fail(fmt.Errorf("disk-output entry with the kind flag set: %w", ErrCorrupt))
		}
		if flag {
			e.OutputKind = OutputPacket
		}
		e.Length = p.uvarint("output length")
		e.Hash = p.uint64le("output hash")
		flag = false
	case KindPowerOff:
		e.Status = p.varint("status")
	case KindNetRX:
		e.Data = p.data("packet", MaxDataLen)
	case KindDiskRead:
		e.Data = p.data("disk data", MaxDataLen)
	}
	if p.err != nil {
		return fail(p.err)
	}
	if flag {
		return fail(fmt.Errorf("%v entry with the kind flag set: %w", e.Kind, ErrCorrupt))
	}
	// The switch above sets only the fields of e's kind, within their
	// limits, so of Entry's invariants only these are left to check
	// (FuzzDecode re-encodes every decoded entry, which checks them all).
	if e.Seq == 0 {
		return fail(fmt.Errorf("seq wraps to 0: %w", ErrCorrupt))
	}
	if !e.Kind.IsControl() && e.Exit == 0 {
		return fail(fmt.Errorf("exit 0: %w", ErrCorrupt))
	}
	if !e.Kind.IsControl() {
		if e.Exit < d.lastExit {
			return fail(fmt.Errorf("exit %d after exit %d: %w", e.Exit, d.lastExit, ErrCorrupt))
		}
		d.lastExit = e.Exit
	}
	d.pos = p.pos
	d.left--
	if d.left == 0 && d.pos != len(d.payload) {
		return fail(fmt.Errorf("%d bytes after the frame's last entry: %w", len(d.payload)-d.pos, ErrCorrupt))
	}
	d.nextSeq = e.Seq + 1
	return e, nil
}

// regsFromArray is the inverse of Regs.Array.
func regsFromArray(a [18]uint64) Regs {
	return Regs{
		RAX: a[0], RBX: a[1], RCX: a[2], RDX: a[3], RSI: a[4], RDI: a[5], RSP: a[6], RBP: a[7],
		R8: a[8], R9: a[9], R10: a[10], R11: a[11], R12: a[12], R13: a[13], R14: a[14], R15: a[15],
		RIP: a[16], RFLAGS: a[17],
	}
}
