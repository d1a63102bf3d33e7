package vmm

import (
	"encoding/hex"
	"fmt"

	"golang.org/x/arch/x86/x86asm"
)

// SiteKind is the kind of a rewritten instruction.
type SiteKind uint8

const (
	SiteRDTSC SiteKind = iota + 1
	SiteRDTSCP
	SiteRDRAND
	SiteRDSEED
	SiteRDPID
	// SiteCPUID: on this machine's KVM backend CPUID at CPL3 runs natively
	// and shows the host CPU, so it is rewritten and answered from the
	// fixed table (cpuid.go) like the others.
	SiteCPUID
)

var siteNames = map[SiteKind]string{
	SiteRDTSC: "rdtsc", SiteRDTSCP: "rdtscp", SiteRDRAND: "rdrand", SiteRDSEED: "rdseed", SiteRDPID: "rdpid", SiteCPUID: "cpuid",
}

func (k SiteKind) String() string { return siteNames[k] }

// Site is one instruction the loader rewrote into a trap, so that the VMM
// can emulate it with an answer from the World.
type Site struct {
	Addr uint64
	Kind SiteKind
	// Orig is the original instruction; the trap is as long.
	Orig []byte
	// Reg is the destination register index (0=rax..15=r15) of
	// RDRAND/RDSEED/RDPID, and OpBits its operand size (16, 32 or 64).
	Reg    int
	OpBits int
}

// Len is the length of the original (and of the rewritten) instruction.
func (s *Site) Len() uint64 { return uint64(len(s.Orig)) }

// Trap is the bytes the instruction became: out %al, $0xd0 and NOPs.
func (s *Site) Trap() []byte {
	t := make([]byte, len(s.Orig))
	t[0], t[1] = 0xe6, portRewrite
	for i := 2; i < len(t); i++ {
		t[i] = 0x90
	}
	return t
}

func (s *Site) String() string {
	op := s.Kind.String()
	if s.Kind == SiteRDRAND || s.Kind == SiteRDSEED || s.Kind == SiteRDPID {
		op = fmt.Sprintf("%s %s", op, regName(s.Reg, s.OpBits))
	}
	return fmt.Sprintf("%#x: %-12s %-22s -> %s", s.Addr, hex.EncodeToString(s.Orig), op, hex.EncodeToString(s.Trap()))
}

func regName(r, bits int) string {
	n64 := [16]string{"rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi", "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15"}
	switch {
	case bits == 64:
		return n64[r]
	case r >= 8 && bits == 32:
		return n64[r] + "d"
	case r >= 8:
		return n64[r] + "w"
	case bits == 32:
		return "e" + n64[r][1:]
	default:
		return n64[r][1:]
	}
}

// matchNondet recognises, at the start of code, an instruction whose result
// differs between hosts and returns its site (Addr unset). It handles RDSEED
// and RDPID, which x86asm v0.32 does not decode, and the others alike.
func matchNondet(code []byte) (Site, bool) {
	i, opsize16, repz := 0, false, false
	for ; i < len(code) && i < 14; i++ {
		switch code[i] {
		case 0x66:
			opsize16 = true
			continue
		case 0xf3:
			repz = true
			continue
		case 0xf2, 0x2e, 0x3e, 0x26, 0x64, 0x65, 0x36, 0xf0, 0x67:
			continue
		}
		break
	}
	rex := byte(0)
	if i < len(code) && code[i]&0xf0 == 0x40 {
		rex = code[i]
		i++
	}
	if i+1 >= len(code) || code[i] != 0x0f {
		return Site{}, false
	}
	switch {
	case code[i+1] == 0x31:
		return Site{Kind: SiteRDTSC, Orig: code[:i+2]}, true
	case code[i+1] == 0xa2:
		return Site{Kind: SiteCPUID, Orig: code[:i+2]}, true
	case code[i+1] == 0x01 && i+2 < len(code) && code[i+2] == 0xf9:
		return Site{Kind: SiteRDTSCP, Orig: code[:i+3]}, true
	case code[i+1] == 0xc7 && i+2 < len(code) && code[i+2]>>6 == 3:
		modrm := code[i+2]
		reg := int(modrm&7) | int(rex&1)<<3
		bits := 32
		if rex&8 != 0 {
			bits = 64
		} else if opsize16 {
			bits = 16
		}
		switch (modrm >> 3) & 7 {
		case 6:
			if !repz {
				return Site{Kind: SiteRDRAND, Orig: code[:i+3], Reg: reg, OpBits: bits}, true
			}
		case 7:
			if repz {
				return Site{Kind: SiteRDPID, Orig: code[:i+3], Reg: reg, OpBits: 64}, true
			}
			return Site{Kind: SiteRDSEED, Orig: code[:i+3], Reg: reg, OpBits: bits}, true
		}
	}
	return Site{}, false
}

