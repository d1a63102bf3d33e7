// Package ptrace runs ftvm guests as a traced Linux process, on any Linux
// host: no /dev/kvm, no privileges beyond tracing one's own child.
//
// The guest process starts as a tiny stub (stub.go). Before the guest's
// first instruction the tracer makes the stub map guest RAM (the VMM's
// memfd) at the guest's addresses with each page's permission (W^X holds),
// close every descriptor, unmap its stack, vdso and vvar, install signal
// handlers on a stack of its own, and install a seccomp filter that turns
// every system call into SIGSYS. The guest then runs natively at CPL3:
//   - out (the guest's calls into the VMM) raises #GP at IOPL 0, seen as a
//     SIGSEGV stop AT the instruction; the tracer decodes it into the same
//     I/O exit KVM gives and moves RIP past it;
//   - any other exception is delivered to the stub's handler, whose first
//     instruction traps back to the tracer, which reads the vector, error
//     code and CR2 from the signal frame: the same report as on KVM;
//   - a system call arrives as SIGSYS and is reported, never run.
//
// ptrace requests must come from the thread that started the child, so
// each vCPU has one goroutine locked to one OS thread that does them all.
package ptrace

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"

	"github.com/ftvm/ftvm/replay"
	"github.com/ftvm/ftvm/vmm/backend"
	"golang.org/x/sys/unix"
)

// Backend is the ptrace backend.
type Backend struct{}

// Name is "ptrace".
func (Backend) Name() string { return "ptrace" }

// Usable starts a stub and stops it again: that needs fork, exec of a
// memfd, ptrace and seccomp.
func (b Backend) Usable() error {
	usable.once.Do(func() { usable.err = probe() })
	return usable.err
}

var usable struct {
	once sync.Once
	err  error
}

// probe sets up a guest process with one page of RAM and tears it down.
func probe() error {
	fd, err := unix.MemfdCreate("ftvm-ptrace-probe", unix.MFD_CLOEXEC)
	if err != nil {
		return fmt.Errorf("ptrace: memfd_create: %w", err)
	}
	f := os.NewFile(uintptr(fd), "ftvm-ptrace-probe")
	defer f.Close()
	if err := f.Truncate(1 << 21); err != nil {
		return err
	}
	pages := make([]backend.Perm, 512)
	pages[256] = backend.PermReadExec
	v, err := Backend{}.NewVCPU(&backend.Spec{RAMFile: f, RAM: make([]byte, 1<<21), Pages: pages, Entry: replay.Regs{RIP: 256 << 12, RFLAGS: 0x3202}})
	if err != nil {
		return err
	}
	return v.Close()
}

// Doctor reports what the ptrace backend relies on.
func (Backend) Doctor() []backend.Check {
	var checks []backend.Check
	if b, err := os.ReadFile("/proc/sys/kernel/yama/ptrace_scope"); err == nil {
		s := strings.TrimSpace(string(b))
		checks = append(checks, backend.Check{Name: "yama ptrace_scope", OK: s != "3", Detail: s + " (ftvm traces only its own children: 0-2 allow that)"})
	}
	if b, err := os.ReadFile("/proc/sys/vm/mmap_min_addr"); err == nil {
		s := strings.TrimSpace(string(b))
		n, _ := strconv.ParseUint(s, 10, 64)
		checks = append(checks, backend.Check{Name: "vm.mmap_min_addr", OK: n <= 0x10000 || os.Geteuid() == 0,
			Detail: s + " (every guest page is at or above 64 KiB, the usual limit)"})
	}
	checks = append(checks, backend.Check{Name: "system calls", OK: true, Detail: "refused by seccomp before the guest's first instruction; reported as guest faults"})
	return checks
}

