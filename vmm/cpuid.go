package vmm

import (
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"strings"

	"github.com/ftvm/ftvm/vmm/backend"
	"golang.org/x/sys/cpu"
)

// The guest's CPUID is one fixed table, the same on every host, so that a
// guest cannot observe which machine it runs on, and primary and backup agree.
// PLATFORM.md says KVM answers CPUID at CPL3 from the table given to
// KVM_SET_CPUID2; on this machine's backend (kvm_pvm) it does not: CPUID runs
// natively and shows the host. So the loader rewrites CPUID like RDTSC and
// the VMM answers from this table; it is also passed to KVM for hosts where
// KVM does answer.
// It advertises a small x86-64 baseline (SSE to SSE4.2, POPCNT, CX16) and
// hides every feature whose result differs between hosts or that the
// VMM cannot make deterministic: RDRAND, RDSEED, RDPID, RDTSCP, the
// hypervisor bit, TSC-deadline, XSAVE/AVX, PCID/INVPCID, the PMU.
type cpuidEntry struct {
	fn, index          uint32
	eax, ebx, ecx, edx uint32
}

const (
	// Leaf 1 ECX: SSE3, PCLMULQDQ, SSSE3, CX16, SSE4.1, SSE4.2, POPCNT.
	leaf1ECX = 1<<0 | 1<<1 | 1<<9 | 1<<13 | 1<<19 | 1<<20 | 1<<23
	// Leaf 1 EDX: FPU, TSC, PAE, CX8, CMOV, CLFSH, MMX, FXSR, SSE, SSE2.
	leaf1EDX = 1<<0 | 1<<4 | 1<<6 | 1<<8 | 1<<15 | 1<<19 | 1<<23 | 1<<24 | 1<<25 | 1<<26
	// Leaf 0x80000001 ECX: LAHF/SAHF in 64-bit mode. EDX: NX, LM.
	ext1ECX = 1 << 0
	ext1EDX = 1<<20 | 1<<29
)

func regs4(s string) [4]uint32 {
	var b [16]byte
	copy(b[:], s)
	le := binary.LittleEndian
	return [4]uint32{le.Uint32(b[0:]), le.Uint32(b[4:]), le.Uint32(b[8:]), le.Uint32(b[12:])}
}

// fixedCPUID is the table; vendor "FTVMFTVMFTVM", family 6.
func fixedCPUID() []cpuidEntry {
	v := regs4("FTVMFTVMFTVM")
	brand := regs4("ftvm virtual CPU")
	t := []cpuidEntry{
		{fn: 0, eax: 7, ebx: v[0], edx: v[1], ecx: v[2]},
		{fn: 1, eax: 0x000606a0, ebx: 8 << 8 /* CLFLUSH 64 bytes */, ecx: leaf1ECX, edx: leaf1EDX},
	}
	for fn := uint32(2); fn <= 6; fn++ {
		t = append(t, cpuidEntry{fn: fn})
	}
	t = append(t,
		cpuidEntry{fn: 7, index: 0}, // no extended features: no RDSEED, no AVX2, ...
		cpuidEntry{fn: 0x80000000, eax: 0x80000008},
		cpuidEntry{fn: 0x80000001, ecx: ext1ECX, edx: ext1EDX},
		cpuidEntry{fn: 0x80000002, eax: brand[0], ebx: brand[1], ecx: brand[2], edx: brand[3]},
		cpuidEntry{fn: 0x80000003},
		cpuidEntry{fn: 0x80000004},
		cpuidEntry{fn: 0x80000005},
		cpuidEntry{fn: 0x80000006},
		cpuidEntry{fn: 0x80000007},
		cpuidEntry{fn: 0x80000008, eax: 0x3028}, // 40-bit physical, 48-bit virtual
	)
	return t
}

var cpuidTable = fixedCPUID()

// cpuidLookup answers CPUID for leaf and subleaf from the fixed table. Leaves
// outside it read as zeros (what AMD CPUs do; Intel CPUs repeat the highest
// basic leaf); the subleaf matters only for leaf 7.
func cpuidLookup(leaf, subleaf uint32) cpuidEntry {
	for _, e := range cpuidTable {
		if e.fn == leaf && (leaf != 7 || e.index == subleaf) {
			return e
		}
	}
	return cpuidEntry{fn: leaf, index: subleaf}
}

// CPUIDDigest identifies the CPUID table, for the log's start entry.
func CPUIDDigest() [32]byte {
	h := sha256.New()
	for _, e := range fixedCPUID() {
		binary.Write(h, binary.LittleEndian, e)
	}
	var d [32]byte
	h.Sum(d[:0])
	return d
}

// checkHostCPU verifies the host CPU has every feature the fixed table
// advertises: a guest must never see a feature that faults on some hosts.
// It asks the host CPU, not KVM_GET_SUPPORTED_CPUID: guest code runs
// natively at CPL3, and this machine's KVM backend (kvm_pvm) reports a
// minimal list (no SSE3) although the instructions run fine.
func checkHostCPU() error {
	var missing []string
	for _, f := range []struct {
		name string
		has  bool
	}{
		{"sse3", cpu.X86.HasSSE3}, {"pclmulqdq", cpu.X86.HasPCLMULQDQ}, {"ssse3", cpu.X86.HasSSSE3},
		{"cx16", cpu.X86.HasCX16}, {"sse4.1", cpu.X86.HasSSE41}, {"sse4.2", cpu.X86.HasSSE42},
		{"popcnt", cpu.X86.HasPOPCNT}, {"sse2", cpu.X86.HasSSE2},
	} {
		if !f.has {
			missing = append(missing, f.name)
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("vmm: this host's CPU lacks features that ftvm's fixed CPUID table promises: %s", strings.Join(missing, ", "))
	}
	return nil
}

// backendCPUID is the fixed table for backends that can answer CPUID.
func backendCPUID() []backend.CPUIDEntry {
	t := fixedCPUID()
	out := make([]backend.CPUIDEntry, len(t))
	for i, e := range t {
		out[i] = backend.CPUIDEntry{Function: e.fn, Index: e.index, EAX: e.eax, EBX: e.ebx, ECX: e.ecx, EDX: e.edx}
	}
	return out
}
