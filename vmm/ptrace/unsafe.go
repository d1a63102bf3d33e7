package ptrace

import (
	"fmt"
	"unsafe"

	"golang.org/x/sys/unix"
)

// siginfo reads the siginfo of the signal the guest process is stopped
// with. Sound: si is 128 bytes, the size of siginfo_t, which is all the
// kernel writes; the pointer is converted in the call expression, so the
// buffer stays alive and in place for the system call.
func (v *vcpu) siginfo(si *[128]byte) error {
	_, _, errno := unix.Syscall6(unix.SYS_PTRACE, ptraceGetSiginfo, uintptr(v.pid), 0, uintptr(unsafe.Pointer(si)), 0, 0)
	if errno != 0 {
		return fmt.Errorf("ptrace: PTRACE_GETSIGINFO: %w", errno)
	}
	return nil
}

// getcpu returns the CPU the calling thread runs on. Sound: cpu is a
// local whose address is converted in the call expression; the kernel
// writes one unsigned int there.
func getcpu() (int, error) {
	var cpu uint32
	if _, _, errno := unix.RawSyscall(unix.SYS_GETCPU, uintptr(unsafe.Pointer(&cpu)), 0, 0); errno != 0 {
		return 0, errno
	}
	return int(cpu), nil
}
