package bench

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime"
	"runtime/pprof"
	"syscall"
	"time"

	"github.com/ftvm/ftvm/logchannel"
	"github.com/ftvm/ftvm/splitbrain"
	"github.com/ftvm/ftvm/vmm"
	"github.com/ftvm/ftvm/vmm/backends"
	"github.com/ftvm/ftvm/vmm/ft"
	"github.com/ftvm/ftvm/vmm/session"
	"github.com/ftvm/ftvm/vmm/vnet"
)

// Roles of a member process (MemberSpec.Role).
const (
	RolePlain   = "plain"   // the guest alone, as ftvm run runs it
	RolePrimary = "primary" // the primary of a pair, as ftvm primary runs it
	RoleBackup  = "backup"  // the backup of a pair, as ftvm backup runs it
)

// memberReadyLine is written to stderr by a plain member when its VM
// starts; a primary's readiness is ft's "primary: connected to the backup".
const memberReadyLine = "bench member: plain VM starting"

// MemberSpec is what one VM process of a benchmark runs (ftvm bench
// --member FILE): the bench runs the plain VM, the primary and the backup
// each in a process of its own, so that each side's CPU time, allocations
// and profile are its own, as they are in deployment.
type MemberSpec struct {
	Role    string
	Backend string
	Image   string // the guest's ELF file
	Cmdline string
	Net     string // a --net spec for the VM id "bench"; "" for none
	// Arbiter, Generation: the pair's file arbiter and epoch (FT only).
	Arbiter    string
	Generation uint64
	// Addr is the backup's logging-channel address (FT only).
	Addr string
	// TLSDir holds the pair's credentials (logchannel.WritePairCredentials
	// for "primary" and "backup"); "" runs the channel in clear.
	TLSDir string
	// Stats is where the member writes its MemberStats (JSON).
	Stats string
	// CPUProfile, if set, is where the member writes a CPU profile of
	// the whole process while its VM runs.
	CPUProfile string
	// Disk is the VM's disk image (this member's copy of a local one).
	Disk      string
	DiskLocal bool
	// FailoverTimeout is the logging channel's (0: its default).
	FailoverTimeout time.Duration
}

// MemberStats are one member process's figures, measured by the process
// itself when its VM has stopped.
type MemberStats struct {
	Role string
	// VMSeconds is the time from starting the VM (a primary: from
	// dialling its backup) to its end, the last outputs released.
	VMSeconds float64
	// Exits are the guest-caused exits the VM ran (a backup: replayed).
	Exits uint64
	// UserSeconds and SysSeconds: getrusage(RUSAGE_SELF) of the Go
	// process, every thread. ChildUserSeconds and ChildSysSeconds:
	// getrusage(RUSAGE_CHILDREN), the reaped children: on ptrace the
	// traced guest process, whose own CPU time is not the VMM's.
	UserSeconds, SysSeconds           float64
	ChildUserSeconds, ChildSysSeconds float64
	// VoluntarySwitches and InvoluntarySwitches of the Go process
	// (rusage nvcsw, nivcsw): blocking waits and preemptions.
	VoluntarySwitches, InvoluntarySwitches int64
	// Mallocs and GCs while the VM ran (runtime.MemStats), the whole
	// process: the exit path, devices, the channel and the rest.
	Mallocs uint64
	GCs     uint32
	// GOMAXPROCS the process ended with: Go derives it from the CPU
	// affinity, so a process pinned to one core starts with 1, and the
	// VMM raises it to 2 when it runs a vCPU (vmm/procs.go).
	GOMAXPROCS int
	// Primary only: the channel's counters and every output's delay.
	Channel      *logchannel.Stats `json:",omitempty"`
	OutputDelays []time.Duration   `json:",omitempty"`
	Err          string            `json:",omitempty"`
}

// CPUSeconds is the member's CPU time, its children's included.
func (s MemberStats) CPUSeconds() float64 {
	return s.UserSeconds + s.SysSeconds + s.ChildUserSeconds + s.ChildSysSeconds
}

// RunMember runs the member the spec file describes until its VM stops
// or ctx ends (an interruption is how a server's run ends: not an error),
// writes its MemberStats and returns the process's exit status. Progress
// and errors go to stderr.
func RunMember(ctx context.Context, specFile string, stderr io.Writer) int {
	b, err := os.ReadFile(specFile)
	if err != nil {
		fmt.Fprintf(stderr, "bench member: %v\n", err)
		return 2
	}
	var spec MemberSpec
	if err := json.Unmarshal(b, &spec); err != nil {
		fmt.Fprintf(stderr, "bench member: %s: %v\n", specFile, err)
		return 2
	}
	st, err := runMember(ctx, spec, stderr)
	if err != nil && !errors.Is(err, vmm.ErrInterrupted) {
		st.Err = err.Error()
		fmt.Fprintf(stderr, "bench member %s: %v\n", spec.Role, err)
	}
	js, jerr := json.Marshal(st)
	if jerr == nil {
		jerr = writeAtomic(spec.Stats, js)
	}
	if jerr != nil {
		fmt.Fprintf(stderr, "bench member %s: writing its figures: %v\n", spec.Role, jerr)
		return 1
	}
	if st.Err != "" {
		return 1
	}
	return 0
}