// vcpu is one guest process and the thread that traces it.
type vcpu struct {
	pid   int
	ram   []byte
	pages []backend.Perm
	// base is the register file at the exec stop: segment selectors and
	// everything replay.Regs does not carry are kept from it.
	base unix.PtraceRegs
	// cpu is the CPU the guest process may run on: the tracer's own,
	// followed at each resume (-1 before the first).
	cpu int
	// moved: Run advanced RIP past an out, so the registers it reported
	// (kept in view) must be written back before the guest runs again.
	// held: Run reported a fault or system call with the registers of
	// that instruction (kept in view) while the process sits in the
	// stub's handler; Regs reports view until SetRegs.
	moved, held bool
	view        replay.Regs

	calls chan func()
	inDo  atomic.Bool   // the tracer goroutine is running a Do's function
	quit  chan struct{} // closed by Close
	done  chan struct{} // closed when the tracer has reaped the guest

	dl dirtyLog

	kickPending atomic.Bool
	mu          sync.Mutex // guards pid against reuse: Kick vs Close
	running     bool       // set up and not yet reaped
	closed      bool
}

// Signals and constants of the protocol with the stub.
const (
	kickSignal = unix.SIGUSR1
	siKernel   = 0x80 // si_code of a #GP (SI_KERNEL)

	ptraceGetSiginfo = 0x4202
	ptraceOExitKill  = 0x100000

	seccompSetModeFilter = 1
	seccompRetTrap       = 0x00030000

	saSiginfo  = 0x4
	saOnstack  = 0x08000000
	saRestorer = 0x04000000

	mapFixedNoreplace = 0x100000
)

// faultSignals are delivered to the stub's handler to learn the vector.
var faultSignals = []unix.Signal{unix.SIGSEGV, unix.SIGBUS, unix.SIGILL, unix.SIGFPE, unix.SIGTRAP}

// NewVCPU starts the guest process and sets it up, stopped at spec.Entry.
func (Backend) NewVCPU(spec *backend.Spec) (backend.VCPU, error) {
	if spec.RAMFile == nil {
		return nil, errors.New("ptrace: guest RAM must be a file (memfd) to map into the guest")
	}
	v := &vcpu{cpu: -1, ram: spec.RAM, pages: spec.Pages, calls: make(chan func()), quit: make(chan struct{}), done: make(chan struct{})}
	started := make(chan error, 1)
	go v.tracer(spec, started)
	if err := <-started; err != nil {
		<-v.done
		return nil, err
	}
	return v, nil
}

// tracer is the goroutine that owns the guest process. It never unlocks
// its thread: the thread ends with it, and the kernel's PDEATHSIG and
// PTRACE_O_EXITKILL then take the guest down even if Close was skipped.
func (v *vcpu) tracer(spec *backend.Spec, started chan<- error) {
	runtime.LockOSThread()
	defer close(v.done)
	if err := v.start(spec); err != nil {
		if v.pid > 0 {
			unix.Kill(v.pid, unix.SIGKILL)
			v.reap()
		}
		v.dl.close()
		started <- err
		return
	}
	started <- nil
	for {
		select {
		case f := <-v.calls:
			f()
		case <-v.quit:
			v.reap()
			return
		}
	}
}

// call runs f on the tracer thread: directly when already there (inside
// Do: the VCPU contract keeps other goroutines from calling meanwhile),
// else by handing it over. No system call on the exit path to ask.
func (v *vcpu) call(f func() error) error {
	if v.inDo.Load() {
		return f()
	}
	var err error
	ran := make(chan struct{})
	select {
	case v.calls <- func() { err = f(); close(ran) }:
	case <-v.done:
		return errors.New("ptrace: the vCPU is closed")
	}
	<-ran
	return err
}

