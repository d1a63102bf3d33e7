package kvm

import (
	"fmt"
	"unsafe"

	"github.com/bobuhiro11/gokvm/kvm"
	"github.com/ftvm/ftvm/vmm/backend"
	"golang.org/x/sys/unix"
)

// KVM's dirty log on the RAM memslot: KVM write-protects (or, with PML,
// logs) the slot's pages and KVM_GET_DIRTY_LOG hands back and clears the
// bitmap of pages written since the previous call, write-protecting them
// again before it returns, so a write that races with the call is in this
// bitmap or the next one. KVM_CLEAR_DIRTY_LOG (manual protect) would split
// the get from the re-protect; one get-and-clear per round needs neither.

const (
	kvmMemLogDirtyPages = 1          // KVM_MEM_LOG_DIRTY_PAGES
	kvmGetDirtyLog      = 0x4010AE42 // _IOW(KVMIO, 0x42, struct kvm_dirty_log)
)

// kvmDirtyLog mirrors struct kvm_dirty_log.
type kvmDirtyLog struct {
	slot   uint32
	_      uint32
	bitmap uint64 // a user pointer
}

// StartDirtyLog sets KVM_MEM_LOG_DIRTY_PAGES on the RAM memslot.
func (v *vcpu) StartDirtyLog() error {
	region := kvm.UserspaceMemoryRegion{Slot: 0, Flags: kvmMemLogDirtyPages, GuestPhysAddr: 0, MemorySize: uint64(len(v.ram)), UserspaceAddr: hostAddr(v.ram)}
	if err := kvm.SetUserMemoryRegion(uintptr(v.vmFD), &region); err != nil {
		return fmt.Errorf("kvm: KVM_SET_USER_MEMORY_REGION with KVM_MEM_LOG_DIRTY_PAGES: %w (%w)", err, backend.ErrNoDirtyLog)
	}
	v.dirty = make([]uint64, (len(v.ram)/backend.PageSize+63)/64)
	return nil
}

// DirtyPages reads and clears the RAM memslot's dirty log (KVM_GET_DIRTY_LOG)
// into bitmap. Sound: the log is v.dirty, one bit per page of the slot
// rounded up to 64 bits, which is what KVM writes; the struct's pointer to
// it is an integer, but v.dirty stays reachable through v and Go's heap
// does not move objects.
func (v *vcpu) DirtyPages(bitmap []uint64) error {
	if v.dirty == nil {
		return fmt.Errorf("kvm: DirtyPages before StartDirtyLog")
	}
	if len(bitmap) < len(v.dirty) {
		return fmt.Errorf("kvm: a dirty bitmap of %d words for %d", len(bitmap), len(v.dirty))
	}
	log := kvmDirtyLog{slot: 0, bitmap: uint64(uintptr(unsafe.Pointer(&v.dirty[0])))}
	if _, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(v.vmFD), kvmGetDirtyLog, uintptr(unsafe.Pointer(&log))); errno != 0 {
		return fmt.Errorf("kvm: KVM_GET_DIRTY_LOG: %w", errno)
	}
	for i, w := range v.dirty {
		bitmap[i] |= w
	}
	return nil
}
