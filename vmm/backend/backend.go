// Package backend is the seam between ftvm's VMM and the ways it can run
// guest code. A Backend makes vCPUs; a VCPU runs the guest until the guest
// causes an exit (an out, an exception, a system call) or is kicked, and
// reports that exit in one typed vocabulary, with the same register
// semantics on every backend. Everything a guest can observe is decided
// above this seam, in package vmm: devices, memory layout, the World.
//
// The shape follows gVisor's platforms (an address space and a context that
// switches into guest code and returns on a trap); a backend is chosen by
// name in package vmm/backends, the only package that imports them all.
package backend

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"

	"github.com/ftvm/ftvm/replay"
)

// Perm is the access the guest has to one 4 KiB page of its RAM.
type Perm uint8

const (
	// PermNone: the guest cannot touch the page (unmapped, or reserved
	// for the VMM's own tables).
	PermNone Perm = iota
	PermRead
	PermReadExec
	PermReadWrite
)

// PageSize is the granularity of Spec.Pages.
const PageSize = 4096

// Spec is everything a backend needs to create a vCPU for a guest whose RAM
// the VMM has already loaded.
type Spec struct {
	// RAM is the VMM's own mapping of guest RAM (guest-physical 0 is RAM[0]),
	// and RAMFile the memfd behind it: a backend maps the same file into
	// the guest, so the VMM and the guest share one copy.
	RAM     []byte
	RAMFile *os.File
	// Pages holds the guest's access to each page of RAM; the guest's
	// virtual addresses equal guest-physical ones (identity mapping).
	Pages []Perm
	// Entry is the general registers at the first instruction, RFLAGS
	// without the bits in HiddenFlags.
	Entry replay.Regs
	// System describes the x86 tables the VMM wrote into RAM, for backends
	// that run the guest on the CPU's own descriptor and page tables (KVM).
	System SystemTables
	// CPUID is the fixed table the guest sees, for backends whose CPU can
	// answer CPUID from a table (the VMM also rewrites CPUID).
	CPUID []CPUIDEntry
}

// SystemTables is where the VMM put the guest's long-mode tables: in a
// private region outside guest RAM, which a backend that runs the guest on
// the CPU's own tables maps at PrivateGPA (and the tables at PrivateVA).
// Addresses below are guest-virtual except PageTables.
type SystemTables struct {
	Private             []byte
	PrivateGPA          uint64
	PrivateVA           uint64
	PageTables          uint64 // CR3: guest-physical
	GDT, IDT            uint64
	GDTLimit, IDTLimit  uint16
	TSS                 uint64
	TSSLimit            uint32
	CodeSel, DataSel    uint16
	TSSSel              uint16
	ExceptionStubs      uint64 // vector v's stub is at ExceptionStubs+8v
	ExceptionPort       uint16 // vector v's stub does out ExceptionPort+v
	ExceptionStackTop   uint64
	ExceptionStackBytes uint64
}

// CPUIDEntry is one leaf (and sub-leaf) of the guest's CPUID table.
type CPUIDEntry struct {
	Function, Index    uint32
	EAX, EBX, ECX, EDX uint32
}

// HiddenFlags are the RFLAGS bits that differ between backends for reasons
// of their own: IOPL (KVM runs the guest at IOPL 3 so that out exits; a
// ptraced process has IOPL 0, so that out traps; kvm_pvm reads it back as
// 0) and RF (set by the CPU when it delivers a fault). Registers crossing
// the seam never carry them: a backend clears them in what it reports and
// sets them as it needs in what it is given.
const HiddenFlags = 3<<12 | 1<<16

// Backend is one way of running guest code.
type Backend interface {
	// Name is what --backend calls it: "kvm" or "ptrace".
	Name() string
	// Usable returns nil when this host can run guests on the backend,
	// or an error saying why not and what to do.
	Usable() error
	// NewVCPU maps spec.RAM into a new guest and creates its vCPU, stopped
	// at spec.Entry.
	NewVCPU(spec *Spec) (VCPU, error)
	// Doctor reports what the backend found on this host.
	Doctor() []Check
}

// Check is one line of a host report.
type Check struct {
	Name   string
	OK     bool
	Detail string
}

