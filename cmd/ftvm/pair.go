package main

import (
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/ftvm/ftvm/logchannel"
	"github.com/ftvm/ftvm/vmm/ft"
)

// cmdPair runs a primary and a backup as two processes of this binary on
// this machine, with a file arbiter in a directory of its own: the default
// protected VM. stdin feeds the live side's console, stdout shows the
// released console output, stderr says who is live and why, and the exit
// status is the guest's.
func cmdPair(args []string) int {
	fs := newFlagSet("pair", "[--backend auto|kvm|ptrace] [--mem SIZE] [--net SPEC] [--disk FILE] [--kill-primary-after D] GUEST.elf [ARGS...]")
	g := guestFlags{cmd: "pair"}
	g.register(fs)
	arbiter := fs.String("arbiter", "", "go-live arbiter URL (default: file:// in a new temporary directory)")
	killAfter := fs.Duration("kill-primary-after", 0, "kill -9 the primary this long after it connected to its backup, to watch the backup take over")
	killBackupAfter := fs.Duration("kill-backup-after", 0, "kill -9 the backup this long after the pair is up, to watch the primary carry on alone")
	stopAfter := fs.Duration("stop-primary-after", 0, "SIGSTOP the primary this long after the pair is up (a hung host: no connection reset, only silence); it is killed once the backup wins the arbiter (fenced), or 30 s later")
	failover := fs.Duration("failover-timeout", 0, "passed to both sides (default: theirs)")
	failovers := fs.Int("failovers", 1, "with --kill-primary-after: kill the live side this many times, each time that long after a new backup joined it")
	noReprotect := fs.Bool("no-reprotect", false, "after a failover, run the guest unprotected instead of starting a new backup that joins the live side")
	metricsP := fs.String("metrics-primary", "", "the primary's --metrics ADDR")
	metricsB := fs.String("metrics-backup", "", "the backup's --metrics ADDR")
	insecure := fs.Bool("insecure-no-tls", false, "run the logging channel in clear (default: mutual TLS with a throwaway CA made for this pair)")
	if err := fs.Parse(args); err != nil {
		return exitUsage
	}
	if fs.NArg() < 1 {
		fs.Usage()
		return exitUsage
	}
	exe, err := os.Executable()
	if err != nil {
		fmt.Fprintf(os.Stderr, "ftvm pair: %v\n", err)
		return exitFailed
	}
	// Both members must run the same backend: resolve auto here, once.
	be, err := chooseBackend("pair", g.backend)
	if err != nil {
		fmt.Fprintf(os.Stderr, "ftvm pair: %v\n", err)
		return exitFailed
	}
	host, _ := os.Hostname()
	arbURL, gen, removeArbiter, err := pairArbiter(*arbiter, g.vmID, fmt.Sprintf("pair@%s:%d", host, os.Getpid()))
	if err != nil {
		fmt.Fprintf(os.Stderr, "ftvm pair: %v\n", err)
		if *arbiter != "" {
			return exitUsage
		}
		return exitFailed
	}
	defer removeArbiter()
	*arbiter = arbURL
	// The logging channel's address and each member's join address, all
	// different: picked while all are held, so that none is handed out
	// twice (picked one by one, a released port came back as the next).
	addrs, err := freeTCPAddrs(3)
	if err != nil {
		fmt.Fprintf(os.Stderr, "ftvm pair: %v\n", err)
		return exitFailed
	}
	addr := addrs[0]
	base := []string{"--backend", be.Name(), "--vm-id", g.vmID, "--arbiter", *arbiter, "--mem", strconv.FormatUint(g.mem.v, 10)}
	if g.net != "" {
		base = append(base, "--net", g.net)
	}
	primaryDisk, backupDisk := g.disk, g.disk
	// copies are each member's copy of a local disk, by member name.
	copies := map[string]string{}
	localPath, local := strings.CutSuffix(g.disk, ",local")
	if local {
		// Each side its own copy: the backup's is made here, a copy of the
		// primary's, which the handshake then proves equal (its digest is
		// in the configuration).
		copyPath := localPath + ".backup"
		if err := copyFile(localPath, copyPath); err != nil {
			fmt.Fprintf(os.Stderr, "ftvm pair: the backup's copy of the local disk: %v\n", err)
			return exitFailed
		}
		backupDisk = copyPath + ",local"
		copies["primary"], copies["backup"] = localPath, copyPath
	} else if g.disk != "" {
		base = append(base, "--disk", g.disk)
	}
	withDisk := func(d string, args []string) []string {
		if d == "" || !strings.HasSuffix(d, ",local") {
			return args
		}
		return append(args, "--disk", d)
	}
	if *failover != 0 {
		base = append(base, "--failover-timeout", failover.String())
	}
	common := append([]string{"--generation", strconv.FormatUint(gen, 10)}, base...)
	// Every member takes a backup that joins it once it runs alone.
	joinAddrs := addrs[1:]
	with := func(flag, v string, rest []string) []string {
		if v == "" {
			return rest
		}
		return append([]string{flag, v}, rest...)
	}
	primaryTLS, backupTLS := []string{"--insecure-no-tls"}, []string{"--insecure-no-tls"}
	channel := "in clear (--insecure-no-tls)"
	if !*insecure {
		// A throwaway CA and a certificate for each side, in a working
		// directory of the pair's own: the default needs no setup.
		dir, err := os.MkdirTemp("", "ftvm-pair-tls-")
		if err != nil {
			fmt.Fprintf(os.Stderr, "ftvm pair: %v\n", err)
			return exitFailed
		}
		defer os.RemoveAll(dir)
		if err := logchannel.WritePairCredentials(dir, g.vmID, "primary", "backup"); err != nil {
			fmt.Fprintf(os.Stderr, "ftvm pair: %v\n", err)
			return exitFailed
		}
		tlsArgs := func(host string) []string {
			f := logchannel.PairFiles(dir, host)
			return []string{"--tls-cert", f.Cert, "--tls-key", f.Key, "--tls-ca", f.CA}
		}
		primaryTLS, backupTLS = tlsArgs("primary"), tlsArgs("backup")
		channel = "mutual TLS, throwaway CA in " + dir
	}
	primaryArgs := withDisk(primaryDisk, append(append([]string{"primary", "--backup", addr, "--join-listen", joinAddrs[0]}, primaryTLS...), with("--metrics", *metricsP, common)...))
	if g.pcap != "" {
		primaryArgs = append(primaryArgs, "--pcap", g.pcap)
	}
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	defer signal.Stop(sigs)
	sup := &ft.PairSupervisor{
		Exe:               exe,
		PrimaryArgs:       append(primaryArgs, fs.Args()...),
		BackupArgs:        append(withDisk(backupDisk, append(append([]string{"backup", "--listen", addr, "--join-listen", joinAddrs[1]}, backupTLS...), with("--metrics", *metricsB, common)...)), fs.Args()...),
		PrimaryJoinListen: joinAddrs[0], BackupJoinListen: joinAddrs[1],
		Failovers: *failovers,
		Stdin:     os.Stdin, Stdout: os.Stdout, Stderr: os.Stderr,
		KillPrimaryAfter: *killAfter, KillBackupAfter: *killBackupAfter, StopPrimaryAfter: *stopAfter,
		Signals: sigs,
		Logf:    pairLog,
		JoinerArgs: func(n int, joinAddr, replaces string) ([]string, string) {
			listen, err := freeTCPAddr()
			if err != nil {
				listen = "127.0.0.1:0"
			}
			args := append(append([]string{"backup", "--join", joinAddr, "--join-listen", listen}, backupTLS...), base...)
			if local {
				args = append(args, "--disk", joinerCopy(copies, localPath, n, replaces)+",local")
			}
			return append(args, fs.Args()...), listen
		},
		Started: func(p, b int) {
			pairLog("primary pid %d, backup pid %d, logging channel %s (%s), arbiter %s", p, b, addr, channel, *arbiter)
		},
	}
	if *noReprotect {
		sup.JoinerArgs = nil
	}
	return sup.Run()
}

