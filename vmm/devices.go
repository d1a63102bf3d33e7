package vmm

import (
	"fmt"

	"github.com/ftvm/ftvm/replay"
	"github.com/ftvm/ftvm/vmm/backend"
)

// exitContext is one guest-caused exit as a device sees it: where it
// happened, the registers to answer in, guest memory and the world. It
// holds nothing of the backend.
type exitContext struct {
	*guestView
	world replay.World
	point replay.ExecPoint // as the guest left it; never changed
	regs  replay.Regs      // what the guest resumes with
	dirty bool
	seen  *seenTime // the machine's record of the time it has shown
}

// seenTime is the last virtual TSC and monotonic clock value the guest was
// given: device state that a snapshot carries, so that a run continuing
// from it never shows time going backwards.
type seenTime struct {
	TSC, Monotonic uint64
}

// setResult answers a call in RAX.
func (x *exitContext) setResult(v uint64) {
	x.regs.RAX = v
	x.dirty = true
}

// fault builds the error that stops the VM for something the guest did at
// this exit, naming the RIP and the instruction there.
func (x *exitContext) fault(what string) error {
	return x.newFault(x.point.Exit, what, x.point.Regs)
}

// outHandler handles an out to its port. done stops the VM with status.
type outHandler func(x *exitContext) (done bool, status int, err error)

// bus maps the 256 ports reachable with out imm8 to their devices.
type bus struct {
	ports [256]outHandler
	disk  *disk
}

func newBus(nicCfg *NICConfig, diskCfg *DiskConfig) bus {
	var b bus
	b.ports[portConsoleWrite] = consoleWrite
	b.ports[portConsoleRead] = consoleRead
	b.ports[portClock] = clockRead
	b.ports[portWait] = waitRequest
	b.ports[portExit] = powerOff
	b.ports[portRewrite] = emulateRewritten
	n := &nic{cfg: nicCfg}
	b.ports[portNICInfo] = n.info
	b.ports[portNICTX] = n.transmit
	b.ports[portNICRX] = n.receive
	d := &disk{cfg: diskCfg}
	b.disk = d
	b.ports[portDiskInfo] = d.info
	b.ports[portDiskSubmit] = d.submit
	for v := 0; v < 32; v++ {
		b.ports[portException+v] = strayExceptionPort
	}
	return b
}

func (b *bus) out(x *exitContext, e backend.Exit) (bool, int, error) {
	if e.Port < 256 && b.ports[e.Port] != nil {
		return b.ports[e.Port](x)
	}
	f := x.newFault(x.point.Exit, fmt.Sprintf("out to unknown port %#x", e.Port), x.point.Regs)
	// RIP is past the out: name the out, not what follows it.
	f.RIP, f.Insn = x.instructionBefore(f.RIP, outEncodings(e.Port))
	return false, 0, f
}

// strayExceptionPort: the backend turns an exception stub's out into an
// exception exit; an out to those ports from anywhere else is the guest's.
func strayExceptionPort(x *exitContext) (bool, int, error) {
	f := x.newFault(x.point.Exit, "out to the VMM's reserved exception port from outside its stubs", x.point.Regs)
	f.RIP, f.Insn = x.instructionBefore(f.RIP, [][]byte{{0xe6, byte(x.point.Regs.RAX)}})
	return false, 0, f
}

// outEncodings are the forms of out to port: imm8 (E6/E7 ib) or DX (EE/EF),
// with or without an operand-size prefix.
func outEncodings(port uint16) [][]byte {
	enc := [][]byte{{0xee}, {0xef}, {0x66, 0xef}}
	if port < 256 {
		enc = append([][]byte{{0xe6, byte(port)}, {0xe7, byte(port)}, {0x66, 0xe7, byte(port)}}, enc...)
	}
	return enc
}

const (
	errFault = ^uint64(13) // -14, EFAULT: a buffer outside guest RAM
	errInval = ^uint64(21) // -22, EINVAL
	// maxConsoleIO bounds one console call, so a guest cannot make the
	// VMM allocate or log without limit in one exit.
	maxConsoleIO = 64 << 10
)

// consoleWrite: RDI = buffer, RSI = length.
func consoleWrite(x *exitContext) (bool, int, error) {
	addr, n := x.point.Regs.RDI, x.point.Regs.RSI
	if n > maxConsoleIO {
		n = maxConsoleIO // a short write, as a real device may do
	}
	buf, err := x.mem.ForGuest(addr, n, false)
	if err != nil {
		x.setResult(errFault)
		return false, 0, nil
	}
	if err := x.world.Output(x.point, replay.OutputConsole, buf); err != nil {
		return false, 0, err
	}
	x.setResult(n)
	return false, 0, nil
}

