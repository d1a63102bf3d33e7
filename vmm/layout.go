package vmm

import (
	"encoding/binary"
	"fmt"

	"github.com/ftvm/ftvm/vmm/backend"
)

// The guest's memory layout (ABI v2); guests/ABI.md is the guest-facing
// description.
//
// Guest RAM holds only what the guest may see: the boot information, the
// image, the heap and the stack. Everything the VMM needs to run the guest
// on a CPU's own tables (KVM) lives in a private region outside RAM: the
// GDT and TSS, the IDT, the exception stubs and their stack, and the page
// tables. Its pages are mapped far above RAM, where no guest address
// reaches by accident, and it is not part of the state digest: a backend
// that needs none of it (ptrace) leaves RAM byte for byte the same.
const (
	pageSize = 0x1000

	bootInfoAddr  = 0x10000 // struct ftvm_boot_info + command line: user, read
	cmdlineAddr   = 0x10800
	maxCmdline    = 2047
	imageBase     = 0x100000 // lowest address an ELF segment may use
	stackSize     = 1 << 20
	bootInfoMagic = 0x544f4f424d565446 // "FTVMBOOT"
	abiVersion    = 2
	// TSCHz is the frequency of the guest's virtual time-stamp counter.
	TSCHz = 1_000_000_000

	// The private region: at guest-physical privGPA (past the largest
	// RAM) and guest-virtual privVA (PML4 slot 254).
	privGPA      = 1 << 30
	privVA       = 254 << 39
	privGDT      = privVA + 0x0000 // GDT, then the TSS (supervisor only)
	privTSS      = privVA + 0x0800
	privIDT      = privVA + 0x1000 // 256 gates (supervisor only)
	privStubs    = privVA + 0x2000 // exception stubs: user, read+execute
	privExcStack = privVA + 0x3000 // IST1 stack for exceptions: user, read+write
	privExcTop   = privVA + 0x5000
	privTables   = privVA + 0x5000 // page tables (supervisor only)

	selUserCode = 0x1b
	selUserData = 0x23
	selTSS      = 0x28
	// The TSS ends with an I/O permission bitmap allowing ports 0-255: the
	// guest runs at IOPL 0 (as a Linux process does under ptrace), so the
	// bitmap is what lets its out reach the VMM.
	tssIOBitmap = 0x68
	tssLimit    = tssIOBitmap + 256/8 // the byte after the bitmap is 0xff

	// Ports, see guests/ABI.md.
	portConsoleWrite = 0x01
	portConsoleRead  = 0x02
	portClock        = 0x03
	portWait         = 0x04
	portExit         = 0x05
	portRewrite      = 0xd0
	portException    = 0xe0 // + vector, 0-31

	// Page-table entry bits. Accessed and Dirty are set from the start, so
	// the CPU never writes the tables.
	ptePresent  = 1 << 0
	pteWrite    = 1 << 1
	pteUser     = 1 << 2
	pteAccessed = 1 << 5
	pteDirty    = 1 << 6
	pteNX       = 1 << 63

	// entryRFLAGS is RFLAGS at the guest's first instruction: IF (and
	// bit 1, always set); IOPL 0 on every backend.
	entryRFLAGS = 0x202

	// Minimum and maximum guest RAM: the page tables map RAM with 4 KiB
	// pages through one page directory.
	MinMemory = 4 << 20
	MaxMemory = 1 << 30
)

// pagePerm is the access a guest page gets.
type pagePerm uint8

const (
	permNone pagePerm = iota // not mapped
	permSupervisor
	permUserRX
	permUserR
	permUserRW
)

func (p pagePerm) pte() uint64 {
	const ad = pteAccessed | pteDirty
	switch p {
	case permSupervisor:
		return ptePresent | pteWrite | pteNX | ad
	case permUserRX:
		return ptePresent | pteUser | ad
	case permUserR:
		return ptePresent | pteUser | pteNX | ad
	case permUserRW:
		return ptePresent | pteWrite | pteUser | pteNX | ad
	}
	return 0
}

// backendPerm is the guest's (CPL3) access to a page with permission p.
func (p pagePerm) backendPerm() backend.Perm {
	switch p {
	case permUserRX:
		return backend.PermReadExec
	case permUserR:
		return backend.PermRead
	case permUserRW:
		return backend.PermReadWrite
	}
	return backend.PermNone
}