func (v *vcpu) start(spec *backend.Spec) error {
	sf, err := stubFile()
	if err != nil {
		return err
	}
	attr := &syscall.ProcAttr{
		// 0-2 closed, guest RAM as 3.
		Files: []uintptr{^uintptr(0), ^uintptr(0), ^uintptr(0), spec.RAMFile.Fd()},
		Sys: &syscall.SysProcAttr{
			Ptrace:    true,
			Setpgid:   true, // Ctrl-C at the terminal goes to ftvm, never to the guest
			Pdeathsig: syscall.SIGKILL,
		},
	}
	pid, err := syscall.ForkExec(fmt.Sprintf("/proc/self/fd/%d", sf.Fd()), []string{"ftvm-guest"}, attr)
	if err != nil {
		return fmt.Errorf("ptrace: starting the guest process: %w", err)
	}
	v.pid = pid
	if _, err := v.wait(); err != nil { // the SIGTRAP of execve
		return err
	}
	if err := unix.PtraceSetOptions(pid, ptraceOExitKill); err != nil {
		return fmt.Errorf("ptrace: PTRACE_SETOPTIONS: %w", err)
	}
	if err := unix.PtraceGetRegs(pid, &v.base); err != nil {
		return fmt.Errorf("ptrace: PTRACE_GETREGS: %w", err)
	}
	if err := v.setup(spec); err != nil {
		return err
	}
	v.mu.Lock()
	v.running = true
	v.mu.Unlock()
	entry := spec.Entry
	return v.setRegs(&entry)
}

// setup makes the stub map guest RAM and shut every other door.
func (v *vcpu) setup(spec *backend.Spec) error {
	// Guest RAM, one mapping per run of pages with the same permission.
	pages := spec.Pages
	for i := 0; i < len(pages); {
		j := i
		for j < len(pages) && pages[j] == pages[i] {
			j++
		}
		if prot := protOf(pages[i]); prot != unix.PROT_NONE {
			addr, n := uint64(i)*backend.PageSize, uint64(j-i)*backend.PageSize
			flags := uint64(unix.MAP_SHARED | unix.MAP_FIXED | mapFixedNoreplace)
			if prot&unix.PROT_WRITE == 0 {
				// Present from the start, as in KVM's page tables, so that
				// a write to a read-only page faults with P=1 (error code 7)
				// on both. Writable pages fill in on first touch, which a
				// guest cannot tell.
				flags |= unix.MAP_POPULATE
			}
			got, err := v.inject(unix.SYS_MMAP, addr, n, uint64(prot), flags, 3, addr)
			if err == nil && got != addr {
				err = fmt.Errorf("mapped at %#x", got)
			}
			if err != nil {
				hint := ""
				if errors.Is(err, unix.EPERM) {
					hint = " (below vm.mmap_min_addr? it is 65536 on most hosts, and no guest page lies lower)"
				}
				return fmt.Errorf("ptrace: mapping guest pages [%#x, %#x): %w%s", addr, addr+n, err, hint)
			}
		}
		i = j
	}
	v.setupDirtyLog(pages)
	if _, err := v.inject(unix.SYS_CLOSE_RANGE, 0, ^uint64(0)>>32, 0); err != nil {
		if _, err := v.inject(unix.SYS_CLOSE, 3); err != nil {
			return fmt.Errorf("ptrace: closing the guest's descriptors: %w", err)
		}
	}
	// The signal stack and handlers, so that a fault's vector, error code
	// and CR2 reach the tracer in a signal frame.
	var ss [24]byte
	binary.LittleEndian.PutUint64(ss[0:], stubAltStack)
	binary.LittleEndian.PutUint64(ss[16:], stubAltSize)
	if err := v.poke(stubData, ss[:]); err != nil {
		return err
	}
	if _, err := v.inject(unix.SYS_SIGALTSTACK, stubData, 0); err != nil {
		return fmt.Errorf("ptrace: sigaltstack: %w", err)
	}
	var act [32]byte
	binary.LittleEndian.PutUint64(act[0:], stubHandler)
	binary.LittleEndian.PutUint64(act[8:], saSiginfo|saOnstack|saRestorer)
	binary.LittleEndian.PutUint64(act[16:], stubHandler)
	binary.LittleEndian.PutUint64(act[24:], ^uint64(0)) // block everything in the handler
	if err := v.poke(stubData+64, act[:]); err != nil {
		return err
	}
	for _, sig := range faultSignals {
		if _, err := v.inject(unix.SYS_RT_SIGACTION, uint64(sig), stubData+64, 0, 8); err != nil {
			return fmt.Errorf("ptrace: rt_sigaction(%v): %w", sig, err)
		}
	}
	// A name for ps and top: the kernel took "103" from /proc/self/fd/103.
	if err := v.poke(stubData+256, []byte("ftvm-guest\x00\x00\x00\x00\x00\x00")); err != nil {
		return err
	}
	v.inject(unix.SYS_PRCTL, unix.PR_SET_NAME, stubData+256)
	// Where the CPU lets it, RDTSC faults too: a missed rewrite is then a
	// reported fault, never a host timestamp. (No effect under PVM.)
	v.inject(unix.SYS_PRCTL, unix.PR_SET_TSC, unix.PR_TSC_SIGSEGV)
	// Everything of the stub's process that is not the stub or guest RAM:
	// its stack, the vdso (which holds rdtsc) and the vvar (the host clock).
	if err := v.unmapOthers(uint64(len(pages)) * backend.PageSize); err != nil {
		return err
	}
	// Last: no system call from here on.
	if _, err := v.inject(unix.SYS_PRCTL, unix.PR_SET_NO_NEW_PRIVS, 1); err != nil {
		return fmt.Errorf("ptrace: PR_SET_NO_NEW_PRIVS: %w", err)
	}
	var prog [8 + 16]byte
	binary.LittleEndian.PutUint16(prog[0:], unix.BPF_RET|unix.BPF_K)
	binary.LittleEndian.PutUint32(prog[4:], seccompRetTrap)
	binary.LittleEndian.PutUint16(prog[8:], 1) // sock_fprog.len
	binary.LittleEndian.PutUint64(prog[16:], stubData+128)
	if err := v.poke(stubData+128, prog[:]); err != nil {
		return err
	}
	if _, err := v.inject(unix.SYS_SECCOMP, seccompSetModeFilter, 0, stubData+128+8); err != nil {
		return fmt.Errorf("ptrace: installing the seccomp filter: %w", err)
	}
	return nil
}

