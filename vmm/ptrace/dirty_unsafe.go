package ptrace

import (
	"fmt"
	"unsafe"

	"github.com/ftvm/ftvm/vmm/backend"
	"golang.org/x/sys/unix"
)

const (
	pagemapScan         = 0xc0606610 // _IOWR('f', 16, struct pm_scan_arg)
	pmScanWPMatching    = 1 << 0
	pmScanCheckWPAsync  = 1 << 1
	pageIsWritten       = 1 << 1
	scanRegionsPerIoctl = 256
)

// pmScanArg mirrors struct pm_scan_arg (linux/fs.h).
type pmScanArg struct {
	size, flags, start, end, walkEnd, vec, vecLen, maxPages uint64
	categoryInverted, categoryMask, categoryAnyofMask       uint64
	returnMask                                              uint64
}

// pageRegion mirrors struct page_region.
type pageRegion struct{ start, end, categories uint64 }

// scanWritten sets in bitmap the written pages of the guest's writable
// RAM and write-protects them (PAGEMAP_SCAN, PM_SCAN_WP_MATCHING). Sound:
// the kernel reads arg (sizeof(struct pm_scan_arg), given in arg.size) and
// writes at most arg.vecLen page_regions into regions; both live in one
// heap object (dirtyLog.scan), which Go never moves and v keeps reachable,
// so the integer address of regions in arg stays valid. (Regions made by
// make in this function could live on the goroutine's stack, which moves
// when it grows: the kernel then wrote into the old copy, and a scan under
// load reported a few pages of thousands written.)
func (v *vcpu) scanWritten(bitmap []uint64) error {
	if v.dl.scan == nil {
		v.dl.scan = new(pageScan)
	}
	sc := v.dl.scan
	regions := sc.regions[:]
	for _, r := range v.dl.rw {
		for start := r[0]; start < r[1]; {
			sc.arg = pmScanArg{
				size: uint64(unsafe.Sizeof(pmScanArg{})), flags: pmScanWPMatching | pmScanCheckWPAsync,
				start: start, end: r[1],
				vec: uint64(uintptr(unsafe.Pointer(&sc.regions[0]))), vecLen: uint64(len(regions)),
				categoryMask: pageIsWritten, returnMask: pageIsWritten,
			}
			arg := &sc.arg
			n, _, errno := unix.Syscall(unix.SYS_IOCTL, v.dl.pagemap.Fd(), pagemapScan, uintptr(unsafe.Pointer(arg)))
			if errno != 0 {
				return fmt.Errorf("ptrace: PAGEMAP_SCAN of the guest's RAM [%#x, %#x): %w", start, r[1], errno)
			}
			for _, reg := range regions[:n] {
				for p := reg.start / backend.PageSize; p < (reg.end+backend.PageSize-1)/backend.PageSize; p++ {
					bitmap[p/64] |= 1 << (p % 64)
				}
			}
			if arg.walkEnd <= start {
				return fmt.Errorf("ptrace: PAGEMAP_SCAN made no progress at %#x", start)
			}
			start = arg.walkEnd
		}
	}
	return nil
}
