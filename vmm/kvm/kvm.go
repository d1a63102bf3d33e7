// Package kvm runs ftvm guests on Linux KVM: one VM with one memslot over
// the VMM's guest RAM, the guest's own long-mode tables (built by package
// vmm) and one vCPU at CPL3.
package kvm

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"runtime"
	"time"

	"github.com/bobuhiro11/gokvm/kvm"
	"github.com/ftvm/ftvm/replay"
	"github.com/ftvm/ftvm/vmm/backend"
	"golang.org/x/sys/unix"
)

// Backend is the KVM backend.
type Backend struct{}

// Name is "kvm".
func (Backend) Name() string { return "kvm" }

// Usable opens /dev/kvm and checks its API version.
func (Backend) Usable() error {
	fd, err := unix.Open("/dev/kvm", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		why := ""
		if errors.Is(err, unix.ENOENT) {
			why = " (no KVM on this host: is it a VM without nested virtualization? the ptrace backend runs anywhere)"
		}
		return fmt.Errorf("kvm: open /dev/kvm: %w%s", err, why)
	}
	defer unix.Close(fd)
	api, err := kvm.GetAPIVersion(uintptr(fd))
	if err != nil {
		return fmt.Errorf("kvm: /dev/kvm does not answer KVM_GET_API_VERSION: %w", err)
	}
	if api != 12 {
		return fmt.Errorf("kvm: KVM API version %d (want 12)", api)
	}
	return nil
}

// vcpu is one VM with its single vCPU.
type vcpu struct {
	kvmFD, vmFD int
	fd          *vcpuFD
	ram         []byte
	sys         backend.SystemTables
	// ripPastOut: this host's KVM leaves RIP past an out at KVM_EXIT_IO
	// (kvm_pvm); upstream KVM leaves it at the out and skips the out on
	// the next KVM_RUN unless userspace moved RIP (complete_fast_pio_out).
	// Measured once per VM, on the VM itself, before the guest starts.
	ripPastOut bool
	trType     uint8 // TR's descriptor type, chosen by create
	// moved: the registers Run reported (kept in view) differ from the
	// vCPU's (RIP was advanced past an out), so they must be written
	// before resuming. held: Run reported a fault with the registers of
	// the faulting instruction (kept in view) while the vCPU sits in an
	// exception stub; Regs reports view until SetRegs.
	moved, held bool
	view        replay.Regs
	// dirty receives KVM_GET_DIRTY_LOG's bitmap once StartDirtyLog ran.
	dirty []uint64
}

// NewVCPU creates the VM, maps RAM into it and prepares the vCPU.
func (Backend) NewVCPU(spec *backend.Spec) (backend.VCPU, error) {
	v := &vcpu{kvmFD: -1, vmFD: -1, ram: spec.RAM, sys: spec.System}
	if err := v.create(spec); err != nil {
		v.Close()
		return nil, err
	}
	return v, nil
}