func protOf(p backend.Perm) int {
	switch p {
	case backend.PermRead:
		return unix.PROT_READ
	case backend.PermReadExec:
		return unix.PROT_READ | unix.PROT_EXEC
	case backend.PermReadWrite:
		return unix.PROT_READ | unix.PROT_WRITE
	}
	return unix.PROT_NONE
}

// unmapOthers unmaps every mapping of the guest process outside guest RAM
// and the stub. [vsyscall] lies above user space and cannot be unmapped;
// its emulated calls are system calls, which seccomp refuses.
func (v *vcpu) unmapOthers(ramEnd uint64) error {
	f, err := os.Open(fmt.Sprintf("/proc/%d/maps", v.pid))
	if err != nil {
		return fmt.Errorf("ptrace: reading the guest process's mappings: %w", err)
	}
	defer f.Close()
	type span struct{ lo, hi uint64 }
	var others []span
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var lo, hi uint64
		if _, err := fmt.Sscanf(sc.Text(), "%x-%x", &lo, &hi); err != nil {
			return fmt.Errorf("ptrace: reading the guest process's mappings: %q: %v", sc.Text(), err)
		}
		switch {
		case hi <= ramEnd, lo >= stubBase && hi <= stubData+stubDataBytes:
		case lo >= 1<<47:
		default:
			others = append(others, span{lo, hi})
		}
	}
	for _, s := range others {
		if _, err := v.inject(unix.SYS_MUNMAP, s.lo, s.hi-s.lo); err != nil {
			return fmt.Errorf("ptrace: unmapping [%#x, %#x) of the guest process: %w", s.lo, s.hi, err)
		}
	}
	return nil
}

