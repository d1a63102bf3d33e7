package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/ftvm/ftvm/logchannel"
	"github.com/ftvm/ftvm/splitbrain"
	"github.com/ftvm/ftvm/vmm/ft"
)

// Placement says which cores a run's processes may use.
type Placement struct {
	Name string // "pinned" or "unpinned"
	// PrimaryCPU runs the plain VM or the primary, BackupCPU the backup
	// (taskset -c); "" leaves the process to the scheduler.
	PrimaryCPU, BackupCPU string
	// profile, if set, names the CPU profiles of a run made for them.
	profile string
}

func (p Placement) profiled() bool { return p.profile != "" }

var (
	Unpinned = Placement{Name: "unpinned"}
	// Pinned puts the primary (and the plain VM, for the same core) on
	// core 0 and the backup on core 1, as two hosts would have them.
	Pinned = Placement{Name: "pinned", PrimaryCPU: "0", BackupCPU: "1"}
)

// placements are the ones this machine can run: pinned needs two cores
// and taskset.
func placements() []Placement {
	if _, err := exec.LookPath("taskset"); err != nil || runtime.NumCPU() < 2 {
		return []Placement{Unpinned}
	}
	return []Placement{Pinned, Unpinned}
}

// procRun is what startProcVM needs beyond vmSpec: the member processes'
// binary, where they put their figures and profiles, and their cores.
type procRun struct {
	FTVM       string
	ImagePath  string
	Net        string // the --net spec of spec.Net
	Netns      string // "": the processes run in this one's network namespace
	Place      Placement
	ProfileDir string // "": no CPU profiles
	Profile    string // the profiles' name prefix
}

