package ptrace

import (
	"encoding/binary"
	"fmt"
	"os"

	"github.com/ftvm/ftvm/vmm/backend"
	"golang.org/x/sys/unix"
)

// Dirty-page tracking of the guest's own writes. Soft-dirty bits would be
// the simple way, but these hosts' kernels lack CONFIG_MEM_SOFT_DIRTY, and
// reading /proc/PID/pagemap then writing clear_refs is not atomic against a
// running guest anyway. Instead the guest process gets a userfaultfd in
// asynchronous write-protect mode (UFFD_FEATURE_WP_ASYNC, Linux 6.7) over
// its writable RAM, made before the seccomp filter shuts system calls off
// and kept alive by a copy in the VMM (pidfd_getfd), since the stub then
// closes every descriptor. The tracer never reads it: the kernel resolves
// a write to a protected page by itself, marking it written. PAGEMAP_SCAN
// with PM_SCAN_WP_MATCHING on /proc/PID/pagemap then reports the written
// pages and write-protects them again in one step, page table lock held.

const (
	uffdUserModeOnly        = 1
	uffdAPI                 = 0xaa
	uffdioAPI               = 0xc018aa3f // _IOWR(0xaa, 0x3f, struct uffdio_api)
	uffdioRegister          = 0xc020aa00 // _IOWR(0xaa, 0x00, struct uffdio_register)
	uffdRegisterModeWP      = 2
	uffdFeatureWPShmem      = 1 << 12 // UFFD_FEATURE_WP_HUGETLBFS_SHMEM
	uffdFeatureWPUnpopulate = 1 << 13 // UFFD_FEATURE_WP_UNPOPULATED
	uffdFeatureWPAsync      = 1 << 15 // UFFD_FEATURE_WP_ASYNC

	// Where the stub's scratch page holds the structures for the ioctls.
	uffdAPIArg = stubData + 512
	uffdRegArg = stubData + 576
)

// dirtyLog is the ptrace backend's tracking state, set up with the guest.
type dirtyLog struct {
	// why is nil when tracking is possible, else what failed.
	why     error
	uffd    *os.File // the VMM's copy of the guest's userfaultfd
	pagemap *os.File // /proc/PID/pagemap: holds the guest's mm
	rw      [][2]uint64
	started bool
	// scan holds PAGEMAP_SCAN's argument and the regions the kernel
	// writes, on the heap with the vcpu: the argument holds the regions'
	// address as an integer, and an object on a goroutine's stack moves
	// when the stack grows (at a call, between taking the address and the
	// system call), after which the kernel would write the written pages
	// into the stack's old copy and the scan would report none of them.
	scan *pageScan
}

type pageScan struct {
	arg     pmScanArg
	regions [scanRegionsPerIoctl]pageRegion
}

// setupDirtyLog gives the guest process an asynchronous write-protect
// userfaultfd over its writable pages. Must be called on the tracer thread
// while the stub may still make system calls. A failure is kept, not
// returned: the guest runs without tracking, and StartDirtyLog says why.
func (v *vcpu) setupDirtyLog(pages []backend.Perm) {
	v.dl.why = v.trySetupDirtyLog(pages)
	if v.dl.why != nil {
		v.dl.close()
	}
}

func (v *vcpu) trySetupDirtyLog(pages []backend.Perm) error {
	for i := 0; i < len(pages); {
		j := i
		for j < len(pages) && pages[j] == pages[i] {
			j++
		}
		if pages[i] == backend.PermReadWrite {
			v.dl.rw = append(v.dl.rw, [2]uint64{uint64(i) * backend.PageSize, uint64(j) * backend.PageSize})
		}
		i = j
	}
	fd, err := v.inject(unix.SYS_USERFAULTFD, unix.O_CLOEXEC|uffdUserModeOnly)
	if err != nil {
		return fmt.Errorf("ptrace: userfaultfd in the guest process: %w", err)
	}
	var api [24]byte
	binary.LittleEndian.PutUint64(api[0:], uffdAPI)
	binary.LittleEndian.PutUint64(api[8:], uffdFeatureWPAsync|uffdFeatureWPShmem|uffdFeatureWPUnpopulate)
	if err := v.poke(uffdAPIArg, api[:]); err != nil {
		return err
	}
	if _, err := v.inject(unix.SYS_IOCTL, fd, uffdioAPI, uffdAPIArg); err != nil {
		return fmt.Errorf("ptrace: UFFDIO_API with asynchronous write protection of shared memory (Linux 6.7 or later): %w", err)
	}
	for _, r := range v.dl.rw {
		var reg [32]byte
		binary.LittleEndian.PutUint64(reg[0:], r[0])
		binary.LittleEndian.PutUint64(reg[8:], r[1]-r[0])
		binary.LittleEndian.PutUint64(reg[16:], uffdRegisterModeWP)
		if err := v.poke(uffdRegArg, reg[:]); err != nil {
			return err
		}
		if _, err := v.inject(unix.SYS_IOCTL, fd, uffdioRegister, uffdRegArg); err != nil {
			return fmt.Errorf("ptrace: UFFDIO_REGISTER write-protect mode on [%#x, %#x): %w", r[0], r[1], err)
		}
	}
	pidfd, err := unix.PidfdOpen(v.pid, 0)
	if err != nil {
		return fmt.Errorf("ptrace: pidfd_open of the guest process: %w", err)
	}
	defer unix.Close(pidfd)
	mine, err := unix.PidfdGetfd(pidfd, int(fd), 0)
	if err != nil {
		return fmt.Errorf("ptrace: pidfd_getfd of the guest's userfaultfd: %w", err)
	}
	v.dl.uffd = os.NewFile(uintptr(mine), "guest-userfaultfd")
	if v.dl.pagemap, err = os.Open(fmt.Sprintf("/proc/%d/pagemap", v.pid)); err != nil {
		return fmt.Errorf("ptrace: opening the guest's pagemap: %w", err)
	}
	return nil
}

func (d *dirtyLog) close() {
	if d.uffd != nil {
		d.uffd.Close()
		d.uffd = nil
	}
	if d.pagemap != nil {
		d.pagemap.Close()
		d.pagemap = nil
	}
}

// StartDirtyLog write-protects the guest's writable RAM: from here on,
// DirtyPages reports the pages it writes.
func (v *vcpu) StartDirtyLog() error {
	if v.dl.why != nil {
		return fmt.Errorf("%w (%w)", v.dl.why, backend.ErrNoDirtyLog)
	}
	scratch := make([]uint64, (len(v.ram)/backend.PageSize+63)/64)
	if err := v.scanWritten(scratch); err != nil {
		return fmt.Errorf("%w (%w)", err, backend.ErrNoDirtyLog)
	}
	v.dl.started = true
	return nil
}

// DirtyPages reports the pages of writable RAM the guest wrote since the
// previous call and write-protects them again.
func (v *vcpu) DirtyPages(bitmap []uint64) error {
	if !v.dl.started {
		return fmt.Errorf("ptrace: DirtyPages before StartDirtyLog")
	}
	if len(bitmap)*64 < len(v.ram)/backend.PageSize {
		return fmt.Errorf("ptrace: a dirty bitmap of %d words for %d pages", len(bitmap), len(v.ram)/backend.PageSize)
	}
	return v.scanWritten(bitmap)
}
