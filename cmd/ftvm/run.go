package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/ftvm/ftvm/vmm"
	"github.com/ftvm/ftvm/vmm/backend"
	"github.com/ftvm/ftvm/vmm/backends"
	"github.com/ftvm/ftvm/vmm/vnet"
)

// sizeFlag is a memory size flag such as --mem 64M.
type sizeFlag struct{ v uint64 }

func (s *sizeFlag) String() string { return fmt.Sprint(s.v) }
func (s *sizeFlag) Set(v string) error {
	n, err := vmm.ParseSize(v)
	s.v = n
	return err
}

// guestFlags are the flags every command that starts a guest takes.
type guestFlags struct {
	backend string
	be      backend.Backend // chosen by loadGuest
	mem     sizeFlag
	net     string
	pcap    string
	vmID    string
	spec    *vnet.Spec
	disk    string        // --disk
	df      *vmm.DiskFile // opened by loadGuest
	cmd     string        // the command, for messages
}

func (g *guestFlags) register(fs *flag.FlagSet) {
	g.mem.v = vmm.DefaultMemory
	registerBackend(fs, &g.backend)
	fs.Var(&g.mem, "mem", "guest memory (e.g. 64M, 1G)")
	fs.StringVar(&g.net, "net", "", "a NIC: user,hostfwd=udp:HOSTADDR:HOSTPORT-:GUESTPORT[,...] or tap,ifname=NAME[,ip=A.B.C.D/N,gw=A.B.C.D]")
	fs.StringVar(&g.pcap, "pcap", "", "write every frame the guest sends and receives to `FILE` (pcap)")
	fs.StringVar(&g.vmID, "vm-id", "ftvm", "the VM's name (its default MAC derives from it)")
	fs.StringVar(&g.disk, "disk", "", "a disk: the image `FILE` (its size is the disk's, a multiple of 4 KiB), shared by primary and backup (only the live side writes it); FILE,local: each side has a copy of its own and writes it")
}

// openDisk opens --disk, if given, into g.df and cfg.Disk.
func (g *guestFlags) openDisk(cfg *vmm.Config) error {
	if g.disk == "" {
		return nil
	}
	path, mode, _ := strings.Cut(g.disk, ",")
	if mode != "" && mode != "local" {
		return usagef("--disk %s: unknown mode %q (FILE for a shared disk, FILE,local for a copy on each side)", g.disk, mode)
	}
	d, err := vmm.OpenDiskFile(path)
	if err != nil {
		return err
	}
	g.df = d
	cfg.Disk = &vmm.DiskConfig{Size: d.Size()}
	if mode == "local" {
		// Both sides' copies must be the same when the VM starts: their
		// digest is part of the configuration the handshake compares.
		if cfg.Disk.Digest, err = vmm.DiskDigest(path); err != nil {
			return err
		}
		cfg.Disk.Local, cfg.Disk.File = true, d
	}
	return nil
}

// sharedDisk is the disk the world reads and writes: --disk FILE, not a
// local one (which the machine's device writes itself).
func (g *guestFlags) sharedDisk() *vmm.DiskFile {
	if g.df == nil || strings.HasSuffix(g.disk, ",local") {
		return nil
	}
	return g.df
}

// closeDisk writes what the guest's released writes left and closes the
// disk, reporting an error that would lose data.
func (g *guestFlags) closeDisk() {
	if g.df != nil {
		if err := g.df.Close(); err != nil {
			fmt.Fprintf(os.Stderr, "ftvm %s: %v\n", g.cmd, err)
		}
	}
}

// registerBackend adds --backend, whose default is $FTVM_BACKEND or auto.
func registerBackend(fs *flag.FlagSet, v *string) {
	def := os.Getenv("FTVM_BACKEND")
	if def == "" {
		def = "auto"
	}
	fs.StringVar(v, "backend", def, "how guest code runs: "+backends.Names+" (auto: kvm when /dev/kvm is usable, else ptrace; default from $FTVM_BACKEND)")
}

// chooseBackend resolves --backend and says on stderr which backend runs
// the guest, and why when auto passed KVM over.
func chooseBackend(cmd, name string) (backend.Backend, error) {
	b, err := backends.Choose(name)
	if err != nil {
		return nil, err
	}
	why := ""
	if (name == "auto" || name == "") && b.Name() != "kvm" {
		if b, err := backends.Get("kvm"); err == nil {
			why = fmt.Sprintf(" (kvm is not usable: %v)", b.Usable())
		}
	}
	fmt.Fprintf(os.Stderr, "ftvm %s: backend %s%s\n", cmd, b.Name(), why)
	return b, nil
}

// openNet opens the network backend the flags ask for, bound now (bind
// false: created but bound later, for a backup). nil when there is no NIC.
func (g *guestFlags) openNet(bind bool) (vnet.Backend, error) {
	if g.spec == nil {
		return nil, nil
	}
	open := vnet.New
	if bind {
		open = vnet.Open
	}
	b, err := open(*g.spec)
	if err != nil {
		return nil, err
	}
	if g.pcap != "" {
		f, err := os.Create(g.pcap)
		if err != nil {
			b.Close()
			return nil, err
		}
		p, err := vnet.WithPcap(b, f)
		if err != nil {
			b.Close()
			return nil, err
		}
		return p, nil
	}
	return b, nil
}

