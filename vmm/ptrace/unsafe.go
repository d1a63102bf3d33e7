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

// rawWait4 waits for the guest process to change state without telling
// the Go scheduler that the thread blocks. The tracer thread is locked
// and does nothing else while the guest runs; a scheduler that took its P
// away at every exit (as for any blocking syscall that lasts over 20 us)
// and handed it back doubled the cost of an exit. A preemption request
// (SIGURG) interrupts the wait with EINTR, so the thread still yields
// to a garbage collection. Sound: ws is a live Go variable converted in
// the call expression; the kernel writes one int there.
func rawWait4(pid int, ws *unix.WaitStatus) error {
	_, _, errno := unix.RawSyscall6(unix.SYS_WAIT4, uintptr(pid), uintptr(unsafe.Pointer(ws)), unix.WALL, 0, 0, 0)
	if errno != 0 {
		return errno
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