// endbrLen is 4 for endbr64 (f3 0f 1e fa) and endbr32 (f3 0f 1e fb),
// which x86asm does not know, else 0.
func endbrLen(code []byte) int {
	if len(code) >= 4 && code[0] == 0xf3 && code[1] == 0x0f && code[2] == 0x1e && (code[3] == 0xfa || code[3] == 0xfb) {
		return 4
	}
	return 0
}

// refusedOps are instructions whose result can differ between hosts or
// backends and that the VMM does not emulate, so an image that uses them
// is refused at load (guests/ABI.md has the table).
var refusedOps = map[x86asm.Op]string{
	x86asm.SGDT:     "shows the host's descriptor-table address",
	x86asm.SIDT:     "shows the host's descriptor-table address",
	x86asm.SLDT:     "shows the host's LDT selector",
	x86asm.STR:      "shows the host's task register",
	x86asm.SMSW:     "shows the host's CR0 bits",
	x86asm.LSL:      "reads segment limits, which Linux uses to expose the CPU number",
	x86asm.LAR:      "reads segment access rights, which differ between backends",
	x86asm.XGETBV:   "reads XCR0, which differs between hosts (and faults on KVM, where OSXSAVE is off)",
	x86asm.RDFSBASE: "depends on CR4.FSGSBASE, on under Linux and off on KVM",
	x86asm.RDGSBASE: "depends on CR4.FSGSBASE, on under Linux and off on KVM",
	x86asm.WRFSBASE: "depends on CR4.FSGSBASE: it sets FS's base under Linux and is #UD on KVM",
	x86asm.WRGSBASE: "depends on CR4.FSGSBASE: it sets GS's base under Linux and is #UD on KVM",
	x86asm.RDPMC:    "reads host performance counters",
	x86asm.XBEGIN:   "starts a transaction that aborts as the host decides (and is #UD on AMD)",
	x86asm.FXSAVE:   "stores MXCSR_MASK, which differs between CPUs",
	x86asm.FXSAVE64: "stores MXCSR_MASK, which differs between CPUs",
	x86asm.XSAVE:    "needs XSAVE, which the guest ABI leaves off",
	x86asm.XSAVE64:  "needs XSAVE, which the guest ABI leaves off",
	x86asm.XSAVEC:   "needs XSAVE, which the guest ABI leaves off",
	x86asm.XSAVEOPT: "needs XSAVE, which the guest ABI leaves off",
	x86asm.XSAVES:   "needs XSAVE, which the guest ABI leaves off",
}

// refused says why the decoded instruction at the start of code may not be
// used by a guest, or "".
func refused(code []byte, inst x86asm.Inst) string {
	if why, ok := refusedOps[inst.Op]; ok {
		return why
	}
	i := 0
	for i < len(code) && i < 14 {
		switch code[i] {
		case 0x66, 0xf2, 0xf3, 0x2e, 0x3e, 0x26, 0x64, 0x65, 0x36, 0xf0, 0x67:
			i++
			continue
		}
		break
	}
	if i < len(code) && (code[i] == 0xc4 || code[i] == 0xc5 || code[i] == 0x62) {
		return "is AVX (VEX or EVEX encoded), which the guest ABI leaves off: it faults on KVM and runs under ptrace"
	}
	return ""
}