// consoleRead: RDI = buffer, RSI = capacity. Never blocks.
func consoleRead(x *exitContext) (bool, int, error) {
	addr, n := x.point.Regs.RDI, x.point.Regs.RSI
	if n > maxConsoleIO {
		n = maxConsoleIO
	}
	buf, err := x.mem.ForGuest(addr, n, true)
	if err != nil {
		x.setResult(errFault)
		return false, 0, nil
	}
	got, eof, err := x.world.ConsoleRead(x.point, buf)
	if err != nil {
		return false, 0, err
	}
	switch {
	case got > 0:
		x.setResult(uint64(got))
	case eof:
		x.setResult(^uint64(0))
	default:
		x.setResult(0)
	}
	return false, 0, nil
}

// clockRead: RDI = clock id.
func clockRead(x *exitContext) (bool, int, error) {
	id := x.point.Regs.RDI
	if id != uint64(replay.ClockMonotonic) && id != uint64(replay.ClockRealtime) {
		x.setResult(errInval)
		return false, 0, nil
	}
	ns, err := x.world.Clock(x.point, replay.ClockID(id))
	if err != nil {
		return false, 0, err
	}
	if id == uint64(replay.ClockMonotonic) {
		x.seen.Monotonic = ns
	}
	x.setResult(ns)
	return false, 0, nil
}

// waitRequest: RDI = timeout in ns. Parks the vCPU in the world.
func waitRequest(x *exitContext) (bool, int, error) {
	res, err := x.world.Wait(x.point, x.point.Regs.RDI)
	if err != nil {
		return false, 0, err
	}
	x.setResult(uint64(res))
	return false, 0, nil
}

// powerOff: RDI = status.
func powerOff(x *exitContext) (bool, int, error) {
	status := x.point.Regs.RDI
	if status > 255 {
		return false, 0, x.fault(fmt.Sprintf("exit with status %d, outside 0-255", status))
	}
	if err := x.world.PowerOff(x.point, int(status)); err != nil {
		return false, 0, err
	}
	return true, int(status), nil
}

// emulateRewritten runs the instruction the loader replaced with a trap,
// exactly as the CPU would, with the answer from the world.
func emulateRewritten(x *exitContext) (bool, int, error) {
	site, ok := x.img.site(x.point.Regs.RIP)
	if !ok {
		return false, 0, x.fault(fmt.Sprintf("out to the VMM's reserved port %#x outside a rewritten instruction", portRewrite))
	}
	r := &x.regs
	switch site.Kind {
	case SiteRDTSC, SiteRDTSCP:
		tsc, err := x.world.TSC(x.point)
		if err != nil {
			return false, 0, err
		}
		x.seen.TSC = tsc
		r.RAX, r.RDX = tsc&0xffffffff, tsc>>32
		if site.Kind == SiteRDTSCP {
			r.RCX = 0 // IA32_TSC_AUX: fixed, so it cannot reveal the host CPU
		}
	case SiteRDRAND, SiteRDSEED:
		kind := replay.RandRDRAND
		if site.Kind == SiteRDSEED {
			kind = replay.RandRDSEED
		}
		v, err := x.world.Random(x.point, kind)
		if err != nil {
			return false, 0, err
		}
		setReg(r, site.Reg, site.OpBits, v)
		// CF=1 (success); OF, SF, ZF, AF, PF cleared.
		const cf, pf, af, zf, sf, of = 1 << 0, 1 << 2, 1 << 4, 1 << 6, 1 << 7, 1 << 11
		r.RFLAGS = r.RFLAGS&^(pf|af|zf|sf|of) | cf
	case SiteRDPID:
		setReg(r, site.Reg, 64, 0) // IA32_TSC_AUX, as for RDTSCP
	case SiteCPUID:
		e := cpuidLookup(uint32(r.RAX), uint32(r.RCX))
		r.RAX, r.RBX, r.RCX, r.RDX = uint64(e.eax), uint64(e.ebx), uint64(e.ecx), uint64(e.edx)
	}
	r.RIP = site.Addr + site.Len()
	x.dirty = true
	return false, 0, nil
}

// setReg writes v to general register idx (0=rax..15=r15, the encoding
// order) with x86 semantics: 32-bit writes zero-extend, 16-bit writes merge.
func setReg(r *replay.Regs, idx, bits int, v uint64) {
	regs := [16]*uint64{&r.RAX, &r.RCX, &r.RDX, &r.RBX, &r.RSP, &r.RBP, &r.RSI, &r.RDI,
		&r.R8, &r.R9, &r.R10, &r.R11, &r.R12, &r.R13, &r.R14, &r.R15}
	p := regs[idx]
	switch bits {
	case 64:
		*p = v
	case 32:
		*p = v & 0xffffffff
	case 16:
		*p = *p&^0xffff | v&0xffff
	}
}
