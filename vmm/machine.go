package vmm

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/ftvm/ftvm/replay"
	"github.com/ftvm/ftvm/vmm/backend"
	"golang.org/x/sys/unix"
)

// DefaultMemory is the guest RAM size when none is given.
const DefaultMemory = 64 << 20

// Config is what, besides the image, defines a VM. Primary and backup must
// agree on it (ConfigDigest).
type Config struct {
	MemSize uint64      // bytes of guest RAM; 0 means DefaultMemory
	Cmdline string      // the guest's command line
	NIC     *NICConfig  // the guest's NIC; nil for none
	Disk    *DiskConfig // the guest's disk; nil for none
}

func (c Config) withDefaults() Config {
	if c.MemSize == 0 {
		c.MemSize = DefaultMemory
	}
	return c
}

// ABIProfile names what a guest can observe of the machine under it, the
// same on every backend (guests/ABI.md, version 2): IOPL 0 with ports
// 0-255 granted by the TSS I/O bitmap, EFER.SCE clear (syscall and int
// 0x80 are reported as system calls), CR0.AM set (RFLAGS.AC works, as in
// any Linux process), the VMM's tables outside guest RAM, every guest page
// at or above 64 KiB, nothing written into RAM on a fault. Logs and pairs
// agree on it through the config digest, so a log recorded on one backend
// replays on another and a pair may mix them.
const ABIProfile = "abi=2 iopl=0 sce=0 am=1 tables=private low=64k fault-ram=untouched"

// ConfigDigest identifies everything in a Config that the guest can observe.
func ConfigDigest(c Config) [32]byte {
	c = c.withDefaults()
	h := sha256.New()
	fmt.Fprintf(h, "ftvm-config %s tsc_hz=%d %s", ABIProfile, TSCHz, c.Text())
	var d [32]byte
	h.Sum(d[:0])
	return d
}

// Text is the config in the form a log's start entry carries, so that a
// replay rebuilds the same VM from the log alone.
func (c Config) Text() string {
	v := configText{Mem: ptr(c.withDefaults().MemSize), Cmdline: c.Cmdline}
	if c.NIC != nil {
		v.MAC = net.HardwareAddr(c.NIC.MAC[:]).String()
		v.Addr, v.Gateway = c.NIC.Addr.String(), c.NIC.Gateway.String()
	}
	if c.Disk != nil {
		v.DiskSize = ptr(c.Disk.Size)
		v.DiskLocal, v.DiskDigest = c.Disk.Local, c.Disk.Digest
	}
	b, _ := json.Marshal(v)
	return string(b)
}

type configText struct {
	Mem     *uint64 `json:"mem"`
	Cmdline string  `json:"cmdline"`
	MAC     string  `json:"mac,omitempty"`
	Addr    string  `json:"addr,omitempty"`
	Gateway string  `json:"gateway,omitempty"`
	// The disk: absent when there is none (a config without one keeps
	// the text, and the digest, it had before disks existed).
	DiskSize   *uint64 `json:"disk_size,omitempty"`
	DiskLocal  bool    `json:"disk_local,omitempty"`
	DiskDigest string  `json:"disk_sha256,omitempty"`
}

func ptr[T any](v T) *T { return &v }

// ParseConfigText reads what Text wrote.
func ParseConfigText(s string) (Config, error) {
	var v configText
	dec := json.NewDecoder(strings.NewReader(s))
	dec.DisallowUnknownFields()
	bad := func(err error) (Config, error) {
		return Config{}, fmt.Errorf("vmm: recorded configuration %q is not understood: %v", s, err)
	}
	if err := dec.Decode(&v); err != nil || v.Mem == nil {
		return bad(err)
	}
	c := Config{MemSize: *v.Mem, Cmdline: v.Cmdline}
	if v.MAC != "" {
		mac, err := net.ParseMAC(v.MAC)
		if err != nil || len(mac) != 6 {
			return bad(err)
		}
		addr, err := netip.ParsePrefix(v.Addr)
		if err != nil {
			return bad(err)
		}
		gw, err := netip.ParseAddr(v.Gateway)
		if err != nil {
			return bad(err)
		}
		c.NIC = &NICConfig{Addr: addr, Gateway: gw}
		copy(c.NIC.MAC[:], mac)
	}
	if v.DiskSize != nil {
		c.Disk = &DiskConfig{Size: *v.DiskSize, Local: v.DiskLocal, Digest: v.DiskDigest}
		if err := c.Disk.check(); err != nil {
			return bad(err)
		}
	} else if v.DiskLocal {
		return bad(errors.New("a local disk without a size"))
	}
	return c, nil
}

