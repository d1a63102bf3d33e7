package kvm

import (
	"fmt"
	"sync"
	"sync/atomic"
	"unsafe"

	"github.com/ftvm/ftvm/replay"
	"github.com/ftvm/ftvm/vmm/backend"
	"golang.org/x/sys/unix"
)

// vcpuFD is one vCPU's file descriptor and its mmapped kvm_run page.
type vcpuFD struct {
	fd   int
	run  *kvmRun
	page []byte
	// tid is the OS thread that runs the vCPU, which kicks signal: set by
	// Do (and the probe) on their locked thread, else by the first run.
	tid atomic.Int32
	// kickPending makes a kick sticky: one that arrives while the vCPU is
	// outside KVM_RUN is seen before the next entry.
	kickPending atomic.Bool
	// syncRegs: KVM_CAP_SYNC_REGS is on, so after the first run the general
	// registers live in the kvm_run page (two ioctls fewer per exit, which
	// halves the exit cost here). Before the first run, ioctls are used.
	syncRegs bool
	ran      bool
	// mu serialises kick against close: a kick may come from any goroutine
	// (a context's AfterFunc) even as the VM is being torn down.
	mu     sync.Mutex
	closed bool
}

// Offsets in struct kvm_run past the exit union (linux/kvm.h).
const (
	kvmRunValidRegs = 288
	kvmRunDirtyRegs = 296
	kvmRunSyncRegs  = 304
	kvmSyncX86Regs  = 1
)

func (v *vcpuFD) syncArea() *replay.Regs {
	// Sound: the kvm_run mapping is larger than 304+144 bytes (checked in
	// newVcpuFD) and KVM keeps struct kvm_regs there while syncing.
	return (*replay.Regs)(unsafe.Pointer(&v.page[kvmRunSyncRegs]))
}

func (v *vcpuFD) flagsAt(off int) *uint64 {
	// Sound: off is one of the u64 fields of kvm_run above.
	return (*uint64)(unsafe.Pointer(&v.page[off]))
}

func newVcpuFD(fd int, mmapSize int) (*vcpuFD, error) {
	page, err := unix.Mmap(fd, 0, mmapSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return nil, fmt.Errorf("kvm: mmap kvm_run: %w", err)
	}
	if len(page) < kvmRunSyncRegs+144 {
		unix.Munmap(page)
		return nil, fmt.Errorf("kvm: kvm_run mapping is only %d bytes", len(page))
	}
	// Sound: the mapping is at least one page, larger than kvmRun, stays
	// mapped until close, and the kernel defines its layout.
	return &vcpuFD{fd: fd, page: page, run: (*kvmRun)(unsafe.Pointer(&page[0]))}, nil
}

func (v *vcpuFD) close() {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.closed = true
	if v.page != nil {
		unix.Munmap(v.page)
		v.page, v.run = nil, nil
	}
	unix.Close(v.fd)
}

// kick makes the current or next run return ExitKick. Safe from any goroutine.
func (v *vcpuFD) kick() {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.closed {
		return
	}
	v.kickPending.Store(true)
	// Sound: run points into the kvm_run mapping, alive while the vCPU is;
	// KVM reads immediate_exit on entry, so a plain store is what it sees.
	atomic.StoreUint32((*uint32)(unsafe.Pointer(v.run)), 0x100) // immediate_exit=1, request_interrupt_window=0
	if tid := v.tid.Load(); tid != 0 {
		// SIGURG is the Go runtime's preemption signal: harmless to the
		// process, and it makes a KVM_RUN in progress return EINTR.
		unix.Tgkill(unix.Getpid(), int(tid), unix.SIGURG)
	}
}

// onThisThread makes kicks signal the calling thread, which must be
// locked: the one that will issue KVM_RUN.
func (v *vcpuFD) onThisThread() { v.tid.Store(int32(unix.Gettid())) }

