// Package replay is the vocabulary of non-determinism shared by the recorder,
// the log file, the logging channel and the replayer: execution points, the
// World the VMM's devices ask for everything that can differ between two
// runs, and the entries that record its answers.
//
// The package is pure: it imports no os, net or KVM, so its logic can be
// driven by transcripts in tests.
package replay

// Regs are the general registers of the vCPU at a guest-caused exit, read
// before the VMM changes anything. The order is the order of kvm_regs.
type Regs struct {
	RAX, RBX, RCX, RDX, RSI, RDI, RSP, RBP uint64
	R8, R9, R10, R11, R12, R13, R14, R15   uint64
	RIP, RFLAGS                            uint64
}

// RegNames names the fields of Regs in order, for messages.
var RegNames = [18]string{
	"rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rsp", "rbp",
	"r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15",
	"rip", "rflags",
}

// Array returns the registers in RegNames order.
func (r *Regs) Array() [18]uint64 {
	return [18]uint64{
		r.RAX, r.RBX, r.RCX, r.RDX, r.RSI, r.RDI, r.RSP, r.RBP,
		r.R8, r.R9, r.R10, r.R11, r.R12, r.R13, r.R14, r.R15,
		r.RIP, r.RFLAGS,
	}
}

// ExecPoint is a position in the guest's execution where the VMM may act
// deterministically: a guest-caused exit. There is no instruction counter on
// these machines (PLATFORM.md), so the exit sequence number plus the
// registers at that exit identify the point.
type ExecPoint struct {
	// Exit is the sequence number of the guest-caused exit: the first exit
	// of a run is 1 and each later one is exactly one more. Exits caused by
	// a kick (KVM_EXIT_INTR) are not counted.
	Exit uint64
	// Regs are the registers at the exit; Regs.RIP is the address after
	// the exiting instruction.
	Regs Regs
}

// ClockID selects the clock a guest reads through the clock device.
type ClockID uint8

const (
	// ClockMonotonic counts nanoseconds since the VM started; it never goes
	// backwards, also across a failover.
	ClockMonotonic ClockID = 0
	// ClockRealtime is nanoseconds since the Unix epoch.
	ClockRealtime ClockID = 1
)

// RandKind says which instruction asked for random bits.
type RandKind uint8

const (
	RandRDRAND RandKind = 0
	RandRDSEED RandKind = 1
)

// WaitResult is a bit set saying why a wait request returned.
type WaitResult uint64

const (
	// WaitConsoleInput: console input (or its end) is pending.
	WaitConsoleInput WaitResult = 1 << 0
	// WaitTimeout: the wait's timeout expired.
	WaitTimeout WaitResult = 1 << 1
	// WaitNetRX: received packets are pending (reserved for the NIC).
	WaitNetRX WaitResult = 1 << 2
)

// MaxFrame is the largest Ethernet frame a guest sends or receives (MTU
// 1500 plus the 14-byte header, without the FCS).
const MaxFrame = 1514

// OutputKind says where an output goes.
type OutputKind uint8

const (
	OutputConsole OutputKind = 0
	OutputPacket  OutputKind = 1
	// OutputDisk is a batch of disk writes and flushes (EncodeDiskBatch):
	// on shared storage a write is an external output like a packet.
	OutputDisk OutputKind = 2
)

// MaxDiskOutput bounds the bytes of one disk output (a batch of writes
// with their headers): the block device caps a call's data well below it.
const MaxDiskOutput = 2 << 20

// World answers every question whose answer can differ between two runs of
// the same guest. The VMM's devices ask it and never know whether it is live
// (the primary, or a plain run), recording, or replaying from a log.
//
// Every method is called on the vCPU thread while the vCPU is stopped at the
// guest-caused exit p; p.Exit is greater than in any earlier call. An error
// stops the VM (for a replayer, a *DivergenceError says where the runs part).
type World interface {
	// TSC is the value of the virtual time-stamp counter for an emulated
	// RDTSC or RDTSCP. Successive values strictly increase.
	TSC(p ExecPoint) (uint64, error)
	// Random is 64 random bits for an emulated RDRAND or RDSEED.
	Random(p ExecPoint, kind RandKind) (uint64, error)
	// Clock reads clock c in nanoseconds.
	Clock(p ExecPoint, c ClockID) (uint64, error)
	// ConsoleRead copies pending console input into buf without blocking.
	// It returns the number of bytes copied; eof reports that the input
	// has ended and nothing more will come.
	ConsoleRead(p ExecPoint, buf []byte) (n int, eof bool, err error)
	// Wait parks the vCPU until an input is pending or timeoutNS
	// nanoseconds pass (0 polls; ^uint64(0) waits without a timeout).
	Wait(p ExecPoint, timeoutNS uint64) (WaitResult, error)
	// NetReceive hands over up to len(frames) pending received Ethernet
	// frames without blocking: frame i is copied into frames[i] (each at
	// least MaxFrame bytes) and its length stored in lens[i]. It returns
	// how many frames it delivered (0 when none is pending). One call is
	// one batch: all of it is one answer at one exit.
	NetReceive(p ExecPoint, frames [][]byte, lens []int) (int, error)
	// DiskRead fills each bufs[i] with the disk's bytes at offset offs[i]
	// (len(offs) == len(bufs)). One call is one batch of reads at one exit;
	// the disk as the guest's own earlier writes left it.
	DiskRead(p ExecPoint, offs []uint64, bufs [][]byte) error
	// Output hands an output of the guest to the world. A live world sends
	// it; a recorder logs a marker and holds it under the Output Rule; a
	// replayer checks it against the recording and drops it.
	Output(p ExecPoint, kind OutputKind, data []byte) error
	// PowerOff records that the guest asked to stop with status.
	PowerOff(p ExecPoint, status int) error
}