// StartInfo describes a run of img with cfg for a log's start entry.
func StartInfo(img *Image, cfg Config, vmID string) replay.StartInfo {
	return replay.StartInfo{ImageSHA256: img.Hash, CPUIDDigest: CPUIDDigest(), ConfigDigest: ConfigDigest(cfg), VMID: vmID, Config: cfg.Text()}
}

// ErrInterrupted is returned by Run when its context is cancelled.
var ErrInterrupted = errors.New("vmm: interrupted")

// Result is how a run ended without an error.
type Result struct {
	Status int    // the guest's exit status
	Exits  uint64 // guest-caused exits
}

// Machine is one VM with one vCPU running one guest image, on one backend.
type Machine struct {
	backend string
	vcpu    backend.VCPU
	ramFile *os.File
	ram     []byte
	priv    []byte // the private region: tables outside guest RAM
	guest   guestView
	cfg     Config
	layout  Layout
	world   replay.World
	bus     bus
	exits   uint64
	seen    seenTime
	closed  bool
	// xferMu guards xfers, the transfers whose goroutine may still read
	// RAM or the dirty log, and release, set when Close came while one
	// was: the last transfer to end then releases the VM. closing tells
	// the transfers to stop.
	xferMu  sync.Mutex
	xfers   int
	release bool
	closing atomic.Bool
	// resume: the registers the guest resumes with after a restore, written
	// by the first Run. capture: a snapshot due after exit captureAt.
	resume    *replay.Regs
	captureAt uint64
	capture   func(*State) error
	stage     chan []byte // the capture's buffer, faulted in while the guest runs
	// precopy: a live transfer whose final pause is due at an exit.
	precopy atomic.Pointer[Precopy]
}

// SetWorld sets the world that answers the guest, for a machine created
// with a nil one; call it before Run.
func (m *Machine) SetWorld(w replay.World) { m.world = w }

// New creates a VM on backend b, loads img into it and prepares the vCPU
// at the entry point. The world answers every non-deterministic question
// of the run.
func New(b backend.Backend, img *Image, cfg Config, world replay.World) (*Machine, error) {
	if b == nil {
		return nil, errors.New("vmm: no backend given")
	}
	cfg = cfg.withDefaults()
	if cfg.Disk != nil {
		if err := cfg.Disk.check(); err != nil {
			return nil, err
		}
	}
	layout, err := newLayout(cfg.MemSize, img.End)
	if err != nil {
		return nil, err
	}
	if err := checkHostCPU(); err != nil {
		return nil, err
	}
	m := &Machine{backend: b.Name(), cfg: cfg, layout: layout, world: world}
	if err := m.create(b, img); err != nil {
		m.Close()
		return nil, err
	}
	m.bus = newBus(cfg.NIC, cfg.Disk)
	if cfg.Disk != nil && cfg.Disk.Local {
		m.bus.disk.local = cfg.Disk.File
	}
	return m, nil
}

func (m *Machine) create(b backend.Backend, img *Image) error {
	var err error
	if m.ramFile, m.ram, err = guestRAM(m.cfg.MemSize); err != nil {
		return err
	}
	m.guest = guestView{mem: &GuestMemory{b: m.ram}, img: img}
	if m.priv, err = unix.Mmap(-1, 0, int(m.layout.PrivSize), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS); err != nil {
		return fmt.Errorf("vmm: mmap the VMM's private guest tables: %w", err)
	}
	perms, err := m.loadImage(img)
	if err != nil {
		return err
	}
	spec := &backend.Spec{
		RAM: m.ram, RAMFile: m.ramFile, Pages: perms,
		Entry:  replay.Regs{RIP: img.Entry, RSP: m.layout.StackTop, RDI: bootInfoAddr, RFLAGS: entryRFLAGS},
		System: systemTables(m.layout, m.priv),
		CPUID:  backendCPUID(),
	}
	if m.vcpu, err = b.NewVCPU(spec); err != nil {
		return err
	}
	return nil
}

