package replay

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc64"
	"strconv"
	"strings"
)

// Kind says what an Entry records. The values are part of the log format
// (codec.go writes them in five bits): never renumber one, only add.
type Kind uint8

const (
	// KindStart is the first entry of every log: what guest, CPUID table
	// and configuration the recording ran with. A control entry.
	KindStart Kind = 1
	// KindEnd is the last entry of a complete log: the digest of the
	// guest's final state. A control entry.
	KindEnd Kind = 2
	// KindCheckpoint carries the full registers at an exit and the rolling
	// hash of the registers of every execution point since the previous
	// checkpoint (see PointHash).
	KindCheckpoint Kind = 3
	// KindTSC is an emulated RDTSC or RDTSCP.
	KindTSC Kind = 4
	// KindRandom is an emulated RDRAND or RDSEED.
	KindRandom Kind = 5
	// KindClock is a read of the clock device.
	KindClock Kind = 6
	// KindConsoleRead is the console input handed to the guest.
	KindConsoleRead Kind = 7
	// KindWait is the result of a wait request.
	KindWait Kind = 8
	// KindOutput marks an output of the guest; the bytes stay out of the
	// log, only their length and hash are in it.
	KindOutput Kind = 9
	// KindPowerOff is the guest asking to stop.
	KindPowerOff Kind = 10
	// KindNetRX is a received packet handed to the guest (for the NIC,
	// coming later).
	KindNetRX Kind = 11
	// KindDiskRead is the data a batch of disk reads put into the guest.
	KindDiskRead Kind = 12

	// maxKind is the largest defined Kind; the codec sizes its per-kind
	// state by it.
	maxKind = KindDiskRead
)

var kindNames = [...]string{
	KindStart:       "start",
	KindEnd:         "end",
	KindCheckpoint:  "checkpoint",
	KindTSC:         "tsc",
	KindRandom:      "random",
	KindClock:       "clock",
	KindConsoleRead: "console-read",
	KindWait:        "wait",
	KindOutput:      "output",
	KindPowerOff:    "power-off",
	KindNetRX:       "net-rx",
	KindDiskRead:    "disk-read",
}

// String is the kind's name as transcripts and messages print it
// ("console-read").
func (k Kind) String() string {
	if k.valid() {
		return kindNames[k]
	}
	return "kind(" + strconv.Itoa(int(k)) + ")"
}

func (k Kind) valid() bool { return k >= KindStart && k <= maxKind }

// IsControl reports whether entries of kind k belong to the log as a whole
// (Start, End) rather than to an execution point.
func (k Kind) IsControl() bool { return k == KindStart || k == KindEnd }

// hasData reports whether entries of kind k carry bytes in Entry.Data.
func (k Kind) hasData() bool {
	return k == KindConsoleRead || k == KindNetRX || k == KindDiskRead
}

// hasValue reports whether entries of kind k carry their answer in
// Entry.Value.
func (k Kind) hasValue() bool {
	return k == KindTSC || k == KindRandom || k == KindClock || k == KindWait
}

// Limits that keep a decoder's memory bounded whatever bytes it is fed. An
// encoder refuses entries beyond them, so every log it writes decodes.
const (
	// MaxDataLen bounds Entry.Data. A device hands the guest at most this
	// much per exit (the Recorder clips console reads to it).
	MaxDataLen = 4 << 20
	// MaxVMIDLen bounds StartInfo.VMID.
	MaxVMIDLen = 1024
	// MaxConfigLen bounds StartInfo.Config.
	MaxConfigLen = 8192
	// MaxFrameLen bounds the payload of one frame.
	MaxFrameLen = 16 << 20
)

