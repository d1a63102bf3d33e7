package vmm

import (
	"encoding/binary"
	"fmt"

	"github.com/ftvm/ftvm/vmm/backend"
)

// The guest's memory layout; guests/ABI.md is the guest-facing description.
const (
	pageSize = 0x1000

	gdtAddr       = 0x1000 // GDT, then the TSS at tssAddr (supervisor only)
	tssAddr       = 0x1800
	idtAddr       = 0x2000 // 256 gates (supervisor only)
	stubAddr      = 0x3000 // exception stubs: user, read+execute
	bootInfoAddr  = 0x4000 // struct ftvm_boot_info + command line: user, read
	cmdlineAddr   = 0x4800
	maxCmdline    = 2047
	excStackLow   = 0x5000 // IST1 stack for exceptions: user, read+write
	excStackTop   = 0x7000
	imageBase     = 0x100000 // lowest address an ELF segment may use
	stackSize     = 1 << 20
	bootInfoMagic = 0x544f4f424d565446 // "FTVMBOOT"
	abiVersion    = 1
	// TSCHz is the frequency of the guest's virtual time-stamp counter.
	TSCHz = 1_000_000_000

	selUserCode = 0x1b
	selUserData = 0x23
	selTSS      = 0x28
	// The TSS ends with an I/O permission bitmap allowing ports 0-255:
	// IOPL=3 should make it moot, but this machine's KVM backend (kvm_pvm)
	// consults it, and without it every out faults.
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
	// the CPU never writes the tables: guest RAM then holds the same bytes
	// on a backend that walks them (KVM) and on one that does not (ptrace).
	ptePresent  = 1 << 0
	pteWrite    = 1 << 1
	pteUser     = 1 << 2
	pteAccessed = 1 << 5
	pteDirty    = 1 << 6
	pteNX       = 1 << 63

	// entryRFLAGS is RFLAGS at the guest's first instruction: IF (and
	// bit 1, always set). The backend adds IOPL as it needs.
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

// systemTables says where writeSystemTables and buildPageTables put the
// guest's long-mode tables.
func systemTables(l Layout) backend.SystemTables {
	return backend.SystemTables{
		PageTables: l.PageTables,
		GDT:        gdtAddr, GDTLimit: 7*8 - 1,
		IDT: idtAddr, IDTLimit: 256*16 - 1,
		TSS: tssAddr, TSSLimit: tssLimit,
		CodeSel: selUserCode, DataSel: selUserData, TSSSel: selTSS,
		ExceptionStubs: stubAddr, ExceptionPort: portException,
		ExceptionStackTop: excStackTop, ExceptionStackBytes: excStackTop - excStackLow,
	}
}

// Layout is where things are in a guest of a given size.
type Layout struct {
	MemSize    uint64
	PageTables uint64 // base of the page tables, at the top of RAM
	StackTop   uint64
	HeapStart  uint64
	HeapEnd    uint64
}

func pageTableBytes(mem uint64) uint64 {
	pts := (mem + (512*pageSize - 1)) / (512 * pageSize)
	return (3 + pts) * pageSize // PML4, PDPT, PD, then the page tables
}

// newLayout places the stack and heap around an image ending at imageEnd.
func newLayout(mem, imageEnd uint64) (Layout, error) {
	if mem < MinMemory || mem > MaxMemory || mem%(2<<20) != 0 {
		return Layout{}, fmt.Errorf("vmm: guest memory %d bytes: must be a multiple of 2 MiB between %d MiB and %d MiB", mem, MinMemory>>20, MaxMemory>>20)
	}
	l := Layout{MemSize: mem, PageTables: mem - pageTableBytes(mem)}
	l.StackTop = l.PageTables
	l.HeapEnd = l.StackTop - stackSize - pageSize // one unmapped guard page
	l.HeapStart = (imageEnd + pageSize - 1) &^ (pageSize - 1)
	if l.HeapStart > l.HeapEnd {
		return Layout{}, fmt.Errorf("vmm: image ends at %#x, past the %#x bytes of guest memory left below the stack (raise --mem)", imageEnd, l.HeapEnd)
	}
	return l, nil
}

// buildPageTables writes identity-mapping page tables with the permission of
// each page taken from perms (one entry per 4 KiB page of RAM).
func buildPageTables(mem *GuestMemory, l Layout, perms []pagePerm) error {
	pml4, pdpt, pd := l.PageTables, l.PageTables+pageSize, l.PageTables+2*pageSize
	const inner = ptePresent | pteWrite | pteUser | pteAccessed // leaves decide the access
	if err := mem.WriteU64(pml4, pdpt|inner); err != nil {
		return err
	}
	if err := mem.WriteU64(pdpt, pd|inner); err != nil {
		return err
	}
	for i, perm := range perms {
		pt := l.PageTables + (3+uint64(i/512))*pageSize
		if i%512 == 0 {
			if err := mem.WriteU64(pd+uint64(i/512)*8, pt|inner); err != nil {
				return err
			}
		}
		if err := mem.WriteU64(pt+uint64(i%512)*8, uint64(i)*pageSize|perm.pte()); err != nil {
			return err
		}
	}
	return nil
}

// systemPerms marks the VMM's fixed pages, the heap, the stack and the page
// tables; image pages are set by the loader.
func systemPerms(l Layout, perms []pagePerm) {
	set := func(lo, hi uint64, p pagePerm) {
		for a := lo; a < hi; a += pageSize {
			perms[a/pageSize] = p
		}
	}
	set(gdtAddr, stubAddr, permSupervisor)
	set(stubAddr, bootInfoAddr, permUserRX)
	set(bootInfoAddr, excStackLow, permUserR)
	set(excStackLow, excStackTop, permUserRW)
	set(l.HeapStart, l.HeapEnd, permUserRW)
	set(l.StackTop-stackSize, l.StackTop, permUserRW)
	set(l.PageTables, l.MemSize, permSupervisor)
}

// writeSystemTables writes the GDT, TSS, IDT and exception stubs.
func writeSystemTables(mem *GuestMemory) error {
	gdt := []uint64{
		0,
		0x00209a0000000000, // 0x08 kernel code (unused: the guest never runs at CPL0)
		0x0000920000000000, // 0x10 kernel data
		0x0020fb0000000000, // 0x18 user code, DPL3, L=1, accessed (the CPU never writes it)
		0x0000f30000000000, // 0x20 user data, DPL3, accessed
	}
	// 0x28: the 64-bit TSS descriptor (two slots), type 0xb (busy).

	lo := uint64(tssLimit) | (tssAddr&0xffffff)<<16 | uint64(0x8b)<<40 | (tssAddr>>24&0xff)<<56
	gdt = append(gdt, lo, tssAddr>>32)
	for i, d := range gdt {
		if err := mem.WriteU64(gdtAddr+uint64(i)*8, d); err != nil {
			return err
		}
	}
	// TSS: RSP0 and IST1 both point at the exception stack, so that even a
	// guest whose own stack is gone gets its exception reported.
	tss, err := mem.Slice(tssAddr, tssLimit+1)
	if err != nil {
		return err
	}
	binary.LittleEndian.PutUint64(tss[4:], excStackTop)
	binary.LittleEndian.PutUint64(tss[0x24:], excStackTop)
	binary.LittleEndian.PutUint16(tss[0x66:], tssIOBitmap)
	tss[tssLimit] = 0xff
	// IDT: vectors 0-31 go to a stub at CPL3 that exits on port 0xe0+v.
	for v := uint64(0); v < 32; v++ {
		h := stubAddr + v*8
		gateLo := h&0xffff | selUserCode<<16 | 1<<32 /* IST1 */ | 0xee<<40 /* P, DPL3, interrupt gate */ | (h>>16&0xffff)<<48
		if err := mem.WriteU64(idtAddr+v*16, gateLo); err != nil {
			return err
		}
		if err := mem.WriteU64(idtAddr+v*16+8, h>>32); err != nil {
			return err
		}
		// out %al, $(0xe0+v); jmp . (never reached: the VMM stops the VM)
		if err := mem.Write(h, []byte{0xe6, byte(portException + v), 0xeb, 0xfe}); err != nil {
			return err
		}
	}
	return nil
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