// guestRAM creates guest RAM as a memfd mapped here, so that a backend can
// map the same pages into the guest.
func guestRAM(size uint64) (*os.File, []byte, error) {
	fd, err := unix.MemfdCreate("ftvm-guest-ram", unix.MFD_CLOEXEC)
	if err != nil {
		return nil, nil, fmt.Errorf("vmm: memfd_create for guest RAM: %w", err)
	}
	f := os.NewFile(uintptr(fd), "ftvm-guest-ram")
	if err := f.Truncate(int64(size)); err != nil {
		f.Close()
		return nil, nil, fmt.Errorf("vmm: sizing guest RAM to %d bytes: %w", size, err)
	}
	b, err := unix.Mmap(fd, 0, int(size), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_NORESERVE)
	if err != nil {
		f.Close()
		return nil, nil, fmt.Errorf("vmm: mmap %d bytes of guest memory: %w", size, err)
	}
	return f, b, nil
}

// loadImage copies the image and the VMM's tables into guest RAM and
// returns each page's permission.
func (m *Machine) loadImage(img *Image) ([]backend.Perm, error) {
	perms := make([]pagePerm, m.cfg.MemSize/pageSize)
	systemPerms(m.layout, perms)
	mem := m.guest.mem
	for _, s := range img.Segments {
		if s.Addr+s.MemSize > m.layout.HeapEnd {
			return nil, fmt.Errorf("vmm: segment [%#x, %#x) does not fit in %d MiB of guest memory (raise --mem)", s.Addr, s.Addr+s.MemSize, m.cfg.MemSize>>20)
		}
		if err := mem.Write(s.Addr, s.Data); err != nil {
			return nil, err
		}
		for a := s.Addr &^ (pageSize - 1); a < s.Addr+s.MemSize; a += pageSize {
			perms[a/pageSize] = s.perm()
		}
	}
	for _, a := range img.NoExecPages {
		perms[a/pageSize] = permUserR
	}
	if err := writeBootInfo(mem, m.layout, m.cfg.Cmdline); err != nil {
		return nil, err
	}
	writeSystemTables(privateMemory{m.priv})
	buildPageTables(privateMemory{m.priv}, m.layout, perms)
	mem.perms = perms
	out := make([]backend.Perm, len(perms))
	for i, p := range perms {
		out[i] = p.backendPerm()
	}
	return out, nil
}

// Memory is guest RAM.
func (m *Machine) Memory() *GuestMemory { return m.guest.mem }

// Backend names the backend the machine runs on.
func (m *Machine) Backend() string { return m.backend }

// Run runs the guest until it powers off, faults, or ctx is cancelled
// (ErrInterrupted). A guest fault is a *GuestFault. The run loop, and with
// it every call into the World, runs on the backend's vCPU thread.
func (m *Machine) Run(ctx context.Context) (res Result, err error) {
	if m.closed {
		return Result{}, errors.New("vmm: Run on a closed machine")
	}
	ensureProcs()
	m.vcpu.Do(func() { res, err = m.run(ctx) })
	if pc := m.precopy.Swap(nil); pc != nil {
		pc.pauseMissed(res, err)
	}
	return res, err
}

func (m *Machine) run(ctx context.Context) (Result, error) {
	stop := context.AfterFunc(ctx, m.vcpu.Kick)
	defer stop()
	var regs replay.Regs
	set := false
	if m.resume != nil {
		regs, set = *m.resume, true
		m.resume = nil
	}
	// One exit context for the whole run: the handlers are called through
	// function values, so it escapes, and a new one per exit was a heap
	// allocation on every exit. No handler keeps it past its exit.
	x := new(exitContext)
	for {
		exit, err := m.vcpu.Run(&regs, set)
		set = false
		if err != nil {
			return Result{Exits: m.exits}, err
		}
		if exit.Kind == backend.ExitKick {
			if ctx.Err() != nil {
				return Result{Exits: m.exits}, ErrInterrupted
			}
			continue // a stale kick: not a guest-caused exit, not counted
		}
		m.exits++
		*x = exitContext{guestView: &m.guest, world: m.world, point: replay.ExecPoint{Exit: m.exits, Regs: regs}, regs: regs, seen: &m.seen}
		done, status, err := m.handle(x, exit)
		if err != nil {
			return Result{Exits: m.exits}, err
		}
		if done {
			return Result{Status: status, Exits: m.exits}, nil
		}
		if x.dirty {
			regs, set = x.regs, true
		}
		m.guest.mem.publishWrites()
		if pc := m.precopy.Load(); pc != nil && pc.pauseWanted.Load() {
			m.precopy.Store(nil)
			pc.finalPause(m, &regs)
		}
		if m.capture != nil && m.exits == m.captureAt {
			if err := m.takeCapture(&regs); err != nil {
				return Result{Exits: m.exits}, err
			}
		}
	}
}