// startProcVM runs spec in mode with each VM in a process of its own
// (ftvm bench --member): plain as one process, FT as a pair of processes
// under ft.PairSupervisor, as ftvm pair runs them. The run's figures are
// the processes' own (MemberStats).
func startProcVM(ctx context.Context, mode Mode, spec vmSpec, pr procRun, arbDir string) vmRun {
	var run vmRun
	work, err := os.MkdirTemp("", "ftvm-bench-run-")
	if err != nil {
		return vmRun{Err: err}
	}
	defer os.RemoveAll(work)
	member := func(role string) MemberSpec {
		ms := MemberSpec{Role: role, Backend: spec.Backend.Name(), Image: pr.ImagePath, Cmdline: spec.Config.Cmdline, Net: pr.Net,
			Stats: filepath.Join(work, role+".json"), Disk: spec.Disk, DiskLocal: spec.DiskLocal, FailoverTimeout: spec.FailoverTimeout}
		if spec.DiskLocal && role == RoleBackup {
			ms.Disk += ".backup"
		}
		if pr.ProfileDir != "" {
			ms.CPUProfile = filepath.Join(pr.ProfileDir, pr.Profile+"-"+role+".pprof")
		}
		return ms
	}
	args := func(ms MemberSpec, cpu string) ([]string, error) {
		js, err := json.Marshal(ms)
		if err != nil {
			return nil, err
		}
		file := filepath.Join(work, ms.Role+"-spec.json")
		if err := os.WriteFile(file, js, 0o644); err != nil {
			return nil, err
		}
		a := []string{pr.FTVM, "bench", "--member", file}
		if cpu != "" {
			a = append([]string{"taskset", "-c", cpu}, a...)
		}
		if pr.Netns != "" {
			// ip netns exec replaces itself with the command: the
			// process started is the member itself.
			a = append([]string{"ip", "netns", "exec", pr.Netns}, a...)
		}
		return a, nil
	}
	var out strings.Builder
	stdout := &lockedBuilder{b: &out}
	ready := make(chan struct{})
	var stderr lockedBuilder
	stderr.b = &strings.Builder{}
	began := time.Now()
	var stop func()
	var wait func() error
	var roles []string
	switch mode {
	case Plain:
		ms := member(RolePlain)
		a, err := args(ms, pr.Place.PrimaryCPU)
		if err != nil {
			return vmRun{Err: err}
		}
		cmd := exec.Command(a[0], a[1:]...)
		cmd.Stdin, cmd.Stdout = strings.NewReader(spec.Stdin), stdout
		cmd.Stderr = &readyWatch{w: &stderr, want: memberReadyLine, seen: ready}
		if err := cmd.Start(); err != nil {
			return vmRun{Err: err}
		}
		stop = func() { cmd.Process.Signal(syscall.SIGTERM) }
		wait = func() error {
			err := cmd.Wait()
			if err != nil {
				return fmt.Errorf("bench: the plain VM's process: %w\n%s", err, stderr.String())
			}
			return nil
		}
		roles = []string{RolePlain}
	case FT, FTNoTLS:
		gen, err := takeEpoch(ctx, arbDir)
		if err != nil {
			return vmRun{Err: err}
		}
		addr, err := freeLoopbackAddr()
		if err != nil {
			return vmRun{Err: err}
		}
		tlsDir := ""
		if mode == FT {
			tlsDir = filepath.Join(work, "tls")
			if err := os.Mkdir(tlsDir, 0o700); err != nil {
				return vmRun{Err: err}
			}
			if err := logchannel.WritePairCredentials(tlsDir, "bench", RolePrimary, RoleBackup); err != nil {
				return vmRun{Err: err}
			}
		}
		p := member(RolePrimary)
		b := member(RoleBackup)
		for _, ms := range []*MemberSpec{&p, &b} {
			ms.Arbiter, ms.Generation, ms.Addr, ms.TLSDir = "file://"+arbDir, gen, addr, tlsDir
		}
		pa, err := args(p, pr.Place.PrimaryCPU)
		if err != nil {
			return vmRun{Err: err}
		}
		ba, err := args(b, pr.Place.BackupCPU)
		if err != nil {
			return vmRun{Err: err}
		}
		if pa[0] != ba[0] {
			return vmRun{Err: fmt.Errorf("bench: placement %q pins one side only", pr.Place.Name)}
		}
		signals := make(chan os.Signal, 1)
		sup := &ft.PairSupervisor{Exe: pa[0], PrimaryArgs: pa[1:], BackupArgs: ba[1:],
			Stdin: strings.NewReader(spec.Stdin), Stdout: stdout,
			Stderr:  &readyWatch{w: &stderr, want: "primary: connected to the backup", seen: ready},
			Signals: signals,
			Logf: func(format string, args ...any) {
				fmt.Fprintf(&stderr, "bench pair: %s\n", fmt.Sprintf(format, args...))
			}}
		done := make(chan int, 1)
		go func() { done <- sup.Run() }()
		stop = func() { signals <- syscall.SIGTERM }
		wait = func() error {
			defer close(signals)
			if status := <-done; status != 0 {
				return fmt.Errorf("bench: the pair ended with status %d\n%s", status, stderr.String())
			}
			return nil
		}
		roles = []string{RolePrimary, RoleBackup}
	default:
		return vmRun{Err: fmt.Errorf("bench: mode %s does not run as processes", mode)}
	}
	readyDone := make(chan struct{})
	if spec.Ready != nil {
		go func() {
			defer close(readyDone)
			select {
			case <-ready:
			case <-ctx.Done():
				return
			case <-time.After(30 * time.Second):
				return // the wait below reports why
			}
			time.Sleep(50 * time.Millisecond) // let the VM reach its idle loop
			spec.Ready(ctx)
			stop()
		}()
	} else {
		close(readyDone)
	}
	run.Err = wait()
	run.Elapsed = time.Since(began)
	<-readyDone
	run.Stdout = out.String()
	for _, role := range roles {
		var st MemberStats
		b, err := os.ReadFile(filepath.Join(work, role+".json"))
		if err == nil {
			err = json.Unmarshal(b, &st)
		}
		if err != nil && run.Err == nil {
			run.Err = fmt.Errorf("bench: the %s's figures: %w\n%s", role, err, stderr.String())
		}
		if st.Err != "" && run.Err == nil {
			run.Err = fmt.Errorf("bench: %s: %s", role, st.Err)
		}
		switch role {
		case RoleBackup:
			run.Backup = st
		default:
			run.Side = st
			if st.Channel != nil {
				run.Primary = ft.PrimaryStats{Channel: *st.Channel, OutputDelays: st.OutputDelays,
					Elapsed: time.Duration(st.VMSeconds * float64(time.Second))}
			}
		}
	}
	if spec.Ready == nil && run.Err == nil {
		// What the primary's clients see: its own run, not the pair's.
		run.Elapsed = time.Duration(run.Side.VMSeconds * float64(time.Second))
	}
	return run
}

// takeEpoch prepares the file arbiter in dir and takes a new epoch for a
// pair.
func takeEpoch(ctx context.Context, dir string) (uint64, error) {
	arb, err := splitbrain.Open("file://" + dir)
	if err != nil {
		return 0, err
	}
	if _, err := arb.Init(ctx); err != nil {
		return 0, err
	}
	return ft.TakeEpoch(ctx, arb, "bench", "bench")
}

func freeLoopbackAddr() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}

// readyWatch passes writes on to w and closes seen the first time a line
// contains want.
type readyWatch struct {
	mu   sync.Mutex
	w    *lockedBuilder
	want string
	seen chan struct{}
	buf  []byte
	done bool
}

func (r *readyWatch) Write(p []byte) (int, error) {
	r.w.Write(p)
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.done {
		return len(p), nil
	}
	r.buf = append(r.buf, p...)
	if bytes.Contains(r.buf, []byte(r.want)) {
		r.done = true
		close(r.seen)
		r.buf = nil
	} else if i := bytes.LastIndexByte(r.buf, '\n'); i >= 0 {
		r.buf = r.buf[i+1:]
	}
	return len(p), nil
}