func (v *vcpu) create(spec *backend.Spec) error {
	var err error
	if v.kvmFD, err = unix.Open("/dev/kvm", unix.O_RDWR|unix.O_CLOEXEC, 0); err != nil {
		return fmt.Errorf("kvm: open /dev/kvm: %w (is KVM available and are you allowed to use it? try ftvm doctor, or --backend ptrace)", err)
	}
	vmfd, err := kvm.CreateVM(uintptr(v.kvmFD))
	if err != nil {
		return fmt.Errorf("kvm: KVM_CREATE_VM: %w", err)
	}
	v.vmFD = int(vmfd)
	region := kvm.UserspaceMemoryRegion{Slot: 0, GuestPhysAddr: 0, MemorySize: uint64(len(spec.RAM)), UserspaceAddr: hostAddr(spec.RAM)}
	if err := kvm.SetUserMemoryRegion(uintptr(v.vmFD), &region); err != nil {
		return fmt.Errorf("kvm: KVM_SET_USER_MEMORY_REGION (RAM): %w", err)
	}
	// The VMM's tables, outside guest RAM (ABI v2): a memslot of their own.
	priv := spec.System.Private
	if len(priv) == 0 || spec.System.PrivateGPA < uint64(len(spec.RAM)) {
		return fmt.Errorf("kvm: no private region for the guest's tables above RAM")
	}
	region = kvm.UserspaceMemoryRegion{Slot: 1, GuestPhysAddr: spec.System.PrivateGPA, MemorySize: uint64(len(priv)), UserspaceAddr: hostAddr(priv)}
	if err := kvm.SetUserMemoryRegion(uintptr(v.vmFD), &region); err != nil {
		return fmt.Errorf("kvm: KVM_SET_USER_MEMORY_REGION (tables): %w", err)
	}
	vcpufd, err := kvm.CreateVCPU(uintptr(v.vmFD), 0)
	if err != nil {
		return fmt.Errorf("kvm: KVM_CREATE_VCPU: %w", err)
	}
	size, err := kvm.GetVCPUMMmapSize(uintptr(v.kvmFD))
	if err != nil {
		unix.Close(int(vcpufd))
		return fmt.Errorf("kvm: KVM_GET_VCPU_MMAP_SIZE: %w", err)
	}
	if v.fd, err = newVcpuFD(int(vcpufd), int(size)); err != nil {
		unix.Close(int(vcpufd))
		return err
	}
	if caps, err := kvm.CheckExtension(uintptr(v.kvmFD), kvmCapSyncRegs); err == nil && caps&kvmSyncX86Regs != 0 {
		v.fd.syncRegs = true
	}
	// TR's type: 9 (available 64-bit TSS) is what QEMU's emulation of SVM
	// needs to honour the TSS I/O bitmap (it checks for exactly 9); VMX
	// refuses to enter a guest whose TR is not 11 (busy). Try 9, then 11.
	for _, typ := range []uint8{9, 11} {
		v.trType = typ
		if err := v.setupSregs(spec); err != nil {
			return err
		}
		err := v.probeRIPSemantics()
		if err == nil {
			break
		}
		if !errors.Is(err, errEntryRefused) || typ == 11 {
			return err
		}
	}
	return v.setRegs(&spec.Entry)
}

func (v *vcpu) setupSregs(spec *backend.Spec) error {
	if err := kvm.SetCPUID2(uintptr(v.fd.fd), kvmCPUID(spec.CPUID)); err != nil {
		return fmt.Errorf("kvm: KVM_SET_CPUID2: %w", err)
	}
	s, err := kvm.GetSregs(uintptr(v.fd.fd))
	if err != nil {
		return fmt.Errorf("kvm: KVM_GET_SREGS: %w", err)
	}
	t := spec.System
	// CR0: PG, AM, WP, NE, ET, MP, PE. AM stays set: Linux sets it for
	// every process, so a guest that sets RFLAGS.AC gets #AC for a
	// misaligned access under ptrace, and must on KVM too.
	s.CR0 = 0x80050033
	s.CR3 = t.PageTables
	s.CR4 = 1<<5 | 1<<9 | 1<<10 // PAE, OSFXSR, OSXMMEXCPT
	// EFER: LME, LMA, NXE; not SCE, so syscall raises #UD, which the
	// backend reports as the system call it is (as ptrace's seccomp does).
	s.EFER = 1<<8 | 1<<10 | 1<<11
	s.GDT = kvm.Descriptor{Base: t.GDT, Limit: t.GDTLimit}
	s.IDT = kvm.Descriptor{Base: t.IDT, Limit: t.IDTLimit}
	code := kvm.Segment{Selector: t.CodeSel, Limit: 0xfffff, Typ: 0xb, Present: 1, DPL: 3, S: 1, L: 1, G: 1}
	data := kvm.Segment{Selector: t.DataSel, Limit: 0xfffff, Typ: 0x3, Present: 1, DPL: 3, S: 1, DB: 1, G: 1}
	s.CS, s.DS, s.ES, s.FS, s.GS, s.SS = code, data, data, data, data, data
	s.LDT = kvm.Segment{Unusable: 1}
	s.TR = kvm.Segment{Base: t.TSS, Limit: t.TSSLimit, Selector: t.TSSSel, Typ: v.trType, Present: 1}
	if err := kvm.SetSregs(uintptr(v.fd.fd), s); err != nil {
		return fmt.Errorf("kvm: KVM_SET_SREGS: %w", err)
	}
	return nil
}