// joinerCopy makes backup-n's copy of the local disk at path: a copy of
// the copy of the member it replaces, which died, so that the join sends
// only the chunks written since (the dead member's copy is at most as
// stale as its death). A dead joiner's copy is removed once copied; the
// first two members' are kept. On a failure the joiner gets a path
// without a file, and says so.
func joinerCopy(copies map[string]string, path string, n int, replaces string) string {
	name := fmt.Sprintf("backup-%d", n)
	dst := fmt.Sprintf("%s.%s", path, name)
	src, ok := copies[replaces]
	if !ok {
		src = path
	}
	if err := copyFile(src, dst); err != nil {
		pairLog("%s's copy of the local disk: %v", name, err)
		return dst
	}
	copies[name] = dst
	if replaces != "primary" && replaces != "backup" {
		delete(copies, replaces)
		os.Remove(src)
	}
	pairLog("%s's copy of the local disk is %s, copied from the %s's (the join sends only the chunks that differ)", name, dst, replaces)
	return dst
}

func pairLog(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "ftvm pair %s: %s\n", time.Now().Format("15:04:05.000"), fmt.Sprintf(format, args...))
}

// freeTCPAddrs returns n different free loopback addresses.
func freeTCPAddrs(n int) ([]string, error) {
	var addrs []string
	for range n {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		defer ln.Close()
		addrs = append(addrs, ln.Addr().String())
	}
	return addrs, nil
}

func freeTCPAddr() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}

// copyFile copies src to dst (made or replaced), synced.
func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	if err := out.Sync(); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}
