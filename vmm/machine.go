package vmm

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"runtime"
	"strings"

	"github.com/bobuhiro11/gokvm/kvm"
	"github.com/ftvm/ftvm/replay"
	"golang.org/x/sys/unix"
)

// DefaultMemory is the guest RAM size when none is given.
const DefaultMemory = 64 << 20

// Config is what, besides the image, defines a VM. Primary and backup must
// agree on it (ConfigDigest).
type Config struct {
	MemSize uint64     // bytes of guest RAM; 0 means DefaultMemory
	Cmdline string     // the guest's command line
	NIC     *NICConfig // the guest's NIC; nil for none
}

func (c Config) withDefaults() Config {
	if c.MemSize == 0 {
		c.MemSize = DefaultMemory
	}
	return c
}

// ConfigDigest identifies everything in a Config that the guest can observe.
func ConfigDigest(c Config) [32]byte {
	c = c.withDefaults()
	h := sha256.New()
	fmt.Fprintf(h, "ftvm-config abi=%d tsc_hz=%d %s", abiVersion, TSCHz, c.Text())
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
	b, _ := json.Marshal(v)
	return string(b)
}

type configText struct {
	Mem     *uint64 `json:"mem"`
	Cmdline string  `json:"cmdline"`
	MAC     string  `json:"mac,omitempty"`
	Addr    string  `json:"addr,omitempty"`
	Gateway string  `json:"gateway,omitempty"`
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

// Machine is one VM with one vCPU running one guest image.
type Machine struct {
	kvmFD, vmFD int
	vcpu        *vcpuFD
	ram         []byte
	mem         GuestMemory
	img         *Image
	cfg         Config
	layout      Layout
	world       replay.World
	bus         bus
	exits       uint64
	closed      bool
}

// New creates a VM, loads img into it and prepares the vCPU at the entry
// point. The world answers every non-deterministic question of the run.
func New(img *Image, cfg Config, world replay.World) (*Machine, error) {
	cfg = cfg.withDefaults()
	layout, err := newLayout(cfg.MemSize, img.End)
	if err != nil {
		return nil, err
	}
	m := &Machine{kvmFD: -1, vmFD: -1, img: img, cfg: cfg, layout: layout, world: world}
	if err := m.create(); err != nil {
		m.Close()
		return nil, err
	}
	m.bus = newBus(m)
	return m, nil
}

func (m *Machine) create() error {
	var err error
	if m.kvmFD, err = unix.Open("/dev/kvm", unix.O_RDWR|unix.O_CLOEXEC, 0); err != nil {
		return fmt.Errorf("vmm: open /dev/kvm: %w (is KVM available and are you allowed to use it? try ftvm doctor)", err)
	}
	vmfd, err := kvm.CreateVM(uintptr(m.kvmFD))
	if err != nil {
		return fmt.Errorf("vmm: KVM_CREATE_VM: %w", err)
	}
	m.vmFD = int(vmfd)
	if m.ram, err = guestMemoryMmap(m.cfg.MemSize); err != nil {
		return err
	}
	m.mem = GuestMemory{b: m.ram}
	region := kvm.UserspaceMemoryRegion{Slot: 0, GuestPhysAddr: 0, MemorySize: m.cfg.MemSize, UserspaceAddr: hostAddr(m.ram)}
	if err := kvm.SetUserMemoryRegion(uintptr(m.vmFD), &region); err != nil {
		return fmt.Errorf("vmm: KVM_SET_USER_MEMORY_REGION: %w", err)
	}
	if err := m.loadImage(); err != nil {
		return err
	}
	vcpufd, err := kvm.CreateVCPU(uintptr(m.vmFD), 0)
	if err != nil {
		return fmt.Errorf("vmm: KVM_CREATE_VCPU: %w", err)
	}
	size, err := kvm.GetVCPUMMmapSize(uintptr(m.kvmFD))
	if err != nil {
		unix.Close(int(vcpufd))
		return fmt.Errorf("vmm: KVM_GET_VCPU_MMAP_SIZE: %w", err)
	}
	if m.vcpu, err = newVcpuFD(int(vcpufd), int(size)); err != nil {
		unix.Close(int(vcpufd))
		return err
	}
	if caps, err := kvm.CheckExtension(uintptr(m.kvmFD), kvmCapSyncRegs); err == nil && caps&kvmSyncX86Regs != 0 {
		m.vcpu.syncRegs = true
	}
	return m.setupVCPU()
}

// loadImage copies the image and the VMM's tables into guest RAM.
func (m *Machine) loadImage() error {
	perms := make([]pagePerm, m.cfg.MemSize/pageSize)
	systemPerms(m.layout, perms)
	for _, s := range m.img.Segments {
		if s.Addr+s.MemSize > m.layout.HeapEnd {
			return fmt.Errorf("vmm: segment [%#x, %#x) does not fit in %d MiB of guest memory (raise --mem)", s.Addr, s.Addr+s.MemSize, m.cfg.MemSize>>20)
		}
		if err := m.mem.Write(s.Addr, s.Data); err != nil {
			return err
		}
		for a := s.Addr &^ (pageSize - 1); a < s.Addr+s.MemSize; a += pageSize {
			perms[a/pageSize] = s.perm()
		}
	}
	if err := writeSystemTables(&m.mem); err != nil {
		return err
	}
	if err := writeBootInfo(&m.mem, m.layout, m.cfg.Cmdline); err != nil {
		return err
	}
	return buildPageTables(&m.mem, m.layout, perms)
}

func (m *Machine) setupVCPU() error {
	if err := checkHostCPU(); err != nil {
		return err
	}
	if err := kvm.SetCPUID2(uintptr(m.vcpu.fd), kvmCPUID()); err != nil {
		return fmt.Errorf("vmm: KVM_SET_CPUID2: %w", err)
	}
	s, err := kvm.GetSregs(uintptr(m.vcpu.fd))
	if err != nil {
		return fmt.Errorf("vmm: KVM_GET_SREGS: %w", err)
	}
	s.CR0 = 0x80050033 // PG, WP, NE, ET, MP, PE
	s.CR3 = m.layout.PageTables
	s.CR4 = 1<<5 | 1<<9 | 1<<10          // PAE, OSFXSR, OSXMMEXCPT
	s.EFER = 1<<0 | 1<<8 | 1<<10 | 1<<11 // SCE, LME, LMA, NXE
	s.GDT = kvm.Descriptor{Base: gdtAddr, Limit: 7*8 - 1}
	s.IDT = kvm.Descriptor{Base: idtAddr, Limit: 256*16 - 1}
	code := kvm.Segment{Selector: selUserCode, Limit: 0xfffff, Typ: 0xb, Present: 1, DPL: 3, S: 1, L: 1, G: 1}
	data := kvm.Segment{Selector: selUserData, Limit: 0xfffff, Typ: 0x3, Present: 1, DPL: 3, S: 1, DB: 1, G: 1}
	s.CS, s.DS, s.ES, s.FS, s.GS, s.SS = code, data, data, data, data, data
	s.LDT = kvm.Segment{Unusable: 1}
	s.TR = kvm.Segment{Base: tssAddr, Limit: tssLimit, Selector: selTSS, Typ: 0xb, Present: 1}
	if err := kvm.SetSregs(uintptr(m.vcpu.fd), s); err != nil {
		return fmt.Errorf("vmm: KVM_SET_SREGS: %w", err)
	}
	r := replay.Regs{RIP: m.img.Entry, RSP: m.layout.StackTop, RDI: bootInfoAddr, RFLAGS: 0x3202}
	return m.vcpu.setRegs(&r)
}

// Memory is guest RAM.
func (m *Machine) Memory() *GuestMemory { return &m.mem }

// Run runs the guest until it powers off, faults, or ctx is cancelled
// (ErrInterrupted). A guest fault is a *GuestFault. Run locks its goroutine
// to one OS thread while the vCPU runs.
func (m *Machine) Run(ctx context.Context) (Result, error) {
	if m.closed {
		return Result{}, errors.New("vmm: Run on a closed machine")
	}
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	stop := context.AfterFunc(ctx, m.vcpu.kick)
	defer stop()
	var regs replay.Regs
	for {
		exit, err := m.vcpu.runOnce()
		if err != nil {
			return Result{Exits: m.exits}, err
		}
		if exit.Kind == ExitKick {
			if ctx.Err() != nil {
				return Result{Exits: m.exits}, ErrInterrupted
			}
			continue // a stale kick: not a guest-caused exit, not counted
		}
		m.exits++
		if err := m.vcpu.getRegs(&regs); err != nil {
			return Result{Exits: m.exits}, err
		}
		x := exitContext{m: m, point: replay.ExecPoint{Exit: m.exits, Regs: regs}, regs: regs}
		done, status, err := m.handle(&x, exit)
		if err != nil {
			return Result{Exits: m.exits}, err
		}
		if done {
			return Result{Status: status, Exits: m.exits}, nil
		}
		if x.dirty {
			if err := m.vcpu.setRegs(&x.regs); err != nil {
				return Result{Exits: m.exits}, err
			}
		}
	}
}

// handle dispatches one guest-caused exit.
func (m *Machine) handle(x *exitContext, e Exit) (done bool, status int, err error) {
	switch e.Kind {
	case ExitIOOut:
		return m.bus.out(x, e.Port)
	case ExitIOIn:
		return false, 0, x.fault(fmt.Sprintf("in from port %#x (ports are write-only: see guests/ABI.md)", e.Port))
	case ExitMMIO:
		return false, 0, x.fault(fmt.Sprintf("access to guest-physical address %#x, which is not RAM", e.Addr))
	case ExitShutdown:
		return false, 0, x.fault("triple fault (an exception while delivering an exception)")
	case ExitHLT:
		return false, 0, x.fault("halt")
	case ExitFailEntry:
		return false, 0, fmt.Errorf("vmm: KVM could not enter the guest (hardware entry failure reason %#x)", e.Code)
	case ExitInternalError:
		return false, 0, fmt.Errorf("vmm: KVM internal error, suberror %d, at exit %d rip %#x", e.Code, x.point.Exit, x.point.Regs.RIP)
	default:
		return false, 0, fmt.Errorf("vmm: unexpected KVM exit reason %d at rip %#x", e.Code, x.point.Regs.RIP)
	}
}

// StateDigest hashes the registers and all of guest RAM: two runs that
// ended in the same state have the same digest.
func (m *Machine) StateDigest() ([32]byte, error) {
	var r replay.Regs
	if err := m.vcpu.getRegs(&r); err != nil {
		return [32]byte{}, err
	}
	return replay.StateDigest(&r, m.ram), nil
}

// Regs reads the vCPU's general registers. Must not be called while Run is
// running.
func (m *Machine) Regs() (replay.Regs, error) {
	var r replay.Regs
	err := m.vcpu.getRegs(&r)
	return r, err
}

// Close releases the VM. Must not be called while Run is running.
func (m *Machine) Close() error {
	if m.closed {
		return nil
	}
	m.closed = true
	if m.vcpu != nil {
		m.vcpu.close()
	}
	if m.ram != nil {
		unix.Munmap(m.ram)
	}
	if m.vmFD >= 0 {
		unix.Close(m.vmFD)
	}
	if m.kvmFD >= 0 {
		unix.Close(m.kvmFD)
	}
	return nil
}