// VCPU is one virtual CPU. Run, Regs and SetRegs must not be called
// concurrently with each other; Kick and Close may be called from any
// goroutine (Close only once Run has returned).
type VCPU interface {
	// Run resumes the guest and returns at its next guest-caused exit or
	// at a kick. If set is true, *regs is written to the vCPU first. On
	// return *regs holds the guest's registers at the exit, with the
	// meaning Exit documents for each kind.
	Run(regs *replay.Regs, set bool) (Exit, error)
	// Regs reads the general registers.
	Regs(*replay.Regs) error
	// SetRegs writes the general registers.
	SetRegs(*replay.Regs) error
	// Kick makes the current or next Run return ExitKick. Kicks are
	// sticky: one that arrives while the guest is not running is seen
	// before it runs again.
	Kick()
	// Close destroys the vCPU and its guest. Idempotent.
	Close() error
	// FPState reads the x87 and SSE state. Not concurrently with Run.
	FPState(*FPState) error
	// SetFPState writes the x87 and SSE state. Not concurrently with Run.
	SetFPState(*FPState) error
	// Do runs f on the OS thread that drives this vCPU and returns when f
	// does. Run, Regs and SetRegs called inside f then need no switch of
	// threads: a caller's whole run loop belongs inside Do.
	Do(f func())
}

// DirtyLog is offered by a VCPU (found by a type assertion) whose backend
// can tell which pages of guest RAM the guest itself wrote: KVM's dirty
// log, or write protection the kernel resolves on its own under ptrace.
// Writes the VMM makes through its own mapping of RAM are not seen here:
// package vmm tracks those. Both methods may be called from any goroutine
// while the guest runs, but not concurrently with each other or Close.
type DirtyLog interface {
	// StartDirtyLog begins tracking. An error says why this backend or
	// host cannot track (the caller then treats every page as written).
	StartDirtyLog() error
	// DirtyPages sets in bitmap (bit p%64 of word p/64 for page p; at
	// least one bit per page of RAM) every page the guest wrote since the
	// previous call or StartDirtyLog, and forgets them, atomically with
	// respect to the guest's writes: a write after a page was reported is
	// reported by the next call. It may report pages that were not written.
	DirtyPages(bitmap []uint64) error
}

// ErrNoDirtyLog is wrapped by StartDirtyLog's error when the backend cannot
// track the guest's writes on this host.
var ErrNoDirtyLog = errors.New("no dirty-page tracking")

// ExitKind says why Run returned.
type ExitKind int

const (
	// ExitIOOut: the guest executed out to Port. Regs.RIP is past the
	// instruction (whatever the hardware left), so resuming continues
	// after it; InsnLen is its length.
	ExitIOOut ExitKind = iota + 1
	// ExitIOIn: the guest executed in from Port; Regs.RIP is at it.
	ExitIOIn
	// ExitMMIO: the guest touched guest-physical Addr, which is not RAM.
	ExitMMIO
	// ExitException: the CPU raised exception Vector. Regs is the state
	// the exception was raised in (RIP at the faulting instruction, or
	// past it for traps such as #BP).
	ExitException
	// ExitSyscall: the guest executed a system call instruction
	// (number Code); Regs.RIP is past it. The ABI has no system calls.
	ExitSyscall
	// ExitShutdown: a triple fault.
	ExitShutdown
	// ExitHLT: the vCPU halted.
	ExitHLT
	// ExitKick: Kick interrupted the run at an arbitrary point. Never a
	// place to deliver anything: it is not a guest-caused exit.
	ExitKick
	// ExitFailure: the backend could not run the guest; Detail says why.
	ExitFailure
)

// Exit is one exit, decoded.
type Exit struct {
	Kind ExitKind
	// Port, Size, Data and InsnLen describe ExitIOOut and ExitIOIn.
	Port    uint16
	Size    uint8
	Data    uint32
	InsnLen uint8
	// Addr is the address of ExitMMIO, and CR2 (the faulting address)
	// of a #PF ExitException.
	Addr  uint64
	Write bool
	// Vector, ErrorCode and HasErrorCode describe ExitException.
	Vector       int
	ErrorCode    uint64
	HasErrorCode bool
	// Code is the system call number of ExitSyscall.
	Code uint64
	// Detail explains ExitFailure.
	Detail string
}

func (e Exit) String() string {
	switch e.Kind {
	case ExitIOOut:
		return fmt.Sprintf("out port %#x", e.Port)
	case ExitIOIn:
		return fmt.Sprintf("in port %#x", e.Port)
	case ExitException:
		return fmt.Sprintf("exception %d", e.Vector)
	}
	return fmt.Sprintf("exit kind %d", e.Kind)
}

// HasErrorCode says which exception vectors push an error code.
func VectorHasErrorCode(v int) bool {
	switch v {
	case 8, 10, 11, 12, 13, 14, 17, 21, 29, 30:
		return true
	}
	return false
}