// probeRIPSemantics runs the vCPU once at vector 0's exception stub (out to
// ExceptionPort; jmp .) and sees where KVM leaves RIP. The stub's out is
// preceded by the IDT's last gate (no out), so RIP at the stub and RIP past
// its out cannot be confused; per exit the bytes alone could not tell:
// after `out; out` to one port, RIP past the first is RIP at the second. The caller then sets the entry registers: moving
// RIP cancels upstream KVM's pending skip of the out.
func (v *vcpu) probeRIPSemantics() error {
	stub := v.sys.ExceptionStubs
	r := replay.Regs{RIP: stub, RSP: v.sys.ExceptionStackTop, RFLAGS: 0x202}
	if err := v.setRegs(&r); err != nil {
		return err
	}
	// A KVM that does not let the out reach us (no I/O bitmap honoured)
	// would loop on #GP in the stubs for ever: give it a few seconds.
	runtime.LockOSThread()
	v.fd.onThisThread()
	timer := time.AfterFunc(5*time.Second, v.fd.kick)
	e, err := v.fd.runOnce()
	timer.Stop()
	v.fd.tid.Store(0) // the next run's thread says who it is
	runtime.UnlockOSThread()
	if err != nil {
		return err
	}
	switch e.Kind {
	case backend.ExitFailure:
		return fmt.Errorf("%w: %s", errEntryRefused, e.Detail)
	case backend.ExitKick:
		return fmt.Errorf("kvm: the guest's out at IOPL 0 never reached the VMM (the TSS I/O bitmap is not honoured here; TR type %d)", v.trType)
	}
	if e.Kind != backend.ExitIOOut || e.Port != v.sys.ExceptionPort {
		return fmt.Errorf("kvm: probing the out exit: got %v (%s), want an out to port %#x", e, e.Detail, v.sys.ExceptionPort)
	}
	if err := v.fd.getRegs(&r); err != nil {
		return err
	}
	switch r.RIP {
	case stub:
		v.ripPastOut = false
	case stub + 2:
		v.ripPastOut = true
	default:
		return fmt.Errorf("kvm: probing the out exit: RIP %#x is neither at the out (%#x) nor past it", r.RIP, stub)
	}
	return nil
}

// errEntryRefused: KVM could not enter the guest with these registers.
var errEntryRefused = errors.New("kvm: KVM refused to enter the guest")

func (v *vcpu) Run(regs *replay.Regs, set bool) (backend.Exit, error) {
	if set || v.moved {
		if !set {
			*regs = v.view
		}
		if err := v.setRegs(regs); err != nil {
			return backend.Exit{}, err
		}
		v.moved, v.held = false, false
	}
	e, err := v.fd.runOnce()
	if err != nil {
		return e, err
	}
	if err := v.getRegs(regs); err != nil {
		return e, err
	}
	if e.Kind != backend.ExitIOOut {
		return e, nil
	}
	// Bring RIP past the out, whatever this KVM left.
	if v.ripPastOut {
		e.InsnLen = v.insnLenBefore(regs.RIP, e.Port)
	} else {
		n := v.insnLenAt(regs.RIP, uint16(regs.RDX))
		if n == 0 {
			return backend.Exit{Kind: backend.ExitFailure, Detail: fmt.Sprintf("KVM reported an out to port %#x at rip %#x, where there is no out", e.Port, regs.RIP)}, nil
		}
		e.InsnLen = n
		regs.RIP += uint64(n)
		v.moved = true
	}
	if x, ok := v.exception(e, regs); ok {
		e = v.syscall(x, regs)
		v.moved, v.held, v.view = false, true, *regs
		return e, nil
	}
	if v.moved {
		v.view = *regs
	}
	return e, nil
}

