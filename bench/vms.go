package bench

import (
	"bytes"
	"context"
	"errors"
	"io"
	"strings"
	"sync"
	"time"

	"github.com/ftvm/ftvm/logchannel"
	"github.com/ftvm/ftvm/replay"
	"github.com/ftvm/ftvm/splitbrain"
	"github.com/ftvm/ftvm/vmm"
	"github.com/ftvm/ftvm/vmm/backend"
	"github.com/ftvm/ftvm/vmm/ft"
	"github.com/ftvm/ftvm/vmm/session"
	"github.com/ftvm/ftvm/vmm/vnet"
)

// Mode is how a workload's VM runs.
type Mode string

const (
	Plain Mode = "plain" // ftvm run
	// FT: a primary and a backup over loopback, each in a process of its
	// own (Options.FTVM given) or both in this process (go test).
	FT Mode = "ft"
	// FTNoTLS is FT with the logging channel in clear (--insecure-no-tls),
	// to measure what TLS costs.
	FTNoTLS Mode = "ft-no-tls"
	// Record: a plain run recorded into memory, for the log's composition.
	Record Mode = "record"
)

// vmRun is one VM run's figures.
type vmRun struct {
	Elapsed time.Duration
	Stdout  string
	Primary ft.PrimaryStats // FT only
	Log     []byte          // Record only
	// Side and Backup: the figures of the plain VM's or the primary's
	// process and of the backup's (runs in processes only).
	Side, Backup MemberStats
	Err          error
}

// vmSpec says what to run.
type vmSpec struct {
	Backend backend.Backend
	Image   *vmm.Image
	Config  vmm.Config
	Stdin   string
	Net     *vnet.Spec
	// ImagePath and NetSpec are Image and Net as a member process gets
	// them: the ELF file and the --net spec.
	ImagePath, NetSpec string
	// Netns, if set, is the network namespace member processes run in
	// (their TAP device is there).
	Netns string
	// Disk is the disk image, or ""; DiskLocal gives each side a copy of
	// its own: the backup's is Disk+".backup", which the caller makes.
	Disk      string
	DiskLocal bool
	// FailoverTimeout is the logging channel's (0: its default).
	FailoverTimeout time.Duration
	// Ready, if set, is called once the VM runs, and the VM is stopped when
	// it returns (for servers that never exit).
	Ready func(ctx context.Context)
}

// startVM runs spec in mode until the guest ends or spec.Ready returns.
func startVM(ctx context.Context, mode Mode, spec vmSpec, arbDir string) vmRun {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var out strings.Builder
	var run vmRun
	stdout := &lockedBuilder{b: &out}
	openNet := func(bind bool) (vnet.Backend, error) {
		if spec.Net == nil {
			return nil, nil
		}
		if bind {
			return vnet.Open(*spec.Net)
		}
		return vnet.New(*spec.Net)
	}
	readyDone := make(chan struct{})
	if spec.Ready != nil {
		go func() {
			defer close(readyDone)
			time.Sleep(50 * time.Millisecond) // let the VM reach its idle loop
			spec.Ready(ctx)
			cancel()
		}()
	} else {
		close(readyDone)
	}
	pdisk, err := openBenchDisk(spec.Disk, spec.DiskLocal, &spec.Config)
	if err != nil {
		return vmRun{Err: err}
	}
	defer pdisk.Close()
	began := time.Now()
	switch mode {
	case Plain, Record:
		live := vmm.NewLiveWorld(ctx, strings.NewReader(spec.Stdin), stdout)
		if pdisk.shared != nil {
			live.AttachDisk(pdisk.shared)
		}
		nb, err := openNet(true)
		if err != nil {
			return vmRun{Err: err}
		}
		if nb != nil {
			defer nb.Close()
			live.AttachNet(nb)
		}
		var log bytes.Buffer
		enc := replay.NewEncoder(&log)
		if mode == Record {
			_, run.Err = session.Record(ctx, spec.Backend, spec.Image, spec.Config, "bench", live, enc)
		} else {
			_, run.Err = session.RunOn(ctx, spec.Backend, spec.Image, spec.Config, live)
		}
		enc.Flush()
		run.Log = log.Bytes()
	case FT, FTNoTLS:
		run.Err = runFT(ctx, spec, pdisk, stdout, openNet, arbDir, mode == FTNoTLS, &run)
	}
	run.Elapsed = time.Since(began)
	if spec.Ready != nil && errors.Is(run.Err, vmm.ErrInterrupted) {
		run.Err = nil // stopped on purpose
	}
	cancel()
	<-readyDone
	run.Stdout = out.String()
	return run
}