// Layout is where things are in a guest of a given size.
type Layout struct {
	MemSize   uint64
	StackTop  uint64
	HeapStart uint64
	HeapEnd   uint64
	// PrivSize is the size of the private region; its page tables start
	// at privTables.
	PrivSize uint64
}

// privPTs is how many page tables map the private region.
const privPTs = 2

// ramPTs is how many page tables map mem bytes of RAM.
func ramPTs(mem uint64) uint64 { return (mem + (512*pageSize - 1)) / (512 * pageSize) }

// newLayout places the stack and heap around an image ending at imageEnd.
func newLayout(mem, imageEnd uint64) (Layout, error) {
	if mem < MinMemory || mem > MaxMemory || mem%(2<<20) != 0 {
		return Layout{}, fmt.Errorf("vmm: guest memory %d bytes: must be a multiple of 2 MiB between %d MiB and %d MiB", mem, MinMemory>>20, MaxMemory>>20)
	}
	l := Layout{MemSize: mem, StackTop: mem}
	l.HeapEnd = l.StackTop - stackSize - pageSize // one unmapped guard page
	l.HeapStart = (imageEnd + pageSize - 1) &^ (pageSize - 1)
	if l.HeapStart > l.HeapEnd {
		return Layout{}, fmt.Errorf("vmm: image ends at %#x, past the %#x bytes of guest memory left below the stack (raise --mem)", imageEnd, l.HeapEnd)
	}
	// PML4, then PDPT, PD and the page tables for RAM, then PDPT, PD and
	// two page tables (4 MiB, enough for 1 GiB of RAM) for the private
	// region.
	l.PrivSize = privTables - privVA + (1+2+ramPTs(mem)+2+privPTs)*pageSize
	return l, nil
}

// systemTables says where the private region and its tables are.
func systemTables(l Layout, priv []byte) backend.SystemTables {
	return backend.SystemTables{
		Private: priv, PrivateGPA: privGPA, PrivateVA: privVA,
		PageTables: privGPA + (privTables - privVA),
		GDT:        privGDT, GDTLimit: 7*8 - 1,
		IDT: privIDT, IDTLimit: 256*16 - 1,
		TSS: privTSS, TSSLimit: tssLimit,
		CodeSel: selUserCode, DataSel: selUserData, TSSSel: selTSS,
		ExceptionStubs: privStubs, ExceptionPort: portException,
		ExceptionStackTop: privExcTop, ExceptionStackBytes: privExcTop - privExcStack,
	}
}

// privateMemory is the private region seen from the VMM: addressed by the
// guest-virtual addresses the tables use.
type privateMemory struct{ b []byte }

func (p privateMemory) slice(va, n uint64) []byte { return p.b[va-privVA : va-privVA+n] }
func (p privateMemory) putU64(va, v uint64)       { binary.LittleEndian.PutUint64(p.slice(va, 8), v) }

// buildPageTables writes the page tables into the private region: RAM is
// identity mapped with the permission of each page taken from perms (one
// entry per 4 KiB page), and the private region is mapped at privVA.
func buildPageTables(priv privateMemory, l Layout, perms []pagePerm) {
	phys := func(va uint64) uint64 { return privGPA + (va - privVA) }
	const inner = ptePresent | pteWrite | pteUser | pteAccessed // leaves decide the access
	pml4 := uint64(privTables)
	pdpt, pd := pml4+pageSize, pml4+2*pageSize
	pts := pml4 + 3*pageSize
	priv.putU64(pml4, phys(pdpt)|inner)
	priv.putU64(pdpt, phys(pd)|inner)
	for i, perm := range perms {
		pt := pts + uint64(i/512)*pageSize
		if i%512 == 0 {
			priv.putU64(pd+uint64(i/512)*8, phys(pt)|inner)
		}
		priv.putU64(pt+uint64(i%512)*8, uint64(i)*pageSize|perm.pte())
	}
	// The private region: PML4 slot 254 -> PDPT -> PD -> page tables.
	ppdpt := pts + ramPTs(l.MemSize)*pageSize
	ppd, ppt := ppdpt+pageSize, ppdpt+2*pageSize
	priv.putU64(pml4+(privVA>>39&511)*8, phys(ppdpt)|inner)
	priv.putU64(ppdpt+(privVA>>30&511)*8, phys(ppd)|inner)
	for i := uint64(0); i < privPTs; i++ {
		priv.putU64(ppd+((privVA>>21&511)+i)*8, phys(ppt+i*pageSize)|inner)
	}
	for off := uint64(0); off < l.PrivSize; off += pageSize {
		perm := permSupervisor
		switch va := privVA + off; {
		case va >= privStubs && va < privExcStack:
			perm = permUserRX
		case va >= privExcStack && va < privExcTop:
			perm = permUserRW
		}
		priv.putU64(ppt+(off/pageSize)*8, phys(privVA+off)|perm.pte())
	}
}