// code returns up to 15 bytes of guest code at virtual address va: in
// RAM (identity mapped) or in the private region (the exception stubs).
func (v *vcpu) code(va uint64) []byte {
	if va < uint64(len(v.ram)) {
		return v.ram[va:min(va+15, uint64(len(v.ram)))]
	}
	priv, base := v.sys.Private, v.sys.PrivateVA
	if va >= base && va-base < uint64(len(priv)) {
		off := va - base
		return priv[off:min(off+15, uint64(len(priv)))]
	}
	return nil
}

// insnLenAt decodes the out at rip.
func (v *vcpu) insnLenAt(rip uint64, dx uint16) uint8 {
	if _, _, out, n, ok := backend.IOInsn(v.code(rip), dx); ok && out {
		return n
	}
	return 0
}

// insnLenBefore guesses the length of the out that ends at rip (for
// reports only): the two-byte imm8 form is all the ABI uses.
func (v *vcpu) insnLenBefore(rip uint64, port uint16) uint8 {
	if c := v.code(rip - 2); rip >= 2 && len(c) >= 2 && c[0]&0xfe == 0xe6 && uint16(c[1]) == port {
		return 2
	}
	return 1
}

// exception turns an out from vector v's stub into the exception it
// reports: the CPU pushed [error code,] RIP, CS, RFLAGS, RSP, SS on the IST
// stack. An out to the stub port from anywhere else stays an out.
func (v *vcpu) exception(e backend.Exit, regs *replay.Regs) (backend.Exit, bool) {
	t := v.sys
	if e.Port < t.ExceptionPort || e.Port >= t.ExceptionPort+32 {
		return e, false
	}
	vec := int(e.Port - t.ExceptionPort)
	if regs.RIP != t.ExceptionStubs+uint64(vec)*8+2 {
		return e, false
	}
	sp := regs.RSP
	x := backend.Exit{Kind: backend.ExitException, Vector: vec}
	if backend.VectorHasErrorCode(vec) {
		code, ok := v.readU64(sp)
		if !ok {
			return e, false
		}
		x.ErrorCode, x.HasErrorCode = code, true
		sp += 8
	}
	var frame [4]uint64 // RIP, CS, RFLAGS, RSP
	for i := range frame {
		w, ok := v.readU64(sp + uint64(i)*8)
		if !ok {
			return e, false
		}
		frame[i] = w
	}
	if vec == 14 {
		if s, err := kvm.GetSregs(uintptr(v.fd.fd)); err == nil {
			x.Addr = s.CR2
		}
	}
	regs.RIP, regs.RFLAGS, regs.RSP = frame[0], frame[2]&^backend.HiddenFlags, frame[3]
	return x, true
}

// syscall turns the exception a system call instruction raises here into
// the exit ptrace's seccomp gives: syscall (#UD: EFER.SCE is clear) and
// int $0x80 (#GP: no gate 0x80) are reported as ExitSyscall with RIP past
// the instruction and, for syscall, RCX and R11 as the instruction sets
// them (the number is EAX, as Linux reads it).
func (v *vcpu) syscall(e backend.Exit, regs *replay.Regs) backend.Exit {
	code := v.code(regs.RIP)
	if len(code) > 2 {
		code = code[:2]
	}
	switch {
	case e.Vector == 6 && string(code) == "\x0f\x05":
		regs.RIP += 2
		regs.RCX, regs.R11 = regs.RIP, regs.RFLAGS
	case e.Vector == 13 && e.ErrorCode == 0x80<<3|2 && string(code) == "\xcd\x80":
		regs.RIP += 2
	default:
		return e
	}
	return backend.Exit{Kind: backend.ExitSyscall, Code: uint64(int32(uint32(regs.RAX)))}
}