func runMember(ctx context.Context, spec MemberSpec, stderr io.Writer) (MemberStats, error) {
	st := MemberStats{Role: spec.Role, GOMAXPROCS: runtime.GOMAXPROCS(0)}
	be, err := backends.Choose(spec.Backend)
	if err != nil {
		return st, err
	}
	elf, err := os.ReadFile(spec.Image)
	if err != nil {
		return st, err
	}
	img, err := vmm.LoadELF(elf)
	if err != nil {
		return st, err
	}
	cfg := vmm.Config{Cmdline: spec.Cmdline}
	var netSpec *vnet.Spec
	if spec.Net != "" {
		ns, err := vnet.ParseSpec(spec.Net, "bench")
		if err != nil {
			return st, err
		}
		netSpec, cfg = &ns, nicConfig(&ns, spec.Cmdline)
	}
	openNet := func(bind bool) (vnet.Backend, error) {
		if netSpec == nil {
			return nil, nil
		}
		if bind {
			return vnet.Open(*netSpec)
		}
		return vnet.New(*netSpec)
	}
	if spec.CPUProfile != "" {
		f, err := os.Create(spec.CPUProfile)
		if err != nil {
			return st, err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return st, err
		}
		defer pprof.StopCPUProfile()
	}
	logf := func(format string, args ...any) {
		fmt.Fprintf(stderr, "bench member %s: %s\n", spec.Role, fmt.Sprintf(format, args...))
	}
	disk, err := openBenchDisk(spec.Disk, spec.DiskLocal, &cfg)
	if err != nil {
		return st, err
	}
	defer disk.Close()
	var before runtime.MemStats
	runtime.ReadMemStats(&before)
	began := time.Now()
	var runErr error
	switch spec.Role {
	case RolePlain:
		live := vmm.NewLiveWorld(ctx, os.Stdin, os.Stdout)
		nb, err := openNet(true)
		if err != nil {
			return st, err
		}
		if nb != nil {
			defer nb.Close()
			live.AttachNet(nb)
		}
		if disk.shared != nil {
			live.AttachDisk(disk.shared)
		}
		fmt.Fprintln(stderr, memberReadyLine)
		var end session.End
		end, runErr = session.RunOn(ctx, be, img, cfg, live)
		st.Exits = end.Result.Exits
	case RolePrimary, RoleBackup:
		common, err := memberCommon(ctx, spec, img, cfg, openNet, logf)
		if err != nil {
			return st, err
		}
		if common.Net != nil {
			defer common.Net.Close()
		}
		common.Disk = disk.shared
		if spec.Role == RolePrimary {
			var ps ft.PrimaryStats
			_, runErr = ft.RunPrimary(ctx, ft.PrimaryOptions{Common: common, BackupAddr: spec.Addr,
				OnDone: func(s ft.PrimaryStats) { ps = s }})
			st.Channel, st.OutputDelays, st.Exits = &ps.Channel, ps.OutputDelays, ps.Channel.LastExit
		} else {
			ln, err := logchannel.Listen(spec.Addr)
			if err != nil {
				return st, err
			}
			defer ln.Close()
			var out ft.BackupOutcome
			out, runErr = ft.RunBackup(ctx, ft.BackupOptions{Common: common, Listener: ln})
			st.Exits = out.Summary.Exits
		}
	default:
		return st, fmt.Errorf("bench member: no role %q (plain, primary or backup)", spec.Role)
	}
	st.VMSeconds = time.Since(began).Seconds()
	var after runtime.MemStats
	runtime.ReadMemStats(&after)
	st.Mallocs, st.GCs = after.Mallocs-before.Mallocs, after.NumGC-before.NumGC
	st.GOMAXPROCS = runtime.GOMAXPROCS(0)
	readRusage(&st)
	if runErr != nil && ctx.Err() != nil {
		runErr = vmm.ErrInterrupted // stopped on purpose, whatever the error says
	}
	return st, runErr
}

// memberCommon is what a primary or a backup member shares with its peer.
func memberCommon(ctx context.Context, spec MemberSpec, img *vmm.Image, cfg vmm.Config, openNet func(bool) (vnet.Backend, error), logf func(string, ...any)) (ft.Common, error) {
	be, err := backends.Choose(spec.Backend)
	if err != nil {
		return ft.Common{}, err
	}
	arb, err := splitbrain.Open(spec.Arbiter)
	if err != nil {
		return ft.Common{}, err
	}
	channel := logchannel.Config{InsecureNoTLS: true}
	if spec.TLSDir != "" {
		f := logchannel.PairFiles(spec.TLSDir, spec.Role)
		creds, err := logchannel.LoadCredentials(f.Cert, f.Key, f.CA)
		if err != nil {
			return ft.Common{}, err
		}
		channel = logchannel.Config{TLS: creds}
	}
	channel.FailoverTimeout = spec.FailoverTimeout
	nb, err := openNet(spec.Role == RolePrimary)
	if err != nil {
		return ft.Common{}, err
	}
	var stdin io.Reader = os.Stdin
	var stdout io.Writer = os.Stdout
	if spec.Role == RoleBackup {
		stdin, stdout = eofReader{}, io.Discard
	}
	return ft.Common{Backend: be, Image: img, Config: cfg, VMID: "bench", Generation: spec.Generation, Arbiter: arb,
		Claimant: spec.Role, Stdin: stdin, Stdout: stdout, Net: nb, Channel: channel, Logf: logf}, nil
}

type eofReader struct{}

func (eofReader) Read([]byte) (int, error) { return 0, io.EOF }

// readRusage fills in st's CPU times and context switches.
func readRusage(st *MemberStats) {
	tv := func(t syscall.Timeval) float64 { return float64(t.Sec) + float64(t.Usec)/1e6 }
	var self, children syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &self) == nil {
		st.UserSeconds, st.SysSeconds = tv(self.Utime), tv(self.Stime)
		st.VoluntarySwitches, st.InvoluntarySwitches = self.Nvcsw, self.Nivcsw
	}
	if syscall.Getrusage(syscall.RUSAGE_CHILDREN, &children) == nil {
		st.ChildUserSeconds, st.ChildSysSeconds = tv(children.Utime), tv(children.Stime)
	}
}