// systemPerms marks the boot information, the heap and the stack; image
// pages are set by the loader. Nothing else in RAM is mapped.
func systemPerms(l Layout, perms []pagePerm) {
	set := func(lo, hi uint64, p pagePerm) {
		for a := lo; a < hi; a += pageSize {
			perms[a/pageSize] = p
		}
	}
	set(bootInfoAddr, bootInfoAddr+pageSize, permUserR)
	set(l.HeapStart, l.HeapEnd, permUserRW)
	set(l.StackTop-stackSize, l.StackTop, permUserRW)
}

// writeSystemTables writes the GDT, TSS, IDT and exception stubs into the
// private region.
func writeSystemTables(priv privateMemory) {
	gdt := []uint64{
		0,
		0x00209b0000000000, // 0x08 kernel code (unused: the guest never runs at CPL0)
		0x0000930000000000, // 0x10 kernel data
		0x0020fb0000000000, // 0x18 user code, DPL3, L=1, accessed (the CPU never writes it)
		0x0000f30000000000, // 0x20 user data, DPL3, accessed
	}
	// 0x28: the 64-bit TSS descriptor (two slots), type 0xb (busy).
	lo := uint64(tssLimit) | (privTSS&0xffffff)<<16 | uint64(0x8b)<<40 | (privTSS>>24&0xff)<<56
	gdt = append(gdt, lo, privTSS>>32)
	for i, d := range gdt {
		priv.putU64(privGDT+uint64(i)*8, d)
	}
	// TSS: RSP0 and IST1 both point at the exception stack, so that even a
	// guest whose own stack is gone gets its exception reported.
	tss := priv.slice(privTSS, tssLimit+1)
	binary.LittleEndian.PutUint64(tss[4:], privExcTop)
	binary.LittleEndian.PutUint64(tss[0x24:], privExcTop)
	binary.LittleEndian.PutUint16(tss[0x66:], tssIOBitmap)
	tss[tssLimit] = 0xff
	// IDT: vectors 0-31 go to a stub at CPL3 that exits on port 0xe0+v.
	for v := uint64(0); v < 32; v++ {
		h := privStubs + v*8
		gateLo := h&0xffff | selUserCode<<16 | 1<<32 /* IST1 */ | 0xee<<40 /* P, DPL3, interrupt gate */ | (h>>16&0xffff)<<48
		priv.putU64(privIDT+v*16, gateLo)
		priv.putU64(privIDT+v*16+8, h>>32)
		// out %al, $(0xe0+v); jmp . (never reached: the VMM stops the VM)
		copy(priv.slice(h, 4), []byte{0xe6, byte(portException + v), 0xeb, 0xfe})
	}
}

// writeBootInfo writes struct ftvm_boot_info and the command line.
func writeBootInfo(mem *GuestMemory, l Layout, cmdline string) error {
	if len(cmdline) > maxCmdline {
		return fmt.Errorf("vmm: command line is %d bytes, at most %d fit", len(cmdline), maxCmdline)
	}
	b, err := mem.Slice(bootInfoAddr, pageSize)
	if err != nil {
		return err
	}
	le := binary.LittleEndian
	le.PutUint64(b[0:], bootInfoMagic)
	le.PutUint32(b[8:], abiVersion)
	le.PutUint32(b[12:], 0)
	le.PutUint64(b[16:], l.MemSize)
	le.PutUint64(b[24:], l.HeapStart)
	le.PutUint64(b[32:], l.HeapEnd)
	le.PutUint64(b[40:], l.StackTop)
	le.PutUint64(b[48:], TSCHz)
	le.PutUint64(b[56:], cmdlineAddr)
	le.PutUint64(b[64:], uint64(len(cmdline)))
	copy(b[cmdlineAddr-bootInfoAddr:], cmdline)
	b[cmdlineAddr-bootInfoAddr+len(cmdline)] = 0
	return nil
}