func runFT(ctx context.Context, spec vmSpec, pdisk vmDisk, stdout io.Writer, openNet func(bool) (vnet.Backend, error), arbDir string, inClear bool, run *vmRun) error {
	bcfg := spec.Config
	bdisk := pdisk // a shared disk: the backup opens it too, as on another host
	if spec.Disk != "" {
		path := spec.Disk
		if spec.DiskLocal {
			path += ".backup"
		}
		var err error
		if bdisk, err = openBenchDisk(path, spec.DiskLocal, &bcfg); err != nil {
			return err
		}
		defer bdisk.Close()
	}
	arb, err := splitbrain.Open("file://" + arbDir)
	if err != nil {
		return err
	}
	if _, err := arb.Init(ctx); err != nil {
		return err
	}
	gen, err := ft.TakeEpoch(ctx, arb, "bench", "bench")
	if err != nil {
		return err
	}
	ln, err := logchannel.Listen("127.0.0.1:0")
	if err != nil {
		return err
	}
	defer ln.Close()
	primaryTLS, backupTLS, err := logchannel.NewPairCredentials("bench")
	if err != nil {
		return err
	}
	common := func(role string, in io.Reader, out io.Writer, nb vnet.Backend) ft.Common {
		channel := logchannel.Config{TLS: primaryTLS}
		if role == "backup" {
			channel.TLS = backupTLS
		}
		if inClear {
			channel = logchannel.Config{InsecureNoTLS: true}
		}
		channel.FailoverTimeout = spec.FailoverTimeout
		cfg, disk := spec.Config, pdisk.shared
		if role == "backup" {
			cfg, disk = bcfg, bdisk.shared
		}
		return ft.Common{Backend: spec.Backend, Image: spec.Image, Config: cfg, VMID: "bench", Generation: gen, Arbiter: arb,
			Claimant: role, Stdin: in, Stdout: out, Net: nb, Disk: disk, Channel: channel}
	}
	bnet, err := openNet(false)
	if err != nil {
		return err
	}
	if bnet != nil {
		defer bnet.Close()
	}
	backupDone := make(chan struct{})
	go func() {
		defer close(backupDone)
		ft.RunBackup(ctx, ft.BackupOptions{Common: common("backup", strings.NewReader(""), io.Discard, bnet), Listener: ln})
	}()
	pnet, err := openNet(true)
	if err != nil {
		return err
	}
	if pnet != nil {
		defer pnet.Close()
	}
	_, err = ft.RunPrimary(ctx, ft.PrimaryOptions{Common: common("primary", strings.NewReader(spec.Stdin), stdout, pnet), BackupAddr: ln.Addr().String(),
		OnDone: func(s ft.PrimaryStats) { run.Primary = s }})
	<-backupDone
	return err
}

// lockedBuilder is console output written by the VM's and the ack goroutine.
type lockedBuilder struct {
	mu sync.Mutex
	b  *strings.Builder
}

func (l *lockedBuilder) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func (l *lockedBuilder) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

// vmDisk is a VM's disk in a benchmark: shared (the world's) or a local
// copy (in the config).
type vmDisk struct {
	shared, local *vmm.DiskFile
}

// openBenchDisk opens path ("" for none) and puts the disk in cfg.
func openBenchDisk(path string, local bool, cfg *vmm.Config) (vmDisk, error) {
	if path == "" {
		return vmDisk{}, nil
	}
	d, err := vmm.OpenDiskFile(path)
	if err != nil {
		return vmDisk{}, err
	}
	cfg.Disk = &vmm.DiskConfig{Size: d.Size()}
	if !local {
		return vmDisk{shared: d}, nil
	}
	digest, err := vmm.DiskDigest(path)
	if err != nil {
		d.Close()
		return vmDisk{}, err
	}
	cfg.Disk.Local, cfg.Disk.Digest, cfg.Disk.File = true, digest, d
	return vmDisk{local: d}, nil
}

// Close closes the disk, whichever it is.
func (b vmDisk) Close() {
	if b.shared != nil {
		b.shared.Close()
	}
	if b.local != nil {
		b.local.Close()
	}
}