// StartInfo says what a recording ran: a replay is only meaningful on the
// same guest image, CPUID table and configuration, which the replayer checks
// before the guest runs (Replayer.VerifyStart).
type StartInfo struct {
	// ImageSHA256 is the SHA-256 of the guest image as loaded, before the
	// VMM rewrote any instruction.
	ImageSHA256 [32]byte
	// CPUIDDigest is a SHA-256 of the CPUID table passed to KVM_SET_CPUID2
	// (the VMM defines how it serialises the table). CPUID does not exit at
	// CPL3, so equal tables are the only way its answers stay equal.
	CPUIDDigest [32]byte
	// ConfigDigest is a SHA-256 of everything else that shapes what the
	// guest sees: memory size, command line, ABI version, TSC frequency.
	ConfigDigest [32]byte
	// VMID is a free-form name of the protected VM for people and logs; it
	// is not checked. At most MaxVMIDLen bytes.
	VMID string
	// Config is the VMM's configuration in its own text form (memory size,
	// guest command line), so that a replay can rebuild the same VM from
	// the log alone; ConfigDigest is what is checked. At most MaxConfigLen
	// bytes.
	Config string
}

// Entry is one record of the log: the answer the world gave at one
// execution point, a marker of an output, or a control record. The
// recorder, the log file, the logging channel and the replayer all speak in
// entries. Fields a kind does not use are zero (the encoder refuses an entry
// that sets them, so that an entry always survives a round trip).
type Entry struct {
	// Seq is the log sequence number: the first entry of a log is 1 and
	// each later entry is exactly one more. The Output Rule acknowledges
	// entries by Seq. Never 0.
	Seq uint64
	// Kind says what the entry records; always one of the Kind constants.
	Kind Kind
	// Exit is the exit sequence number of the execution point the entry
	// belongs to (ExecPoint.Exit): >= 1 and >= the Exit of every earlier
	// entry; equal only for entries at the same exit (a Checkpoint and the
	// answer that follows it). 0 for control entries.
	Exit uint64
	// RIP is ExecPoint.Regs.RIP at Exit, checked exactly on replay. 0 for
	// control entries.
	RIP uint64

	// Value is the answer of a TSC (the counter, virtual 1 GHz ticks),
	// Random (the 64 bits), Clock (nanoseconds) or Wait (the WaitResult
	// bits) entry. 0 for other kinds.
	Value uint64
	// RandKind says which instruction a Random entry answered. 0 for other
	// kinds.
	RandKind RandKind
	// Clock is the clock a Clock entry read. 0 for other kinds.
	Clock ClockID
	// EOF reports, in a ConsoleRead entry, that the console input had ended.
	// false for other kinds.
	EOF bool
	// Data are the bytes a ConsoleRead, NetRX or DiskRead entry put into the
	// guest: at most MaxDataLen. A decoder returns nil for none. An entry
	// given to a Sink may alias the caller's buffer: a Sink must copy it.
	// Empty for other kinds.
	Data []byte

	// OutputKind says where an Output went. 0 for other kinds.
	OutputKind OutputKind
	// Length is the number of bytes of an Output. 0 for other kinds.
	Length uint64
	// Hash is OutputHash of an Output's bytes, or a Checkpoint's PointHash
	// sum. 0 for other kinds.
	Hash uint64

	// Status is the exit status a PowerOff asked for. 0 for other kinds.
	Status int64

	// Regs are a Checkpoint's full registers at Exit; Regs.RIP == RIP.
	// Zero for other kinds.
	Regs Regs

	// Start is a Start entry's description of the recording. Zero for
	// other kinds.
	Start StartInfo

	// Digest is an End entry's digest of the guest's final state (see
	// StateDigest). Zero for other kinds.
	Digest [32]byte
}

// ErrInvalidEntry is wrapped by the error for an entry that breaks one of
// Entry's invariants.
var ErrInvalidEntry = errors.New("invalid entry")

