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

// rewrite sweeps an executable segment instruction by instruction and turns
// every non-deterministic instruction into a trap of the same length. Bytes
// that do not decode are an error: a sweep that skipped them could step over
// a real RDTSC (PLATFORM.md).
func (img *Image) rewrite(seg *Segment) error {
	code := seg.Data
	for off := 0; off < len(code); {
		addr := seg.Addr + uint64(off)
		if s, ok := matchNondet(code[off:]); ok {
			s.Addr = addr
			s.Orig = append([]byte(nil), s.Orig...)
			if len(s.Orig) < 2 {
				return fmt.Errorf("vmm: %s at %#x is too short to rewrite", s.Kind, addr)
			}
			copy(code[off:], s.Trap())
			img.Sites = append(img.Sites, s)
			img.sites[addr] = &img.Sites[len(img.Sites)-1]
			off += len(s.Orig)
			continue
		}
		inst, err := x86asm.Decode(code[off:], 64)
		if err != nil {
			end := min(off+15, len(code))
			return fmt.Errorf("vmm: cannot decode the instruction at %#x (bytes %s): %v; the rewriter must see every instruction of an executable segment", addr, hex.EncodeToString(code[off:end]), err)
		}
		if inst.Op == x86asm.OUT && inst.Len == 2 && code[off] == 0xe6 && code[off+1] == portRewrite {
			img.Warnings = append(img.Warnings, fmt.Sprintf("%#x: the guest itself uses the VMM's rewrite port %#x; that exit will be refused", addr, portRewrite))
		}
		off += inst.Len
	}
	// The sites map points into the slice; re-point after appends moved it.
	for i := range img.Sites {
		img.sites[img.Sites[i].Addr] = &img.Sites[i]
	}
	return nil
}
