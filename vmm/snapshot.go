package vmm

import (
	"bytes"
	"errors"
	"fmt"
	"time"

	"github.com/ftvm/ftvm/replay"
	"github.com/ftvm/ftvm/vmm/backend"
	"golang.org/x/sys/unix"
)

// State is everything of a machine stopped between two guest-caused exits
// that its guest can observe later, in a form that does not depend on the
// backend it ran on: a machine restored from it on any backend carries on
// exactly as the original would have. It is what a snapshot file holds and
// what a live transfer to a new backup will send.
//
// Not in it, because the guest cannot observe it or it is rebuilt from the
// image and config: the VMM's private tables (GDT, TSS, IDT, page tables),
// segment selectors (unspecified by the ABI), FS/GS base (0 at entry; the
// ABI gives a guest no portable way to change them), the NIC's receive
// queue and console input (they belong to the World: a replay takes them
// from the log, a plain run from its new world).
type State struct {
	// What the state belongs to: it restores only for the same image,
	// CPUID table and configuration, under the same ABI profile.
	ImageSHA256  [32]byte
	CPUIDDigest  [32]byte
	ConfigDigest [32]byte
	ABIProfile   string
	// Config is Config.Text() of the machine, so that a run from the
	// state rebuilds the same VM without being told its configuration.
	Config string
	// Backend names the backend the state was captured on (information
	// only: it restores on every backend).
	Backend string
	// Exits is the number of guest-caused exits before the state.
	Exits uint64
	// Log is the recording's position at the state (Seq 0: the run was
	// not recorded), and LogVMID the VMID of that recording's start entry.
	Log     replay.Position
	LogVMID string
	// Seen is the last virtual TSC and monotonic clock value the guest
	// was given: a live world continuing from the state starts after them.
	Seen seenTime
	// Regs are the general registers the guest resumes with (RIP past
	// the exit's instruction, the exit's result in RAX).
	Regs replay.Regs
	FP   backend.FPState
	// MemSize is the size of guest RAM; Perms each page's access as the
	// image loaded it (a restore checks that it loads the same).
	MemSize uint64
	Perms   []byte
	// RAM holds the pages of guest RAM that are not all zero, as runs of
	// consecutive pages in ascending order; every other page is zero.
	RAM []MemRun

	// CaptureTime is how long the capture stopped the guest (not part
	// of the file).
	CaptureTime time.Duration
}

// MemRun is Data (a whole number of pages) at page number FirstPage.
type MemRun struct {
	FirstPage uint64
	Data      []byte
}

// SeenTime returns the last virtual TSC and monotonic clock values the
// guest saw before the state, for LiveWorld.ContinueFrom.
func (s *State) SeenTime() (tsc, monotonic uint64) { return s.Seen.TSC, s.Seen.Monotonic }

// ErrStateMismatch is wrapped by the error of a restore refused because
// the state belongs to another image, CPUID table, configuration or ABI.
var ErrStateMismatch = errors.New("the snapshot is not of this VM")

// CaptureAfter makes Run capture the machine's state after it has handled
// exit n, before the guest resumes, and call take with it on the vCPU
// thread (where a recorder's position may be read). The guest is stopped
// only for the capture and take: take should hand slow work (writing a
// file) to another goroutine. An error from take ends the run. Must be
// called before Run.
//
// The pages are copied into a buffer as large as guest RAM that is
// allocated and faulted in here, in the background while the guest runs:
// faulting in fresh memory costs far more than copying into it (on this
// host, 0.1-1 s against 16 ms for 256 MiB), and would otherwise all fall
// inside the pause.
func (m *Machine) CaptureAfter(n uint64, take func(*State) error) {
	m.captureAt, m.capture = n, take
	m.stage = make(chan []byte, 1)
	go func(size uint64) { m.stage <- faultedBuffer(size) }(m.cfg.MemSize)
}

// faultedBuffer returns size bytes whose pages are already backed.
func faultedBuffer(size uint64) []byte {
	b := make([]byte, size)
	for i := 0; i < len(b); i += pageSize {
		b[i] = 0 // a write fault backs the page
	}
	return b
}

// stagedBuffer returns the buffer CaptureAfter prepared, if it is ready.
func (m *Machine) stagedBuffer() []byte {
	select {
	case b := <-m.stage:
		return b
	default:
		return nil // not faulted in yet: the capture allocates its own
	}
}

func (m *Machine) takeCapture(regs *replay.Regs) error {
	t0 := time.Now()
	st, err := m.captureState(regs)
	if err != nil {
		return err
	}
	st.CaptureTime = time.Since(t0)
	return m.capture(st)
}