// inject makes the stopped stub execute one system call and returns its
// result. Must be called on the tracer thread.
func (v *vcpu) inject(nr uint64, args ...uint64) (uint64, error) {
	r := v.base
	r.Rip, r.Rax, r.Orig_rax = stubSyscall, nr, ^uint64(0)
	dst := []*uint64{&r.Rdi, &r.Rsi, &r.Rdx, &r.R10, &r.R8, &r.R9}
	for i, a := range args {
		*dst[i] = a
	}
	if err := unix.PtraceSetRegs(v.pid, &r); err != nil {
		return 0, fmt.Errorf("ptrace: PTRACE_SETREGS: %w", err)
	}
	if err := unix.PtraceCont(v.pid, 0); err != nil {
		return 0, fmt.Errorf("ptrace: PTRACE_CONT: %w", err)
	}
	sig, err := v.wait()
	if err != nil {
		return 0, err
	}
	if err := unix.PtraceGetRegs(v.pid, &r); err != nil {
		return 0, fmt.Errorf("ptrace: PTRACE_GETREGS: %w", err)
	}
	if sig != unix.SIGTRAP || r.Rip != stubSysRet {
		return 0, fmt.Errorf("ptrace: system call %d in the stub stopped with %v at %#x", nr, sig, r.Rip)
	}
	if ret := int64(r.Rax); ret < 0 && ret > -4096 {
		return 0, unix.Errno(-ret)
	}
	return r.Rax, nil
}

func (v *vcpu) poke(addr uint64, b []byte) error {
	if _, err := unix.PtracePokeData(v.pid, uintptr(addr), b); err != nil {
		return fmt.Errorf("ptrace: writing the stub's memory: %w", err)
	}
	return nil
}

func (v *vcpu) peek(addr uint64, b []byte) error {
	if _, err := unix.PtracePeekData(v.pid, uintptr(addr), b); err != nil {
		return fmt.Errorf("ptrace: reading the stub's memory: %w", err)
	}
	return nil
}

// wait waits for the guest process to stop and returns the stop signal.
// A guest process that is gone is an error.
func (v *vcpu) wait() (unix.Signal, error) {
	var ws unix.WaitStatus
	for {
		// A blocking system call as far as the scheduler knows: with one
		// P (GOMAXPROCS=1) a raw one would hold it while the guest runs,
		// and the goroutine that kicks the guest could never run.
		_, err := unix.Wait4(v.pid, &ws, unix.WALL, nil)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return 0, fmt.Errorf("ptrace: wait4: %w", err)
		}
		switch {
		case ws.Stopped():
			return ws.StopSignal(), nil
		case ws.Exited():
			v.gone()
			return 0, fmt.Errorf("ptrace: the guest process exited with status %d", ws.ExitStatus())
		case ws.Signaled():
			v.gone()
			return 0, fmt.Errorf("ptrace: the guest process was killed by %v", ws.Signal())
		}
	}
}

// gone records that the guest process has been reaped.
func (v *vcpu) gone() {
	v.mu.Lock()
	v.running = false
	v.pid = -v.pid
	v.mu.Unlock()
}

// reap kills the guest process and waits for it, once.
func (v *vcpu) reap() {
	v.mu.Lock()
	pid := v.pid
	v.running = false
	v.mu.Unlock()
	if pid <= 0 {
		return
	}
	unix.Kill(pid, unix.SIGKILL)
	var ws unix.WaitStatus
	for {
		_, err := unix.Wait4(pid, &ws, unix.WALL, nil)
		if err == unix.EINTR {
			continue
		}
		if err != nil || ws.Exited() || ws.Signaled() {
			break
		}
	}
	v.mu.Lock()
	v.pid = -pid
	v.mu.Unlock()
}

func (v *vcpu) Run(regs *replay.Regs, set bool) (backend.Exit, error) {
	if v.inDo.Load() {
		// The run loop's case, once per exit: no closure to hand over,
		// which would be two heap allocations per exit (it and the exit
		// it fills escape through the channel).
		return v.run(regs, set)
	}
	var e backend.Exit
	err := v.call(func() error {
		var err error
		e, err = v.run(regs, set)
		return err
	})
	return e, err
}

