package ptrace

import (
	"fmt"
	"unsafe"

	"github.com/ftvm/ftvm/vmm/backend"

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

const (
	ptraceGetFPRegs = 14 // PTRACE_GETFPREGS: the FXSAVE area (user_fpregs_struct)
	ptraceSetFPRegs = 15 // PTRACE_SETFPREGS
)

// fpregs reads (req = ptraceGetFPRegs) or writes the guest's FXSAVE area.
// Sound: a is 512 bytes, sizeof(struct user_fpregs_struct), all the kernel
// reads or writes; converted in the call expression, it stays in place.
func (v *vcpu) fpregs(req uintptr, a *[backend.FXSaveSize]byte) error {
	_, _, errno := unix.Syscall6(unix.SYS_PTRACE, req, uintptr(v.pid), 0, uintptr(unsafe.Pointer(a)), 0, 0)
	if errno != 0 {
		return errno
	}
	return nil
}