// loadGuest reads and rewrites the image and builds the VM config from the
// guest's arguments.
func (g *guestFlags) loadGuest(args []string) (*vmm.Image, vmm.Config, error) {
	if len(args) < 1 {
		return nil, vmm.Config{}, usagef("missing GUEST.elf")
	}
	var spec *vnet.Spec
	if g.net != "" {
		s, err := vnet.ParseSpec(g.net, g.vmID)
		if err != nil {
			return nil, vmm.Config{}, usageError{err}
		}
		spec = &s
	} else if g.pcap != "" {
		return nil, vmm.Config{}, usagef("--pcap needs --net")
	}
	file, err := os.ReadFile(args[0])
	if err != nil {
		return nil, vmm.Config{}, err
	}
	img, err := vmm.LoadELF(file)
	if err != nil {
		return nil, vmm.Config{}, fmt.Errorf("%s: %w", args[0], err)
	}
	if g.be, err = chooseBackend(g.cmd, g.backend); err != nil {
		return nil, vmm.Config{}, err
	}
	cfg := vmm.Config{MemSize: g.mem.v, Cmdline: strings.Join(args[1:], " ")}
	if spec != nil {
		g.spec = spec
		cfg.NIC = &vmm.NICConfig{Addr: spec.Addr, Gateway: spec.Gateway}
		copy(cfg.NIC.MAC[:], spec.MAC)
	}
	if err := g.openDisk(&cfg); err != nil {
		return nil, vmm.Config{}, err
	}
	return img, cfg, nil
}

// newFlagSet makes a flag set that reports errors instead of exiting, and
// stops at the first positional argument so guest arguments pass through.
func newFlagSet(name, usage string) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "usage: ftvm %s %s\n", name, usage)
		fs.PrintDefaults()
	}
	return fs
}

// interruptContext is cancelled on SIGINT or SIGTERM.
func interruptContext() (context.Context, context.CancelFunc) {
	return signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
}

// exitStatus turns the end of a run into ftvm's exit status, reporting errors.
func exitStatus(res vmm.Result, err error) int {
	var fault *vmm.GuestFault
	switch {
	case err == nil:
		return res.Status
	case errors.As(err, &fault):
		fmt.Fprintf(os.Stderr, "ftvm: %v\nftvm: registers: %s\n", err, fault.RegisterDump())
		return exitGuestFault
	case errors.Is(err, vmm.ErrInterrupted), errors.Is(err, context.Canceled):
		fmt.Fprintln(os.Stderr, "ftvm: interrupted; VM stopped")
		return exitInterrupted
	default:
		fmt.Fprintf(os.Stderr, "ftvm: %v\n", err)
		return exitFailed
	}
}

func cmdRun(args []string) int {
	fs := newFlagSet("run", "[--backend auto|kvm|ptrace] [--mem SIZE] [--net SPEC [--pcap FILE]] [--disk FILE] [--from-snapshot FILE] GUEST.elf [ARGS...]")
	g := guestFlags{cmd: "run"}
	g.register(fs)
	fromSnap := fs.String("from-snapshot", "", "start the guest from the snapshot in `FILE` (its arguments and memory size come from it)")
	if err := fs.Parse(args); err != nil {
		return exitUsage
	}
	img, cfg, err := g.loadGuest(fs.Args())
	if err != nil {
		fmt.Fprintf(os.Stderr, "ftvm run: %v\n", err)
		return failStatus(err)
	}
	defer g.closeDisk()
	ctx, cancel := interruptContext()
	defer cancel()
	world := vmm.NewLiveWorld(ctx, os.Stdin, os.Stdout)
	if d := g.sharedDisk(); d != nil {
		world.AttachDisk(d)
	}
	netb, err := g.openNet(true)
	if err != nil {
		fmt.Fprintf(os.Stderr, "ftvm run: --net: %v\n", err)
		return exitFailed
	}
	if netb != nil {
		defer netb.Close()
		world.AttachNet(netb)
	}
	if *fromSnap != "" {
		return runFromSnapshot(ctx, g.be, img, cfg, *fromSnap, world)
	}
	m, err := vmm.New(g.be, img, cfg, world)
	if err != nil {
		fmt.Fprintf(os.Stderr, "ftvm run: %v\n", err)
		return exitFailed
	}
	defer m.Close()
	return exitStatus(m.Run(ctx))
}

func cmdInspect(args []string) int {
	fs := newFlagSet("inspect", "GUEST.elf")
	if err := fs.Parse(args); err != nil {
		return exitUsage
	}
	if fs.NArg() != 1 {
		fs.Usage()
		return exitUsage
	}
	file, err := os.ReadFile(fs.Arg(0))
	if err != nil {
		fmt.Fprintf(os.Stderr, "ftvm inspect: %v\n", err)
		return exitFailed
	}
	img, err := vmm.LoadELF(file)
	if err != nil {
		fmt.Fprintf(os.Stderr, "ftvm inspect: %s: %v\n", fs.Arg(0), err)
		return exitFailed
	}
	fmt.Print(vmm.Describe(img))
	return 0
}