func (v *vcpu) run(regs *replay.Regs, set bool) (backend.Exit, error) {
	if set || v.moved {
		if !set {
			*regs = v.view
		}
		if err := v.setRegs(regs); err != nil {
			return backend.Exit{}, err
		}
		v.moved, v.held = false, false
	}
	var pr unix.PtraceRegs
	for {
		if v.kickPending.Swap(false) {
			return backend.Exit{Kind: backend.ExitKick}, v.getRegs(regs, &pr)
		}
		v.followTracer()
		if err := unix.PtraceCont(v.pid, 0); err != nil {
			return backend.Exit{}, fmt.Errorf("ptrace: PTRACE_CONT: %w", err)
		}
		sig, err := v.wait()
		if err != nil {
			return backend.Exit{}, err
		}
		switch sig {
		case kickSignal:
			v.kickPending.Store(false)
			return backend.Exit{Kind: backend.ExitKick}, v.getRegs(regs, &pr)
		case unix.SIGSEGV, unix.SIGBUS, unix.SIGILL, unix.SIGFPE, unix.SIGTRAP, unix.SIGSYS:
			if err := v.getRegs(regs, &pr); err != nil {
				return backend.Exit{}, err
			}
			e, err := v.decode(sig, regs, &pr)
			if err == nil && (e.Kind == backend.ExitException || e.Kind == backend.ExitSyscall) {
				v.held, v.view = true, *regs
			}
			return e, err
		default:
			// A signal from outside (a stray SIGTERM, SIGSTOP, ...): the guest
			// has no signals, so it is dropped here and the guest runs on.
		}
	}
}

// followTracer keeps the guest process on the CPU its tracer runs on. The
// two never run at once (one waits while the other works), so they need
// one CPU between them, like a KVM vCPU thread; on two CPUs every exit
// costs a cross-CPU wake-up each way, which here more than doubles it
// (24 us an exit together, 55-80 us apart, measured with
// BenchmarkExitRoundTrip). The tracer thread is not pinned: the scheduler
// may move it, and the guest follows at the next resume.
func (v *vcpu) followTracer() {
	cpu, err := getcpu()
	if err != nil || cpu == v.cpu {
		return
	}
	var set unix.CPUSet
	set.Set(cpu)
	if unix.SchedSetaffinity(v.pid, &set) == nil {
		v.cpu = cpu
	}
}

// decode turns a signal stop into an exit.
func (v *vcpu) decode(sig unix.Signal, regs *replay.Regs, pr *unix.PtraceRegs) (backend.Exit, error) {
	var si [128]byte
	if err := v.siginfo(&si); err != nil {
		return backend.Exit{}, err
	}
	code := int32(binary.LittleEndian.Uint32(si[8:]))
	switch {
	case sig == unix.SIGSYS:
		// Linux set RAX to -ENOSYS on entry; the guest's RAX was the number.
		regs.RAX = pr.Orig_rax
		return backend.Exit{Kind: backend.ExitSyscall, Code: uint64(int32(binary.LittleEndian.Uint32(si[24:])))}, nil
	case regs.RIP >= stubBase && regs.RIP < stubData+stubDataBytes:
		// The guest jumped out of its RAM into the stub. On KVM that
		// address is not mapped: report the same instruction-fetch page
		// fault (user, fetch, not present) at the address reached.
		return backend.Exit{Kind: backend.ExitException, Vector: 14, ErrorCode: 0x14, HasErrorCode: true, Addr: regs.RIP}, nil
	case sig == unix.SIGSEGV && code == siKernel:
		if e, ok := v.ioExit(regs); ok {
			return e, nil
		}
	}
	return v.deliver(sig)
}

