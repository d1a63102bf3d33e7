package vmm

import (
	"fmt"
	"strings"

	"github.com/bobuhiro11/gokvm/kvm"
	"github.com/ftvm/ftvm/replay"
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

// instructionBefore finds which of the encodings ends just before rip (for
// exits and traps that leave RIP past their instruction) and returns its
// address and disassembly, or rip unchanged.
func (m *Machine) instructionBefore(rip uint64, encodings [][]byte) (uint64, string) {
	for _, enc := range encodings {
		n := uint64(len(enc))
		if rip < n {
			continue
		}
		if b, err := m.mem.Slice(rip-n, n); err == nil && string(b) == string(enc) {
			return rip - n, m.decodeAt(rip - n)
		}
	}
	return rip, m.decodeAt(rip)
}

func (m *Machine) newFault(exit uint64, what string, r replay.Regs) *GuestFault {
	return &GuestFault{Exit: exit, What: what, RIP: r.RIP, Insn: m.decodeAt(r.RIP), Regs: r}
}

// decodeAt disassembles the instruction at rip, showing the original of a
// rewritten one.
func (m *Machine) decodeAt(rip uint64) string {
	if s, ok := m.img.sites[rip]; ok {
		return s.Kind.String()
	}
	var code [15]byte
	n := uint64(len(code))
	if rip < m.mem.Size() && m.mem.Size()-rip < n {
		n = m.mem.Size() - rip
	}
	b, err := m.mem.Slice(rip, n)
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

// hasErrorCode says which vectors push an error code.
func hasErrorCode(v int) bool {
	switch v {
	case 8, 10, 11, 12, 13, 14, 17, 21, 29, 30:
		return true
	}
	return false
}

// guestException handles an exit from the exception stub of a vector: the
// CPU pushed [error code,] RIP, CS, RFLAGS, RSP, SS on the IST stack.
func (m *Machine) guestException(x *exitContext) (bool, int, error) {
	stub := x.point.Regs.RIP - 2
	v := int(stub-stubAddr) / 8
	if stub < stubAddr || v >= 32 || stubAddr+uint64(v)*8 != stub {
		return false, 0, x.fault(fmt.Sprintf("out to the VMM's reserved exception port from outside its stubs"))
	}
	r := x.point.Regs
	sp := r.RSP
	what := vectorNames[v]
	if hasErrorCode(v) {
		code, err := m.mem.ReadU64(sp)
		if err == nil {
			what += fmt.Sprintf(" (error code %#x)", code)
		}
		sp += 8
	}
	if v == 14 {
		if s, err := kvm.GetSregs(uintptr(m.vcpu.fd)); err == nil {
			what += fmt.Sprintf(" accessing %#x", s.CR2)
		}
	}
	var frame [4]uint64 // RIP, CS, RFLAGS, RSP
	for i := range frame {
		w, err := m.mem.ReadU64(sp + uint64(i)*8)
		if err != nil {
			return false, 0, m.newFault(x.point.Exit, what+" (exception frame unreadable)", r)
		}
		frame[i] = w
	}
	r.RIP, r.RFLAGS, r.RSP = frame[0], frame[2], frame[3]
	f := m.newFault(x.point.Exit, what, r)
	if v == 3 { // #BP is a trap: RIP is past the int3 (CC) or int $3 (CD 03)
		f.RIP, f.Insn = m.instructionBefore(r.RIP, [][]byte{{0xcc}, {0xcd, 0x03}})
	}
	return false, 0, f
}