// captureState copies the machine's state with the guest about to resume
// with regs. Must be called on the vCPU thread, with the vCPU stopped.
func (m *Machine) captureState(regs *replay.Regs) (*State, error) {
	st, err := m.captureCPUState(regs)
	if err != nil {
		return nil, err
	}
	ram, err := nonZeroPages(m.ramFile, m.ram, m.stagedBuffer())
	if err != nil {
		return nil, err
	}
	st.RAM = ram
	return st, nil
}

// captureCPUState is captureState without RAM: what the guest resumes
// with besides its memory. Same preconditions.
func (m *Machine) captureCPUState(regs *replay.Regs) (*State, error) {
	st := &State{
		ImageSHA256: m.guest.img.Hash, CPUIDDigest: CPUIDDigest(), ConfigDigest: ConfigDigest(m.cfg),
		ABIProfile: ABIProfile, Config: m.cfg.Text(), Backend: m.backend,
		Exits: m.exits, Seen: m.seen, Regs: *regs, MemSize: m.cfg.MemSize,
	}
	if err := m.vcpu.FPState(&st.FP); err != nil {
		return nil, fmt.Errorf("vmm: capturing the FPU state: %w", err)
	}
	st.Perms = make([]byte, len(m.guest.mem.perms))
	for i, p := range m.guest.mem.perms {
		st.Perms[i] = byte(p)
	}
	return st, nil
}

var zeroPage [pageSize]byte

// nonZeroPages copies the pages of ram that are not all zero, into stage
// if it is large enough. Only the extents the memfd has data in are read
// (SEEK_DATA), so the holes of a large, mostly untouched guest cost
// nothing and are not faulted in.
func nonZeroPages(f interface{ Fd() uintptr }, ram, stage []byte) ([]MemRun, error) {
	var pages [][2]uint64 // [first, count) of non-zero pages
	total := uint64(0)
	err := eachNonZeroPage(f, ram, func(first, n uint64) error {
		pages = append(pages, [2]uint64{first, n})
		total += n
		return nil
	})
	if err != nil {
		return nil, err
	}
	buf := stage
	if uint64(len(buf)) < total*pageSize {
		buf = make([]byte, total*pageSize)
	}
	runs := make([]MemRun, len(pages))
	for i, r := range pages {
		n := copyChunked(buf, ram[r[0]*pageSize:(r[0]+r[1])*pageSize])
		runs[i] = MemRun{FirstPage: r[0], Data: buf[:n:n]}
		buf = buf[n:]
	}
	return runs, nil
}

// eachNonZeroPage calls f for each run of consecutive pages of ram that are
// not all zero, in ascending order. Only the extents the memfd has data in
// are read (SEEK_DATA), so the holes of a large, mostly untouched guest
// cost nothing and are not faulted in.
func eachNonZeroPage(f interface{ Fd() uintptr }, ram []byte, each func(first, n uint64) error) error {
	fd := int(f.Fd())
	size := int64(len(ram))
	var run [2]uint64 // the run being gathered: [first, count)
	for off := int64(0); off < size; {
		data, err := unix.Seek(fd, off, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) {
			break
		}
		if err != nil {
			return fmt.Errorf("vmm: finding guest RAM's data (SEEK_DATA): %w", err)
		}
		hole, err := unix.Seek(fd, data, unix.SEEK_HOLE)
		if err != nil {
			return fmt.Errorf("vmm: finding guest RAM's holes (SEEK_HOLE): %w", err)
		}
		hole = min(hole, size)
		for p := uint64(data) / pageSize; p*pageSize < uint64(hole); p++ {
			if bytes.Equal(ram[p*pageSize:(p+1)*pageSize], zeroPage[:]) {
				continue
			}
			if run[1] > 0 && run[0]+run[1] == p {
				run[1]++
				continue
			}
			if run[1] > 0 {
				if err := each(run[0], run[1]); err != nil {
					return err
				}
			}
			run = [2]uint64{p, 1}
		}
		off = hole
	}
	if run[1] > 0 {
		return each(run[0], run[1])
	}
	return nil
}

// copyChunked is copy in 4 MiB steps: one memmove of hundreds of MiB
// cannot be preempted, and a garbage collection waiting for it spins.
func copyChunked(dst, src []byte) int {
	const chunk = 4 << 20
	n := 0
	for n < len(src) && n < len(dst) {
		n += copy(dst[n:], src[n:min(n+chunk, len(src))])
	}
	return n
}

// MachineConfig returns the configuration the state was captured with,
// after checking that the state belongs to img under this VMM's ABI and
// CPUID table; a refusal wraps ErrStateMismatch.
func (s *State) MachineConfig(img *Image) (Config, error) {
	cfg, err := ParseConfigText(s.Config)
	if err != nil {
		return Config{}, fmt.Errorf("vmm: snapshot: %w", err)
	}
	if err := s.CheckFor(img, cfg); err != nil {
		return Config{}, err
	}
	return cfg, nil
}