// ioExit decodes the in or out whose #GP stopped the guest at regs.RIP.
func (v *vcpu) ioExit(regs *replay.Regs) (backend.Exit, bool) {
	rip := regs.RIP
	if rip >= uint64(len(v.ram)) || v.pages[rip/backend.PageSize] != backend.PermReadExec {
		return backend.Exit{}, false
	}
	end := min(rip+15, uint64(len(v.ram)))
	if last := (end - 1) / backend.PageSize; v.pages[last] != backend.PermReadExec {
		end = last * backend.PageSize // the CPU could not fetch past an executable page
	}
	port, size, out, n, ok := backend.IOInsn(v.ram[rip:end], uint16(regs.RDX))
	if !ok {
		return backend.Exit{}, false
	}
	e := backend.Exit{Kind: backend.ExitIOIn, Port: port, Size: size, InsnLen: n}
	if out {
		e.Kind = backend.ExitIOOut
		e.Data = uint32(regs.RAX) & uint32(uint64(1)<<(8*size)-1)
		regs.RIP += uint64(n)
		v.moved, v.view = true, *regs
	}
	return e, true
}

// deliver hands a fault signal to the stub's handler, whose int3 stops the
// guest again with the kernel's signal frame on the stub's stack: the
// vector, error code and CR2 are read from its sigcontext. The guest's
// registers stay those of the fault (already in regs).
func (v *vcpu) deliver(sig unix.Signal) (backend.Exit, error) {
	if err := unix.PtraceCont(v.pid, int(sig)); err != nil {
		return backend.Exit{}, fmt.Errorf("ptrace: PTRACE_CONT with %v: %w", sig, err)
	}
	got, err := v.wait()
	if err != nil {
		return backend.Exit{}, fmt.Errorf("delivering %v to read the fault: %w", sig, err)
	}
	var hr unix.PtraceRegs
	if err := unix.PtraceGetRegs(v.pid, &hr); err != nil {
		return backend.Exit{}, fmt.Errorf("ptrace: PTRACE_GETREGS: %w", err)
	}
	if got != unix.SIGTRAP || hr.Rip != stubHandRet {
		return backend.Exit{Kind: backend.ExitFailure, Detail: fmt.Sprintf("delivering %v stopped with %v at %#x, not in the stub's handler", sig, got, hr.Rip)}, nil
	}
	uc := hr.Rdx
	const mctx = 40 // offsetof(ucontext_t, uc_mcontext)
	const gregs = 23 * 8
	if uc < stubAltStack || uc+mctx+gregs > stubAltStack+stubAltSize {
		return backend.Exit{Kind: backend.ExitFailure, Detail: fmt.Sprintf("signal frame at %#x is outside the stub's stack", uc)}, nil
	}
	var b [gregs]byte
	if err := v.peek(uc+mctx, b[:]); err != nil {
		return backend.Exit{}, err
	}
	word := func(i int) uint64 { return binary.LittleEndian.Uint64(b[i*8:]) }
	vec := int(word(20)) // trapno; err is word 19, cr2 word 22
	e := backend.Exit{Kind: backend.ExitException, Vector: vec}
	if backend.VectorHasErrorCode(vec) {
		e.ErrorCode, e.HasErrorCode = word(19), true
	}
	if vec == 14 {
		e.Addr = word(22)
	}
	return e, nil
}

func (v *vcpu) getRegs(r *replay.Regs, pr *unix.PtraceRegs) error {
	if err := unix.PtraceGetRegs(v.pid, pr); err != nil {
		return fmt.Errorf("ptrace: PTRACE_GETREGS: %w", err)
	}
	*r = replay.Regs{
		RAX: pr.Rax, RBX: pr.Rbx, RCX: pr.Rcx, RDX: pr.Rdx, RSI: pr.Rsi, RDI: pr.Rdi, RSP: pr.Rsp, RBP: pr.Rbp,
		R8: pr.R8, R9: pr.R9, R10: pr.R10, R11: pr.R11, R12: pr.R12, R13: pr.R13, R14: pr.R14, R15: pr.R15,
		RIP: pr.Rip, RFLAGS: pr.Eflags &^ backend.HiddenFlags,
	}
	return nil
}