// check returns an error wrapping ErrInvalidEntry if e breaks one of the
// per-entry invariants written on Entry's fields. (The invariants between
// entries, Seq and Exit order, are the encoder's and decoder's business.)
func (e *Entry) check() error {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("entry seq %d (%v): %s: %w", e.Seq, e.Kind, fmt.Sprintf(format, args...), ErrInvalidEntry)
	}
	k := e.Kind
	switch {
	case !k.valid():
		return bad("unknown kind")
	case e.Seq == 0:
		return bad("seq 0")
	case k.IsControl() && (e.Exit != 0 || e.RIP != 0):
		return bad("a control entry has exit %d rip %#x", e.Exit, e.RIP)
	case !k.IsControl() && e.Exit == 0:
		return bad("exit 0")
	case !k.hasValue() && e.Value != 0:
		return bad("value set")
	case k != KindRandom && e.RandKind != 0, e.RandKind > RandRDSEED:
		return bad("rand kind %d", e.RandKind)
	case k != KindClock && e.Clock != 0, e.Clock > ClockRealtime:
		return bad("clock %d", e.Clock)
	case k != KindConsoleRead && e.EOF:
		return bad("eof set")
	case !k.hasData() && len(e.Data) != 0:
		return bad("%d data bytes", len(e.Data))
	case len(e.Data) > MaxDataLen:
		return bad("%d data bytes, more than %d", len(e.Data), MaxDataLen)
	case k != KindOutput && (e.OutputKind != 0 || e.Length != 0):
		return bad("output kind or length set")
	case e.OutputKind > OutputDisk:
		return bad("output kind %d", e.OutputKind)
	case k != KindOutput && k != KindCheckpoint && e.Hash != 0:
		return bad("hash set")
	case k != KindPowerOff && e.Status != 0:
		return bad("status set")
	case k != KindCheckpoint && !e.Regs.isZero():
		return bad("registers set")
	case k == KindCheckpoint && e.Regs.RIP != e.RIP:
		return bad("registers' rip %#x is not the entry's rip %#x", e.Regs.RIP, e.RIP)
	case k != KindStart && (e.Start.VMID != "" || e.Start.Config != "" || !isZero32(&e.Start.ImageSHA256) ||
		!isZero32(&e.Start.CPUIDDigest) || !isZero32(&e.Start.ConfigDigest)):
		return bad("start info set")
	case len(e.Start.VMID) > MaxVMIDLen:
		return bad("vm id of %d bytes, more than %d", len(e.Start.VMID), MaxVMIDLen)
	case len(e.Start.Config) > MaxConfigLen:
		return bad("config of %d bytes, more than %d", len(e.Start.Config), MaxConfigLen)
	case k != KindEnd && !isZero32(&e.Digest):
		return bad("digest set")
	}
	return nil
}

// Equal reports whether e and o record the same thing (nil and empty Data
// are the same).
func (e *Entry) Equal(o *Entry) bool {
	return e.Seq == o.Seq && e.Kind == o.Kind && e.Exit == o.Exit && e.RIP == o.RIP &&
		e.Value == o.Value && e.RandKind == o.RandKind && e.Clock == o.Clock && e.EOF == o.EOF &&
		bytes.Equal(e.Data, o.Data) && e.OutputKind == o.OutputKind && e.Length == o.Length &&
		e.Hash == o.Hash && e.Status == o.Status && e.Regs == o.Regs && e.Start == o.Start &&
		e.Digest == o.Digest
}

// isZero reports whether every register is 0. (An OR of the words: the
// encoder checks this for every entry, and it is cheaper than comparing
// with a zero Regs.)
func (r *Regs) isZero() bool {
	return r.RAX|r.RBX|r.RCX|r.RDX|r.RSI|r.RDI|r.RSP|r.RBP|
		r.R8|r.R9|r.R10|r.R11|r.R12|r.R13|r.R14|r.R15|r.RIP|r.RFLAGS == 0
}

// isZero32 reports whether a digest is all zero bytes.
func isZero32(d *[32]byte) bool {
	le := binary.LittleEndian
	return le.Uint64(d[0:])|le.Uint64(d[8:])|le.Uint64(d[16:])|le.Uint64(d[24:]) == 0
}