// IOInsn decodes the port-I/O instruction at the start of code, as the
// CPU would: out/in with an immediate port or DX, with an operand-size
// prefix and REX prefixes allowed. ok is false for anything else.
func IOInsn(code []byte, dx uint16) (port uint16, size uint8, out bool, length uint8, ok bool) {
	size = 4
	i := 0
	for ; i < len(code) && i < 14; i++ {
		b := code[i]
		if b == 0x66 {
			size = 2
			continue
		}
		if b >= 0x40 && b <= 0x4f { // REX: W is ignored by in/out
			continue
		}
		break
	}
	if i >= len(code) {
		return 0, 0, false, 0, false
	}
	op := code[i]
	switch op {
	case 0xe4, 0xe5, 0xe6, 0xe7:
		if i+1 >= len(code) {
			return 0, 0, false, 0, false
		}
		port, length = uint16(code[i+1]), uint8(i+2)
	case 0xec, 0xed, 0xee, 0xef:
		port, length = dx, uint8(i+1)
	default:
		return 0, 0, false, 0, false
	}
	if op&1 == 0 {
		size = 1
	}
	out = op == 0xe6 || op == 0xe7 || op == 0xee || op == 0xef
	return port, size, out, length, true
}

// FPState is the x87 and SSE state the guest can observe, in one form on
// every backend (the FXSAVE layout's meaningful fields, without what
// differs between CPUs and kernels: MXCSR_MASK, reserved bytes, the
// unused upper 6 bytes of each x87 register). AVX is off (guests/ABI.md),
// so the upper halves of the YMM registers do not exist for the guest.
type FPState struct {
	FCW, FSW uint16
	// FTW is the abridged tag word of FXSAVE: bit i set when physical
	// register i holds a value.
	FTW uint8
	FOP uint16
	// FIP and FDP are the last x87 instruction and operand pointers
	// (64-bit form).
	FIP, FDP uint64
	MXCSR    uint32
	// ST holds the eight 80-bit x87 registers in the order FXSAVE (and
	// KVM_GET_FPU) stores them: ST(0) first.
	ST  [8][10]byte
	XMM [16][16]byte
}

// FXSAVE area layout (Intel SDM vol. 1, table 10-2, 64-bit form).
const (
	FXSaveSize  = 512
	fxFCW       = 0
	fxFSW       = 2
	fxFTW       = 4
	fxFOP       = 6
	fxFIP       = 8
	fxFDP       = 16
	fxMXCSR     = 24
	fxMXCSRMask = 28
	fxST        = 32
	fxXMM       = 160
)

// ResetFPState is the state the ABI promises at entry: FCW 0x37f,
// MXCSR 0x1f80, everything else zero.
func ResetFPState() FPState { return FPState{FCW: 0x37f, MXCSR: 0x1f80} }

// FromFXSave reads an FXSAVE-format area (as PTRACE_GETFPREGS returns it),
// dropping MXCSR_MASK and every reserved byte.
func (s *FPState) FromFXSave(a *[FXSaveSize]byte) {
	le := binary.LittleEndian
	*s = FPState{
		FCW: le.Uint16(a[fxFCW:]), FSW: le.Uint16(a[fxFSW:]), FTW: a[fxFTW], FOP: le.Uint16(a[fxFOP:]),
		FIP: le.Uint64(a[fxFIP:]), FDP: le.Uint64(a[fxFDP:]), MXCSR: le.Uint32(a[fxMXCSR:]),
	}
	for i := range s.ST {
		copy(s.ST[i][:], a[fxST+16*i:])
	}
	for i := range s.XMM {
		copy(s.XMM[i][:], a[fxXMM+16*i:])
	}
}

// ToFXSave writes s as an FXSAVE-format area with zeros in every reserved
// byte and mxcsrMask as MXCSR_MASK (the host's: the kernel refuses an
// MXCSR with bits outside it).
func (s *FPState) ToFXSave(a *[FXSaveSize]byte, mxcsrMask uint32) {
	le := binary.LittleEndian
	*a = [FXSaveSize]byte{}
	le.PutUint16(a[fxFCW:], s.FCW)
	le.PutUint16(a[fxFSW:], s.FSW)
	a[fxFTW] = s.FTW
	le.PutUint16(a[fxFOP:], s.FOP)
	le.PutUint64(a[fxFIP:], s.FIP)
	le.PutUint64(a[fxFDP:], s.FDP)
	le.PutUint32(a[fxMXCSR:], s.MXCSR)
	le.PutUint32(a[fxMXCSRMask:], mxcsrMask)
	for i := range s.ST {
		copy(a[fxST+16*i:], s.ST[i][:])
	}
	for i := range s.XMM {
		copy(a[fxXMM+16*i:], s.XMM[i][:])
	}
}

// CheckMXCSR refuses an MXCSR with bits outside mask (the host's
// MXCSR_MASK; 0xffff on every x86-64 CPU with DAZ): loading it would fault
// in the kernel, or the kernel would drop the bits silently.
func (s *FPState) CheckMXCSR(mask uint32) error {
	if s.MXCSR&^mask != 0 {
		return fmt.Errorf("backend: MXCSR %#x has bits outside this CPU's MXCSR_MASK %#x", s.MXCSR, mask)
	}
	return nil
}
