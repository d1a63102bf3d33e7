package vmm

import (
	"fmt"
	"strings"

	"github.com/ftvm/ftvm/replay"
	"github.com/ftvm/ftvm/vmm/backend"
	"golang.org/x/arch/x86/x86asm"
)

// GuestFault is the error that stops a VM because of something the guest did:
// an exception, a triple fault, an unknown port, memory that is not RAM.
type GuestFault struct {
	Exit uint64 // the guest-caused exit at which the VM stopped
	What string // e.g. "#GP general protection fault (error code 0)"
	RIP  uint64 // where the guest was
	Insn string // the instruction at RIP, when it could be decoded
	Regs replay.Regs
}

func (f *GuestFault) Error() string {
	insn := ""
	if f.Insn != "" {
		insn = " (" + f.Insn + ")"
	}
	return fmt.Sprintf("vmm: guest stopped: %s at rip %#x%s", f.What, f.RIP, insn)
}

// RegisterDump is the registers in one line, for a report after Error.
func (f *GuestFault) RegisterDump() string {
	var b strings.Builder
	for i, v := range f.Regs.Array() {
		if i > 0 {
			b.WriteByte(' ')
		}
		fmt.Fprintf(&b, "%s=%#x", replay.RegNames[i], v)
	}
	return b.String()
}

// guestView is what reports about the guest need: its memory and image.
type guestView struct {
	mem *GuestMemory
	img *Image
}

// instructionBefore finds which of the encodings ends just before rip (for
// exits and traps that leave RIP past their instruction) and returns its
// address and disassembly, or rip unchanged.
func (g *guestView) instructionBefore(rip uint64, encodings [][]byte) (uint64, string) {
	for _, enc := range encodings {
		n := uint64(len(enc))
		if rip < n {
			continue
		}
		if b, err := g.mem.slice(rip-n, n); err == nil && string(b) == string(enc) {
			return rip - n, g.decodeAt(rip - n)
		}
	}
	return rip, g.decodeAt(rip)
}

func (g *guestView) newFault(exit uint64, what string, r replay.Regs) *GuestFault {
	return &GuestFault{Exit: exit, What: what, RIP: r.RIP, Insn: g.decodeAt(r.RIP), Regs: r}
}

// decodeAt disassembles the instruction at rip, showing the original of a
// rewritten one.
func (g *guestView) decodeAt(rip uint64) string {
	if s, ok := g.img.sites[rip]; ok {
		return s.Kind.String()
	}
	var code [15]byte
	n := uint64(len(code))
	if rip < g.mem.Size() && g.mem.Size()-rip < n {
		n = g.mem.Size() - rip
	}
	b, err := g.mem.slice(rip, n)
	if err != nil || n == 0 {
		return ""
	}
	inst, err := x86asm.Decode(b, 64)
	if err != nil {
		return ""
	}
	return strings.ToLower(x86asm.GNUSyntax(inst, rip, nil))
}

var vectorNames = [32]string{
	"#DE divide error", "#DB debug", "NMI", "#BP breakpoint (int3)", "#OF overflow",
	"#BR bound range", "#UD invalid opcode", "#NM device not available", "#DF double fault",
	"coprocessor segment overrun", "#TS invalid TSS", "#NP segment not present",
	"#SS stack fault", "#GP general protection fault", "#PF page fault", "vector 15",
	"#MF x87 floating-point error", "#AC alignment check", "#MC machine check",
	"#XM SIMD floating-point exception", "#VE virtualization exception", "#CP control protection",
	"vector 22", "vector 23", "vector 24", "vector 25", "vector 26", "vector 27",
	"#HV hypervisor injection", "#VC VMM communication", "#SX security exception", "vector 31",
}

// exceptionFault reports exception e, raised with registers r.
func (g *guestView) exceptionFault(exit uint64, e backend.Exit, r replay.Regs) *GuestFault {
	what := fmt.Sprintf("vector %d", e.Vector)
	if e.Vector >= 0 && e.Vector < len(vectorNames) {
		what = vectorNames[e.Vector]
	}
	if e.HasErrorCode {
		what += fmt.Sprintf(" (error code %#x)", e.ErrorCode)
	}
	if e.Vector == 14 {
		what += fmt.Sprintf(" accessing %#x", e.Addr)
	}
	f := g.newFault(exit, what, r)
	if e.Vector == 3 { // #BP is a trap: RIP is past the int3 (CC) or int $3 (CD 03)
		f.RIP, f.Insn = g.instructionBefore(r.RIP, [][]byte{{0xcc}, {0xcd, 0x03}})
	}
	return f
}