// String prints e on one line the way transcripts show it, e.g.
//
//	7 tsc exit=12 rip=0x100040 value=1000
func (e Entry) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%d %v", e.Seq, e.Kind)
	if !e.Kind.IsControl() {
		fmt.Fprintf(&b, " exit=%d rip=%#x", e.Exit, e.RIP)
	}
	switch e.Kind {
	case KindStart:
		fmt.Fprintf(&b, " image=%s cpuid=%s config=%s vm=%q",
			shortHex(e.Start.ImageSHA256), shortHex(e.Start.CPUIDDigest), shortHex(e.Start.ConfigDigest), e.Start.VMID)
	case KindEnd:
		fmt.Fprintf(&b, " digest=%s", shortHex(e.Digest))
	case KindCheckpoint:
		fmt.Fprintf(&b, " hash=%#016x", e.Hash)
		regs := e.Regs.Array()
		for i, v := range regs {
			if v != 0 && RegNames[i] != "rip" {
				fmt.Fprintf(&b, " %s=%#x", RegNames[i], v)
			}
		}
	case KindTSC, KindWait:
		fmt.Fprintf(&b, " value=%d", e.Value)
	case KindRandom:
		fmt.Fprintf(&b, " %v value=%#x", e.RandKind, e.Value)
	case KindClock:
		fmt.Fprintf(&b, " %v value=%d", e.Clock, e.Value)
	case KindConsoleRead:
		fmt.Fprintf(&b, " data=%q eof=%t", e.Data, e.EOF)
	case KindNetRX, KindDiskRead:
		fmt.Fprintf(&b, " data=%q", e.Data)
	case KindOutput:
		fmt.Fprintf(&b, " %v len=%d hash=%#016x", e.OutputKind, e.Length, e.Hash)
	case KindPowerOff:
		fmt.Fprintf(&b, " status=%d", e.Status)
	}
	return b.String()
}

// shortHex prints the first four bytes of a digest: enough to tell two
// apart in a transcript or a message.
func shortHex(d [32]byte) string { return fmt.Sprintf("%x", d[:4]) }

func (k RandKind) String() string {
	switch k {
	case RandRDRAND:
		return "rdrand"
	case RandRDSEED:
		return "rdseed"
	}
	return "rand(" + strconv.Itoa(int(k)) + ")"
}

func (c ClockID) String() string {
	switch c {
	case ClockMonotonic:
		return "monotonic"
	case ClockRealtime:
		return "realtime"
	}
	return "clock(" + strconv.Itoa(int(c)) + ")"
}

func (k OutputKind) String() string {
	switch k {
	case OutputConsole:
		return "console"
	case OutputPacket:
		return "packet"
	case OutputDisk:
		return "disk"
	}
	return "output(" + strconv.Itoa(int(k)) + ")"
}

// crc64Table is CRC-64/ECMA, the hash of outputs.
var crc64Table = crc64.MakeTable(crc64.ECMA)

// OutputHash is the 64-bit hash an Output entry carries in place of the
// output's bytes: CRC-64/ECMA of data. It only has to tell a replayed output
// from a different one (the length is checked too), and it runs at
// gigabytes per second, so hashing every output costs the recorder little.
// Part of the log format: changing it needs a new version.
func OutputHash(data []byte) uint64 { return crc64.Checksum(data, crc64Table) }

// StateDigest is the digest of a guest's state that End entries carry:
// SHA-256 over a domain string, the registers in RegNames order (little
// endian) and then the given guest memory. The VMM calls it with the
// registers and the whole of guest RAM once the guest has stopped; record
// and replay must pass the same memory ranges.
func StateDigest(regs *Regs, memory []byte) [32]byte {
	h := sha256.New()
	h.Write([]byte("ftvm state digest v1\x00"))
	var buf [18 * 8]byte
	for i, v := range regs.Array() {
		binary.LittleEndian.PutUint64(buf[8*i:], v)
	}
	h.Write(buf[:])
	h.Write(memory)
	var d [32]byte
	h.Sum(d[:0])
	return d
}
