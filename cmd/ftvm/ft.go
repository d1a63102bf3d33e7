package main

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/ftvm/ftvm/logchannel"
	"github.com/ftvm/ftvm/vmm/ft"
)

// Exit statuses of a pair member besides the guest's own.
const (
	exitHalted   = 124               // lost the go-live test-and-set: this side halted
	exitDiverged = ft.StatusDiverged // the backup's replay diverged (also replay's status)
)

// ftFlags are the flags primary and backup share.
type ftFlags struct {
	guestFlags
	arbiter         string
	generation      uint64
	metrics         string
	failoverTimeout time.Duration
	heartbeat       time.Duration
	tls             tlsFlags
	joinListen      string
}

// tlsFlags say how a side proves who it is on the logging channel.
type tlsFlags struct {
	cert, key, ca string
	insecure      bool
}

func (t *tlsFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&t.cert, "tls-cert", "", "this side's logging-channel certificate `FILE` (PEM, from the pair's CA; see ftvm certs)")
	fs.StringVar(&t.key, "tls-key", "", "its private key `FILE` (PEM)")
	fs.StringVar(&t.ca, "tls-ca", "", "the pair's CA certificate `FILE` (PEM): the peer's certificate must come from it")
	fs.BoolVar(&t.insecure, "insecure-no-tls", false, "run the logging channel in clear: no encryption, no authentication (anyone who reaches the backup can feed it a log; anyone on the path reads the guest's inputs)")
}

// channel fills in cfg's TLS as the flags say.
func (t *tlsFlags) channel(cfg logchannel.Config) (logchannel.Config, error) {
	given := t.cert != "" || t.key != "" || t.ca != ""
	switch {
	case t.insecure && given:
		return cfg, usagef("--insecure-no-tls contradicts --tls-cert/--tls-key/--tls-ca")
	case t.insecure:
		cfg.InsecureNoTLS = true
		return cfg, nil
	case t.cert == "" || t.key == "" || t.ca == "":
		return cfg, usagef("the logging channel needs --tls-cert, --tls-key and --tls-ca (ftvm certs --dir DIR --vm-id ID makes them), or --insecure-no-tls to run it in clear")
	}
	creds, err := logchannel.LoadCredentials(t.cert, t.key, t.ca)
	if err != nil {
		return cfg, err
	}
	cfg.TLS = creds
	return cfg, nil
}

// insecureMark opens every status line of a side whose logging channel
// runs in clear.
const insecureMark = "[INSECURE: logging channel in clear, no TLS] "

func (f *ftFlags) register(fs *flag.FlagSet) {
	f.guestFlags.register(fs)
	fs.StringVar(&f.arbiter, "arbiter", "", "go-live arbiter: file:///DIR or s3://BUCKET/PREFIX?endpoint=URL (required)")
	fs.Uint64Var(&f.generation, "generation", 0, "deprecated: the pairing's epoch comes from the arbiter (the backup takes a new one, the primary joins it); if given, it must be the VM's current epoch")
	fs.StringVar(&f.metrics, "metrics", "", "serve Prometheus metrics on `ADDR` (/metrics)")
	fs.DurationVar(&f.failoverTimeout, "failover-timeout", logchannel.DefaultFailoverTimeout, "declare the peer dead after this long without hearing from it")
	fs.DurationVar(&f.heartbeat, "heartbeat", logchannel.DefaultHeartbeatInterval, "heartbeat interval while the log is idle")
	fs.StringVar(&f.joinListen, "join-listen", "", "once this side runs the guest alone (its backup lost, or it went live), take a new backup that joins it on `ADDR` (ftvm backup --join ADDR)")
	f.tls.register(fs)
}

// joinListener listens where --join-listen says, or returns nil.
func (f *ftFlags) joinListener(c ft.Common) (*logchannel.Listener, error) {
	if f.joinListen == "" {
		return nil, nil
	}
	ln, err := logchannel.Listen(f.joinListen)
	if err != nil {
		return nil, fmt.Errorf("--join-listen: %w", err)
	}
	c.Logf("new backups may join this side on %s once it runs the guest alone", ln.Addr())
	return ln, nil
}

// common builds the shared options; bind says whether to bind the network now.
func (f *ftFlags) common(args []string, role string, bind bool) (ft.Common, func(), error) {
	arbRole := role
	if role == "joiner" {
		role = "backup"
	}
	if f.arbiter == "" {
		return ft.Common{}, nil, usagef("--arbiter is required (file:///DIR or s3://BUCKET/PREFIX?endpoint=URL)")
	}
	channel, err := f.tls.channel(logchannel.Config{FailoverTimeout: f.failoverTimeout, HeartbeatInterval: f.heartbeat})
	if err != nil {
		return ft.Common{}, nil, err
	}
	img, cfg, err := f.loadGuest(args)
	if err != nil {
		return ft.Common{}, nil, err
	}
	host, _ := os.Hostname()
	claimant := fmt.Sprintf("%s@%s:%d", role, host, os.Getpid())
	arb, generation, err := f.openArbiter(arbRole, claimant)
	if err != nil {
		return ft.Common{}, nil, usageError{err}
	}
	c := ft.Common{
		Backend: f.be, Image: img, Config: cfg, VMID: f.vmID, Generation: generation, Arbiter: arb,
		Claimant: claimant,
		Stdin:    os.Stdin, Stdout: os.Stdout,
		Channel: channel,
		Logf: func(format string, args ...any) {
			msg := fmt.Sprintf(format, args...)
			if channel.InsecureNoTLS && !strings.HasPrefix(msg, insecureMark) {
				msg = insecureMark + msg
			}
			fmt.Fprintf(os.Stderr, "ftvm %s %s: %s\n", role, time.Now().Format("15:04:05.000"), msg)
		},
	}
	cleanup := func() {}
	if c.Net, err = f.openNet(bind); err != nil {
		return ft.Common{}, nil, fmt.Errorf("--net: %w", err)
	}
	if c.Net != nil {
		cleanup = func() { c.Net.Close() }
	}
	if f.df != nil {
		c.Disk = f.sharedDisk()
		closeNet := cleanup
		cleanup = func() { closeNet(); f.closeDisk() }
	}
	if f.metrics != "" {
		c.Metrics = ft.NewMetrics()
		addr, err := c.Metrics.Serve(f.metrics)
		if err != nil {
			cleanup()
			return ft.Common{}, nil, err
		}
		c.Logf("metrics on http://%s/metrics", addr)
	}
	return c, cleanup, nil
}