// handle dispatches one guest-caused exit.
func (m *Machine) handle(x *exitContext, e backend.Exit) (done bool, status int, err error) {
	switch e.Kind {
	case backend.ExitIOOut:
		return m.bus.out(x, e)
	case backend.ExitIOIn:
		return false, 0, x.fault(fmt.Sprintf("in from port %#x (ports are write-only: see guests/ABI.md)", e.Port))
	case backend.ExitException:
		return false, 0, m.guest.exceptionFault(x.point.Exit, e, x.point.Regs)
	case backend.ExitSyscall:
		f := m.guest.newFault(x.point.Exit, fmt.Sprintf("system call %d (guests have no system calls: see guests/ABI.md)", e.Code), x.point.Regs)
		f.RIP, f.Insn = m.guest.instructionBefore(f.RIP, [][]byte{{0x0f, 0x05}, {0x0f, 0x34}, {0xcd, 0x80}})
		return false, 0, f
	case backend.ExitMMIO:
		return false, 0, x.fault(fmt.Sprintf("access to guest-physical address %#x, which is not RAM", e.Addr))
	case backend.ExitShutdown:
		return false, 0, x.fault("triple fault (an exception while delivering an exception)")
	case backend.ExitHLT:
		return false, 0, x.fault("halt")
	case backend.ExitFailure:
		return false, 0, fmt.Errorf("vmm: %s backend failed at exit %d rip %#x: %s", m.backend, x.point.Exit, x.point.Regs.RIP, e.Detail)
	default:
		return false, 0, fmt.Errorf("vmm: unexpected exit %v at rip %#x", e, x.point.Regs.RIP)
	}
}

// StateDigest hashes the registers and all of guest RAM: two runs that
// ended in the same state have the same digest.
func (m *Machine) StateDigest() ([32]byte, error) {
	var r replay.Regs
	if err := m.vcpu.Regs(&r); err != nil {
		return [32]byte{}, err
	}
	return replay.StateDigest(&r, m.ram), nil
}

// Regs reads the vCPU's general registers. Must not be called while Run is
// running.
func (m *Machine) Regs() (replay.Regs, error) {
	var r replay.Regs
	err := m.vcpu.Regs(&r)
	return r, err
}

// Kick interrupts Run as a cancelled context would, without ending it: Run
// goes on unless its context is done. Safe from any goroutine.
func (m *Machine) Kick() {
	if m.vcpu != nil {
		m.vcpu.Kick()
	}
}

// Close releases the VM. Must not be called while Run is running. A live
// transfer still under way (StartPrecopy) is told to stop, and the VM is
// released when it has: its goroutine may be reading RAM right now.
func (m *Machine) Close() error {
	if m.closed {
		return nil
	}
	m.closed = true
	m.closing.Store(true)
	m.xferMu.Lock()
	defer m.xferMu.Unlock()
	if m.xfers > 0 {
		m.release = true
		return nil
	}
	return m.releaseLocked()
}

// releaseLocked frees the vCPU, RAM and the private region.
func (m *Machine) releaseLocked() error {
	var err error
	if m.vcpu != nil {
		err = m.vcpu.Close()
	}
	if m.ram != nil {
		unix.Munmap(m.ram)
	}
	if m.priv != nil {
		unix.Munmap(m.priv)
	}
	if m.ramFile != nil {
		m.ramFile.Close()
	}
	return err
}

// JoinConfigDigest is ConfigDigest for the handshake of a backup that
// joins a running guest: a local disk's size and digest are left out.
// The joining side's copy is made equal to the live side's by the state
// transfer, which proves it (a root hash at the pause) and refuses a copy
// of another size with a clear error; the digest the config keeps is of
// the copies when the pair first started.
func JoinConfigDigest(c Config) [32]byte {
	if c.Disk != nil && c.Disk.Local {
		c.Disk = &DiskConfig{Local: true}
	}
	return ConfigDigest(c)
}

// AttachLocalDisk gives a machine restored from a state (whose config,
// being text, names a local disk but no file) this side's copy of it.
func (m *Machine) AttachLocalDisk(f *DiskFile) error {
	d := m.cfg.Disk
	switch {
	case d == nil || !d.Local:
		return errors.New("vmm: a local disk attached to a machine without one")
	case f.Size() != d.Size:
		return fmt.Errorf("vmm: the local disk's copy %s has %d bytes, the machine's disk %d: %w", f.Path(), f.Size(), d.Size, ErrDiskSize)
	}
	d.File = f
	m.bus.disk.local = f
	return nil
}