// runOnce enters the guest until it exits for a reason the VMM must see.
// Must be called on the vCPU's locked OS thread (inside Do, which says
// which thread that is). EINTR without a pending kick (the Go runtime's own
// signals) re-enters the guest.
func (v *vcpuFD) runOnce() (backend.Exit, error) {
	if v.tid.Load() == 0 {
		v.onThisThread()
	}
	for {
		v.run.immediateExit = 0
		if v.kickPending.Swap(false) {
			return backend.Exit{Kind: backend.ExitKick}, nil
		}
		if v.syncRegs {
			*v.flagsAt(kvmRunValidRegs) = kvmSyncX86Regs
		}
		_, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(v.fd), kvmRunIoctl, 0)
		v.ran = true
		if errno == unix.EINTR || errno == unix.EAGAIN {
			continue // a kick is picked up at the top of the loop
		}
		if errno != 0 {
			return backend.Exit{}, fmt.Errorf("kvm: KVM_RUN: %w", errno)
		}
		return v.decodeExit(), nil
	}
}

func (v *vcpuFD) decodeExit() backend.Exit {
	r := v.run
	switch r.exitReason {
	case kvmExitIO:
		// Sound: the io member is the active union member for KVM_EXIT_IO.
		io := (*kvmRunIO)(unsafe.Pointer(&r.union[0]))
		e := backend.Exit{Port: io.port, Size: io.size}
		if io.direction == kvmExitIODirOut {
			e.Kind = backend.ExitIOOut
			if off := int(io.dataOffset); off >= 0 && off+int(io.size) <= len(v.page) && io.size <= 4 {
				var d [4]byte
				copy(d[:], v.page[off:off+int(io.size)])
				e.Data = uint32(d[0]) | uint32(d[1])<<8 | uint32(d[2])<<16 | uint32(d[3])<<24
			}
		} else {
			e.Kind = backend.ExitIOIn
		}
		return e
	case kvmExitMMIO:
		// Sound: mmio is the active union member for KVM_EXIT_MMIO.
		m := (*kvmRunMMIO)(unsafe.Pointer(&r.union[0]))
		return backend.Exit{Kind: backend.ExitMMIO, Addr: m.physAddr, Write: m.isWrite != 0, Size: uint8(m.len)}
	case kvmExitShutdown:
		return backend.Exit{Kind: backend.ExitShutdown}
	case kvmExitHLT:
		return backend.Exit{Kind: backend.ExitHLT}
	case kvmExitIntr:
		return backend.Exit{Kind: backend.ExitKick}
	case kvmExitFailEntry:
		return backend.Exit{Kind: backend.ExitFailure, Detail: fmt.Sprintf("KVM could not enter the guest (hardware entry failure reason %#x)", *(*uint64)(unsafe.Pointer(&r.union[0])))}
	case kvmExitInternalError:
		return backend.Exit{Kind: backend.ExitFailure, Detail: fmt.Sprintf("KVM internal error, suberror %d", *(*uint32)(unsafe.Pointer(&r.union[0])))}
	default:
		return backend.Exit{Kind: backend.ExitFailure, Detail: fmt.Sprintf("unexpected KVM exit reason %d", r.exitReason)}
	}
}

// hostAddr is the userspace address of guest RAM, for KVM_SET_USER_MEMORY_REGION.
func hostAddr(b []byte) uint64 {
	// Sound: b is an mmap'ed region that outlives the VM's memslot.
	return uint64(uintptr(unsafe.Pointer(&b[0])))
}

const (
	kvmGetRegs = 0x8090AE81 // _IOR(KVMIO, 0x81, struct kvm_regs)
	kvmSetRegs = 0x4090AE82 // _IOW(KVMIO, 0x82, struct kvm_regs)
)

// getRegs reads the general registers into r. replay.Regs has the layout of
// struct kvm_regs (18 uint64 in the same order), checked in a test.
func (v *vcpuFD) getRegs(r *replay.Regs) error {
	if v.syncRegs && v.ran {
		*r = *v.syncArea()
		return nil
	}
	// Sound: r points at 144 bytes the kernel fills; it stays alive for the call.
	if _, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(v.fd), kvmGetRegs, uintptr(unsafe.Pointer(r))); e != 0 {
		return fmt.Errorf("kvm: KVM_GET_REGS: %w", e)
	}
	return nil
}

func (v *vcpuFD) setRegs(r *replay.Regs) error {
	if v.syncRegs && v.ran {
		*v.syncArea() = *r
		*v.flagsAt(kvmRunDirtyRegs) |= kvmSyncX86Regs
		return nil
	}
	// Sound: as in getRegs; the kernel only reads.
	if _, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(v.fd), kvmSetRegs, uintptr(unsafe.Pointer(r))); e != 0 {
		return fmt.Errorf("kvm: KVM_SET_REGS: %w", e)
	}
	return nil
}