func cmdPrimary(args []string) int {
	fs := newFlagSet("primary", "--backup ADDR --arbiter URL [--vm-id ID] [--net SPEC] [--metrics ADDR] GUEST.elf [ARGS...]")
	var f ftFlags
	f.cmd = "primary"
	f.register(fs)
	backup := fs.String("backup", "", "the backup's logging-channel `ADDR` (host:port)")
	maxLag := fs.Duration("max-lag", logchannel.DefaultMaxLag, "throttle the guest while the backup's replay lags more than this")
	if err := fs.Parse(args); err != nil {
		return exitUsage
	}
	if *backup == "" {
		fmt.Fprintln(os.Stderr, "ftvm primary: --backup ADDR is required")
		return exitUsage
	}
	c, cleanup, err := f.common(fs.Args(), "primary", true)
	if err != nil {
		fmt.Fprintf(os.Stderr, "ftvm primary: %v\n", err)
		return failStatus(err)
	}
	defer cleanup()
	jl, err := f.joinListener(c)
	if err != nil {
		fmt.Fprintf(os.Stderr, "ftvm primary: %v\n", err)
		return exitUsage
	}
	if jl != nil {
		defer jl.Close()
	}
	ctx, cancel := interruptContext()
	defer cancel()
	res, err := ft.RunPrimary(ctx, ft.PrimaryOptions{Common: c, BackupAddr: *backup, MaxLag: *maxLag, JoinListener: jl})
	if errors.Is(err, ft.ErrLostArbitration) {
		fmt.Fprintf(os.Stderr, "ftvm primary: HALTED: %v\n", err)
		return exitHalted
	}
	return exitStatus(res, err)
}

func cmdBackup(args []string) int {
	fs := newFlagSet("backup", "(--listen ADDR | --join ADDR) --arbiter URL [--vm-id ID] [--net SPEC] [--metrics ADDR] GUEST.elf [ARGS...]")
	var f ftFlags
	f.cmd = "backup"
	f.register(fs)
	listen := fs.String("listen", "127.0.0.1:7400", "accept the primary's logging channel on `ADDR`")
	join := fs.String("join", "", "join the running primary that takes backups at `ADDR` (its --join-listen): the guest's state comes by live transfer, then the log")
	maxLag := fs.Duration("max-lag", logchannel.DefaultMaxLag, "once live with a backup that joined: throttle the guest while that backup lags more than this")
	if err := fs.Parse(args); err != nil {
		return exitUsage
	}
	role := "backup"
	if *join != "" {
		role = "joiner"
	}
	c, cleanup, err := f.common(fs.Args(), role, false)
	if err != nil {
		fmt.Fprintf(os.Stderr, "ftvm backup: %v\n", err)
		return failStatus(err)
	}
	defer cleanup()
	var ln *logchannel.Listener
	if *join == "" {
		if ln, err = logchannel.Listen(*listen); err != nil {
			fmt.Fprintf(os.Stderr, "ftvm backup: %v\n", err)
			return exitFailed
		}
		defer ln.Close()
		if c.Channel.InsecureNoTLS {
			c.Logf("listening for the primary on %s in clear (--insecure-no-tls): any peer that knows the VM's image and configuration can feed this backup a log", ln.Addr())
		} else {
			c.Logf("listening for the primary on %s; mutual TLS 1.3, peers need a certificate from the pair's CA for VM %q", ln.Addr(), c.VMID)
		}
	}
	jl, err := f.joinListener(c)
	if err != nil {
		fmt.Fprintf(os.Stderr, "ftvm backup: %v\n", err)
		return exitUsage
	}
	if jl != nil {
		defer jl.Close()
	}
	ctx, cancel := interruptContext()
	defer cancel()
	out, err := ft.RunBackup(ctx, ft.BackupOptions{Common: c, Listener: ln, Join: *join, JoinListener: jl, MaxLag: *maxLag})
	switch {
	case errors.Is(err, ft.ErrLostArbitration):
		fmt.Fprintf(os.Stderr, "ftvm backup: HALTED: %v\n", err)
		return exitHalted
	case errors.Is(err, ft.ErrDiverged):
		fmt.Fprintf(os.Stderr, "ftvm backup: %v\n", err)
		return exitDiverged
	case err == nil && !out.WentLive:
		c.Logf("%s", out.Summary)
	}
	return exitStatus(out.Result, err)
}