// CheckFor refuses, wrapping ErrStateMismatch, a state that does not
// belong to img run with cfg here.
func (s *State) CheckFor(img *Image, cfg Config) error {
	var diffs []string
	if s.ABIProfile != ABIProfile {
		diffs = append(diffs, fmt.Sprintf("ABI profile %q, here %q", s.ABIProfile, ABIProfile))
	}
	for _, f := range []struct {
		what       string
		theirs, my [32]byte
	}{
		{"guest image", s.ImageSHA256, img.Hash},
		{"cpuid table", s.CPUIDDigest, CPUIDDigest()},
		{"configuration", s.ConfigDigest, ConfigDigest(cfg)},
	} {
		if f.theirs != f.my {
			diffs = append(diffs, fmt.Sprintf("%s %x, here %x", f.what, f.theirs[:8], f.my[:8]))
		}
	}
	if diffs != nil {
		return fmt.Errorf("vmm: refusing the snapshot (%s): %w", joinDiffs(diffs), ErrStateMismatch)
	}
	if s.MemSize != cfg.withDefaults().MemSize {
		return fmt.Errorf("vmm: refusing the snapshot: %d bytes of RAM, the configuration has %d: %w", s.MemSize, cfg.withDefaults().MemSize, ErrStateMismatch)
	}
	return nil
}

func joinDiffs(d []string) string {
	var b bytes.Buffer
	for i, s := range d {
		if i > 0 {
			b.WriteString("; ")
		}
		b.WriteString(s)
	}
	return b.String()
}

// Restore creates a machine on b for img with the configuration of st,
// restored to st: the first Run resumes the guest where the state was
// captured. A state of another image, CPUID table, configuration or ABI is
// refused (ErrStateMismatch).
func Restore(b backend.Backend, img *Image, st *State, world replay.World) (*Machine, error) {
	cfg, err := st.MachineConfig(img)
	if err != nil {
		return nil, err
	}
	m, err := New(b, img, cfg, world)
	if err != nil {
		return nil, err
	}
	if err := m.restore(st); err != nil {
		m.Close()
		return nil, err
	}
	return m, nil
}

func (m *Machine) restore(st *State) error {
	perms := m.guest.mem.perms
	if len(st.Perms) != len(perms) {
		return fmt.Errorf("vmm: the snapshot has %d pages, this VM %d: %w", len(st.Perms), len(perms), ErrStateMismatch)
	}
	for i, p := range perms {
		if st.Perms[i] != byte(p) {
			return fmt.Errorf("vmm: page %#x is loaded with access %d, the snapshot's had %d: %w", i*pageSize, p, st.Perms[i], ErrStateMismatch)
		}
	}
	// All of RAM becomes zero, then the snapshot's pages are written.
	if err := unix.Fallocate(int(m.ramFile.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, 0, int64(len(m.ram))); err != nil {
		return fmt.Errorf("vmm: clearing guest RAM for the snapshot: %w", err)
	}
	for _, r := range st.RAM {
		if r.FirstPage > uint64(len(m.ram))/pageSize || uint64(len(r.Data)) > uint64(len(m.ram))-r.FirstPage*pageSize {
			return fmt.Errorf("vmm: snapshot pages at %#x (%d bytes) lie outside RAM", r.FirstPage*pageSize, len(r.Data))
		}
		copy(m.ram[r.FirstPage*pageSize:], r.Data)
	}
	var err error
	m.vcpu.Do(func() {
		if err = m.vcpu.SetFPState(&st.FP); err != nil {
			return
		}
		err = m.vcpu.SetRegs(&st.Regs)
	})
	if err != nil {
		return fmt.Errorf("vmm: restoring the vCPU: %w", err)
	}
	regs := st.Regs
	m.resume = &regs
	m.exits, m.seen = st.Exits, st.Seen
	return nil
}

// FPState reads the vCPU's x87 and SSE state. Must not be called while Run
// is running.
func (m *Machine) FPState() (backend.FPState, error) {
	var s backend.FPState
	var err error
	m.vcpu.Do(func() { err = m.vcpu.FPState(&s) })
	return s, err
}

// Exits is the number of guest-caused exits so far.
func (m *Machine) Exits() uint64 { return m.exits }

// Pages is the number of non-zero pages of RAM the state holds.
func (s *State) Pages() int {
	n := 0
	for _, r := range s.RAM {
		n += len(r.Data) / pageSize
	}
	return n
}