func (v *vcpu) setRegs(r *replay.Regs) error {
	pr := v.base
	pr.Rax, pr.Rbx, pr.Rcx, pr.Rdx, pr.Rsi, pr.Rdi, pr.Rsp, pr.Rbp = r.RAX, r.RBX, r.RCX, r.RDX, r.RSI, r.RDI, r.RSP, r.RBP
	pr.R8, pr.R9, pr.R10, pr.R11, pr.R12, pr.R13, pr.R14, pr.R15 = r.R8, r.R9, r.R10, r.R11, r.R12, r.R13, r.R14, r.R15
	pr.Rip, pr.Eflags, pr.Orig_rax = r.RIP, r.RFLAGS&^backend.HiddenFlags, ^uint64(0)
	if err := unix.PtraceSetRegs(v.pid, &pr); err != nil {
		return fmt.Errorf("ptrace: PTRACE_SETREGS: %w", err)
	}
	return nil
}

func (v *vcpu) Regs(r *replay.Regs) error {
	return v.call(func() error {
		if v.moved || v.held {
			*r = v.view
			return nil
		}
		var pr unix.PtraceRegs
		return v.getRegs(r, &pr)
	})
}

func (v *vcpu) SetRegs(r *replay.Regs) error {
	return v.call(func() error {
		v.moved, v.held = false, false
		return v.setRegs(r)
	})
}

// Do runs f on the tracer thread, so that the Run, Regs and SetRegs
// calls it makes are plain function calls, not two thread switches each.
func (v *vcpu) Do(f func()) {
	v.call(func() error {
		v.inDo.Store(true)
		defer v.inDo.Store(false)
		f()
		return nil
	})
}

// Kick stops a running guest with kickSignal; the tracer drops the signal
// and Run returns ExitKick.
func (v *vcpu) Kick() {
	v.kickPending.Store(true)
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.running && !v.closed && v.pid > 0 {
		unix.Kill(v.pid, kickSignal)
	}
}

// Close kills the guest process and ends the tracer.
func (v *vcpu) Close() error {
	v.mu.Lock()
	if v.closed {
		v.mu.Unlock()
		return nil
	}
	v.closed = true
	if v.running && v.pid > 0 {
		unix.Kill(v.pid, unix.SIGKILL)
	}
	v.mu.Unlock()
	close(v.quit)
	<-v.done
	v.dl.close()
	return nil
}

func (v *vcpu) FPState(s *backend.FPState) error {
	return v.call(func() error {
		var a [backend.FXSaveSize]byte
		if err := v.fpregs(ptraceGetFPRegs, &a); err != nil {
			return fmt.Errorf("ptrace: PTRACE_GETFPREGS: %w", err)
		}
		s.FromFXSave(&a)
		return nil
	})
}

func (v *vcpu) SetFPState(s *backend.FPState) error {
	return v.call(func() error {
		var a [backend.FXSaveSize]byte
		if err := v.fpregs(ptraceGetFPRegs, &a); err != nil {
			return fmt.Errorf("ptrace: PTRACE_GETFPREGS: %w", err)
		}
		// The kernel masks MXCSR with its MXCSR_MASK silently: refuse instead.
		mask := binary.LittleEndian.Uint32(a[28:])
		if mask == 0 {
			mask = 0xffbf // the architectural default when FXSAVE reports 0
		}
		if err := s.CheckMXCSR(mask); err != nil {
			return fmt.Errorf("ptrace: %w", err)
		}
		s.ToFXSave(&a, mask)
		if err := v.fpregs(ptraceSetFPRegs, &a); err != nil {
			return fmt.Errorf("ptrace: PTRACE_SETFPREGS: %w", err)
		}
		return nil
	})
}