// readU64 reads the private region at guest-virtual addr (the exception
// stack lives there).
func (v *vcpu) readU64(addr uint64) (uint64, bool) {
	priv, base := v.sys.Private, v.sys.PrivateVA
	if addr < base || addr-base > uint64(len(priv))-8 {
		return 0, false
	}
	return binary.LittleEndian.Uint64(priv[addr-base:]), true
}

func (v *vcpu) getRegs(r *replay.Regs) error {
	if err := v.fd.getRegs(r); err != nil {
		return err
	}
	r.RFLAGS &^= backend.HiddenFlags
	return nil
}

func (v *vcpu) setRegs(r *replay.Regs) error {
	w := *r
	w.RFLAGS &^= backend.HiddenFlags // IOPL 0: the TSS I/O bitmap lets out exit
	return v.fd.setRegs(&w)
}

func (v *vcpu) Regs(r *replay.Regs) error {
	if v.moved || v.held {
		*r = v.view
		return nil
	}
	return v.getRegs(r)
}

func (v *vcpu) SetRegs(r *replay.Regs) error {
	v.moved, v.held = false, false
	return v.setRegs(r)
}

// Do runs f on the calling thread, locked to it: KVM_RUN may be issued
// from any thread, as long as one run loop stays on one.
func (v *vcpu) Do(f func()) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	if v.fd != nil {
		// Kicks signal this thread while f runs: the one that created the
		// vCPU (and ran the probe) may be another, or gone.
		prev := v.fd.tid.Load()
		v.fd.onThisThread()
		defer v.fd.tid.Store(prev)
	}
	f()
}

func (v *vcpu) Kick() {
	if v.fd != nil {
		v.fd.kick()
	}
}

func (v *vcpu) Close() error {
	if v.fd != nil {
		v.fd.close()
		v.fd = nil
	}
	if v.vmFD >= 0 {
		unix.Close(v.vmFD)
		v.vmFD = -1
	}
	if v.kvmFD >= 0 {
		unix.Close(v.kvmFD)
		v.kvmFD = -1
	}
	return nil
}

// kvmCPUID converts the fixed table for KVM_SET_CPUID2.
func kvmCPUID(t []backend.CPUIDEntry) *kvm.CPUID {
	c := &kvm.CPUID{Nent: uint32(len(t)), Entries: make([]kvm.CPUIDEntry2, len(t))}
	for i, e := range t {
		flags := uint32(0)
		if e.Function == 7 {
			flags = 1 // KVM_CPUID_FLAG_SIGNIFCANT_INDEX
		}
		c.Entries[i] = kvm.CPUIDEntry2{Function: e.Function, Index: e.Index, Flags: flags, Eax: e.EAX, Ebx: e.EBX, Ecx: e.ECX, Edx: e.EDX}
	}
	return c
}

// Doctor reports KVM's facts on this host.
func (b Backend) Doctor() []backend.Check {
	var checks []backend.Check
	add := func(name string, ok bool, format string, args ...any) {
		checks = append(checks, backend.Check{Name: name, OK: ok, Detail: fmt.Sprintf(format, args...)})
	}
	fd, err := unix.Open("/dev/kvm", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		add("/dev/kvm", false, "%v", b.Usable())
		return checks
	}
	defer unix.Close(fd)
	add("/dev/kvm", true, "opened read-write")
	api, err := kvm.GetAPIVersion(uintptr(fd))
	add("KVM API version", err == nil && api == 12, "%d (want 12)", api)
	sync, _ := kvm.CheckExtension(uintptr(fd), kvmCapSyncRegs)
	add("KVM_CAP_SYNC_REGS", true, "%#x (used when it has the general registers: two ioctls fewer per exit)", sync)
	mod := "unknown"
	for _, m := range []string{"kvm_pvm", "kvm_intel", "kvm_amd"} {
		if _, err := os.Stat("/sys/module/" + m); err == nil {
			mod = m
		}
	}
	add("KVM module", true, "%s", mod)
	return checks
}
