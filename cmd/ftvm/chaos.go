package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/ftvm/ftvm/bench"
	"github.com/ftvm/ftvm/bench/hosts"
)

// cmdChaos runs a fault campaign against a protected kvstore (and, on
// hosts, the redis guest with TCP clients) and writes
// its report; it exits 0 only if every trial kept the promise (no call
// lost, no acknowledged write lost, never two live sides).
func cmdChaos(args []string) int {
	fs := newFlagSet("chaos", "[--quick] [--trials N] [--parallel P] [--faults F,...] [--tcp-trials N] [--tcp-faults F,...] [--seed S] [--trial-seed S] [--out DIR] [--guests DIR]")
	quick := fs.Bool("quick", false, "one trial of each fault kind, and on hosts 3 redis trials with TCP clients (kill-primary, freeze-primary, partition): a smoke test for CI")
	trials := fs.Int("trials", 50, "trials in all, the fault kinds taken in turn")
	parallel := fs.Int("parallel", 1, "trials run at once (on hosts they cannot collide; they share the cores, so timing faults land less precisely)")
	faults := fs.String("faults", "", "the fault kinds, comma-separated (default all: "+strings.Join(bench.ChaosFaults, ", ")+")")
	tcpTrials := fs.Int("tcp-trials", -1, "more trials with the redis guest and RESP clients over TCP, after the kvstore ones (hosts only; default 10 on hosts, 0 on loopback)")
	tcpFaults := fs.String("tcp-faults", "", "the fault kinds of the TCP trials, taken in turn (default all but the join faults)")
	seed := fs.Uint64("seed", 0, "the campaign's seed (default: from the clock; the report gives it and every trial's)")
	trialSeed := fs.Uint64("trial-seed", 0, "replay a trial: give every trial this seed (with --trials 1 --faults ITS-FAULT)")
	hostsMode := fs.String("hosts", "auto", "auto|on|off: run each trial's primary, backup, arbiter storage and clients on hosts of their own (network namespaces; needs root, ip and /dev/net/tun), or all on loopback; auto: hosts where they can be made")
	failover := fs.Duration("failover-timeout", 500*time.Millisecond, "both sides' failover timeout")
	out := fs.String("out", "", "where to write the report (default bench/results/chaos-DATE)")
	guests := fs.String("guests", "", "the guest images (default guests/build beside this binary's tree)")
	g := guestFlags{cmd: "chaos"}
	fs.StringVar(&g.backend, "backend", os.Getenv("FTVM_BACKEND"), "auto|kvm|ptrace")
	if err := fs.Parse(args); err != nil {
		return exitUsage
	}
	if fs.NArg() != 0 || *trials < 0 || *tcpTrials < -1 || *parallel < 1 || *parallel > 16 {
		fs.Usage()
		return exitUsage
	}
	onHosts := false
	switch why := hosts.Available(); *hostsMode {
	case "on":
		if why != nil {
			fmt.Fprintf(os.Stderr, "ftvm chaos: --hosts on: %v\n", why)
			return exitFailed
		}
		onHosts = true
	case "off":
	case "auto":
		onHosts = why == nil
		if why != nil {
			fmt.Fprintf(os.Stderr, "ftvm chaos: on loopback, not hosts of their own: %v\n", why)
		}
	default:
		fmt.Fprintf(os.Stderr, "ftvm chaos: --hosts %q: want auto, on or off\n", *hostsMode)
		return exitUsage
	}
	be, err := chooseBackend("chaos", g.backend)
	if err != nil {
		fmt.Fprintf(os.Stderr, "ftvm chaos: %v\n", err)
		return exitFailed
	}
	exe, err := os.Executable()
	if err != nil {
		fmt.Fprintf(os.Stderr, "ftvm chaos: %v\n", err)
		return exitFailed
	}
	root := filepath.Join(filepath.Dir(exe), "..")
	if *guests == "" {
		*guests = filepath.Join(root, "guests", "build")
	}
	if *out == "" {
		*out = filepath.Join(root, "bench", "results", "chaos-"+time.Now().UTC().Format("2006-01-02T150405"))
	}
	var kinds []string
	if *faults != "" {
		kinds = strings.Split(*faults, ",")
	}
	var tcpKinds []string
	if *tcpFaults != "" {
		tcpKinds = strings.Split(*tcpFaults, ",")
	}
	if *quick {
		*trials = len(bench.ChaosFaults)
		if !onHosts {
			*trials = len(bench.ChaosFaults) - len(bench.HostsOnlyFaults)
		}
		if len(kinds) > 0 {
			*trials = len(kinds)
		}
		if len(tcpKinds) == 0 {
			tcpKinds = []string{bench.FaultKillPrimary, bench.FaultFreezePrimary, bench.FaultPartition}
		}
		if *tcpTrials == -1 && onHosts {
			*tcpTrials = len(tcpKinds)
		}
	}
	switch {
	case *tcpTrials == -1 && onHosts:
		*tcpTrials = 10
	case *tcpTrials == -1:
		*tcpTrials = 0
		fmt.Fprintln(os.Stderr, "ftvm chaos: on loopback: no trials with TCP clients (user networking forwards only UDP)")
	}
	if *trials+*tcpTrials == 0 {
		fmt.Fprintln(os.Stderr, "ftvm chaos: no trials")
		return exitUsage
	}
	if *seed == 0 {
		*seed = uint64(time.Now().UnixNano())
	}
	ctx, cancel := interruptContext()
	defer cancel()
	res, err := bench.RunChaos(ctx, bench.ChaosOptions{FTVM: exe, GuestDir: *guests, Root: root, Backend: be.Name(), Trials: *trials, Faults: kinds, TCPTrials: *tcpTrials, TCPFaults: tcpKinds, Hosts: onHosts, Parallel: *parallel, LogDir: *out,
		Seed: *seed, TrialSeed: *trialSeed, FailoverTimeout: *failover,
		Logf: func(f string, a ...any) {
			fmt.Fprintf(os.Stderr, "ftvm chaos %s: %s\n", time.Now().Format("15:04:05"), fmt.Sprintf(f, a...))
		}})
	if err != nil {
		fmt.Fprintf(os.Stderr, "ftvm chaos: %v\n", err)
		if res == nil {
			return exitUsage
		}
	}
	res.Command = "ftvm chaos " + strings.Join(args, " ")
	if err := res.WriteReport(*out); err != nil {
		fmt.Fprintf(os.Stderr, "ftvm chaos: %v\n", err)
		return exitFailed
	}
	fmt.Fprintf(os.Stderr, "ftvm chaos: report in %s\n", filepath.Join(*out, "REPORT.md"))
	if err != nil {
		fmt.Fprintf(os.Stderr, "ftvm chaos: cut short after %d trials (%v): the report has those\n", len(res.Trials), err)
		return 1
	}
	if !res.Ok() {
		fmt.Fprintln(os.Stderr, "ftvm chaos: FAILED: see the report's failed trials")
		return 1
	}
	return 0
}
