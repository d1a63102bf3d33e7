package ptrace

import (
	"encoding/binary"
	"fmt"
	"os"
	"sync"

	"golang.org/x/sys/unix"
)

// The stub is the program the guest process starts as: a static ELF of two
// segments, far above any guest address, that does nothing by itself. The
// tracer drives it: it points RIP at the stub's syscall instruction to
// make the stub map guest RAM and set itself up, then at the guest's entry.
// It is generated here rather than compiled, so that it is part of the ftvm
// binary and needs no toolchain at run time.
const (
	stubBase = 0x3f0000000000 // far above MaxMemory, far below the stack

	stubSyscall = stubBase + 0x100 // syscall; int3
	stubSysRet  = stubSyscall + 3  // RIP after the int3 that ends an injected syscall
	stubHandler = stubBase + 0x110 // the signal handler: int3; ud2
	stubHandRet = stubHandler + 1  // RIP after the handler's int3

	stubData      = stubBase + 0x1000 // scratch for arguments (4 KiB)
	stubAltStack  = stubBase + 0x2000 // the signal stack
	stubAltSize   = 0x10000
	stubDataBytes = 0x1000 + stubAltSize
)

// stubELF builds the stub's ELF file.
func stubELF() []byte {
	f := make([]byte, 0x1000)
	le := binary.LittleEndian
	copy(f, []byte{0x7f, 'E', 'L', 'F', 2 /* 64-bit */, 1 /* LE */, 1 /* version */})
	le.PutUint16(f[16:], 2)    // ET_EXEC
	le.PutUint16(f[18:], 0x3e) // EM_X86_64
	le.PutUint32(f[20:], 1)
	le.PutUint64(f[24:], stubSysRet-1) // entry: an int3 (never reached: the tracer sets RIP)
	le.PutUint64(f[32:], 64)           // phoff
	le.PutUint16(f[52:], 64)           // ehsize
	le.PutUint16(f[54:], 56)           // phentsize
	le.PutUint16(f[56:], 2)            // phnum
	ph := func(i int, flags uint32, off, vaddr, filesz, memsz uint64) {
		p := f[64+56*i:]
		le.PutUint32(p[0:], 1) // PT_LOAD
		le.PutUint32(p[4:], flags)
		le.PutUint64(p[8:], off)
		le.PutUint64(p[16:], vaddr)
		le.PutUint64(p[24:], vaddr)
		le.PutUint64(p[32:], filesz)
		le.PutUint64(p[40:], memsz)
		le.PutUint64(p[48:], 0x1000)
	}
	ph(0, 5 /* R+X */, 0, stubBase, 0x1000, 0x1000)
	ph(1, 6 /* R+W */, 0, stubData, 0, stubDataBytes)
	copy(f[stubSyscall-stubBase:], []byte{0x0f, 0x05, 0xcc}) // syscall; int3
	copy(f[stubHandler-stubBase:], []byte{0xcc, 0x0f, 0x0b}) // int3; ud2
	return f
}

var stub struct {
	once sync.Once
	file *os.File
	err  error
}

// stubFile is a memfd holding the stub, made once per process, at a high
// descriptor number (so that fork's shuffling of the low ones for the child
// cannot hide it).
func stubFile() (*os.File, error) {
	stub.once.Do(func() {
		fd, err := unix.MemfdCreate("ftvm-ptrace-stub", unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING|mfdExec)
		if err == unix.EINVAL { // kernels before 6.3 know no MFD_EXEC
			fd, err = unix.MemfdCreate("ftvm-ptrace-stub", unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
		}
		if err != nil {
			stub.err = fmt.Errorf("ptrace: memfd_create for the stub: %w", err)
			return
		}
		high, err := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 100)
		unix.Close(fd)
		if err != nil {
			stub.err = fmt.Errorf("ptrace: placing the stub's descriptor: %w", err)
			return
		}
		f := os.NewFile(uintptr(high), "ftvm-ptrace-stub")
		if _, err := f.Write(stubELF()); err != nil {
			f.Close()
			stub.err = fmt.Errorf("ptrace: writing the stub: %w", err)
			return
		}
		// Sealed: nothing can change the stub once written.
		unix.FcntlInt(f.Fd(), unix.F_ADD_SEALS, unix.F_SEAL_WRITE|unix.F_SEAL_GROW|unix.F_SEAL_SHRINK|unix.F_SEAL_SEAL)
		stub.file = f
	})
	return stub.file, stub.err
}

const mfdExec = 0x10 // MFD_EXEC (Linux 6.3): this memfd may be executed
