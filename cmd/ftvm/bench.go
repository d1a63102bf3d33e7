package main

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/ftvm/ftvm/bench"
	"github.com/ftvm/ftvm/vmm/backend"
	"github.com/ftvm/ftvm/vmm/backends"
)

// cmdBench runs the benchmarks and writes bench/results/DATE/REPORT.md.
func cmdBench(args []string) int {
	fs := newFlagSet("bench", "[--quick] [--backend all|auto|kvm|ptrace] [--reps N] [--failover-trials N] [--cpuprofile-dir DIR] [--out DIR] [--guests DIR]")
	quick := fs.Bool("quick", false, "one short repetition of everything (under two minutes): a smoke test")
	out := fs.String("out", "", "where to write the report (default bench/results/DATE)")
	guests := fs.String("guests", "", "the guest images (default guests/build beside this binary's tree)")
	which := fs.String("backend", "all", "the backends to run on: all (every usable one, side by side), auto, kvm or ptrace")
	reps := fs.Int("reps", 0, "repetitions of each workload, plain and FT, in each placement (default 1 with --quick, 5 without)")
	trials := fs.Int("failover-trials", 0, "failover trials per failure setting (default 2 with --quick, 50 without)")
	profiles := fs.String("cpuprofile-dir", "", "write CPU profiles of each side of one extra run per workload into `DIR`/BACKEND and summarise them in the report")
	only := fs.String("only", "", "run only these parts, comma-separated: "+stepNames())
	channelTimeout := fs.Duration("channel-timeout", 0, "the logging channel's failover timeout in the plain-versus-FT runs (default: the channel's own); under emulation a starved side can miss a second of heartbeats")
	member := fs.String("member", "", "internal: run one VM process of a benchmark as the spec `FILE` says")
	if err := fs.Parse(args); err != nil {
		return exitUsage
	}
	if *member != "" {
		ctx, cancel := interruptContext()
		defer cancel()
		return bench.RunMember(ctx, *member, os.Stderr)
	}
	var onlySteps []string
	if *only != "" {
		for _, name := range strings.Split(*only, ",") {
			if !slices.ContainsFunc(bench.Steps, func(s bench.Step) bool { return s.Name == name }) {
				fmt.Fprintf(os.Stderr, "ftvm bench: --only: no part %q (the parts: %s)\n", name, stepNames())
				return exitUsage
			}
			onlySteps = append(onlySteps, name)
		}
	}
	exe, err := os.Executable()
	if err != nil {
		fmt.Fprintf(os.Stderr, "ftvm bench: %v\n", err)
		return exitFailed
	}
	root := filepath.Join(filepath.Dir(exe), "..")
	if *guests == "" {
		*guests = filepath.Join(root, "guests", "build")
	}
	if *out == "" {
		*out = filepath.Join(root, "bench", "results", time.Now().UTC().Format("2006-01-02T150405"))
	}
	ctx, cancel := interruptContext()
	defer cancel()
	var bes []backend.Backend
	if *which == "all" {
		bes = backends.UsableBackends()
		if len(bes) == 0 {
			_, err := backends.Choose("auto")
			fmt.Fprintf(os.Stderr, "ftvm bench: %v\n", err)
			return exitFailed
		}
	} else {
		b, err := chooseBackend("bench", *which)
		if err != nil {
			fmt.Fprintf(os.Stderr, "ftvm bench: %v\n", err)
			return exitFailed
		}
		bes = []backend.Backend{b}
	}
	began := time.Now()
	command := "ftvm bench " + strings.Join(args, " ")
	var runs []*bench.Results
	for _, b := range bes {
		fmt.Fprintf(os.Stderr, "ftvm bench: backend %s\n", b.Name())
		res, err := bench.Run(ctx, bench.Options{Quick: *quick, Only: onlySteps, GuestDir: *guests, FTVM: exe, Backend: b,
			Reps: *reps, FailoverTrials: *trials, CPUProfileDir: *profiles, ChannelTimeout: *channelTimeout,
			Logf: func(f string, a ...any) {
				fmt.Fprintf(os.Stderr, "ftvm bench %s %s: %s\n", b.Name(), time.Now().Format("15:04:05"), fmt.Sprintf(f, a...))
			}})
		if err != nil {
			fmt.Fprintf(os.Stderr, "ftvm bench: backend %s: %v\n", b.Name(), err)
			return exitFailed
		}
		res.Command = command
		if err := res.WriteReport(filepath.Join(*out, b.Name())); err != nil {
			fmt.Fprintf(os.Stderr, "ftvm bench: %v\n", err)
			return exitFailed
		}
		runs = append(runs, res)
	}
	if err := bench.WriteComparison(*out, command, runs); err != nil {
		fmt.Fprintf(os.Stderr, "ftvm bench: %v\n", err)
		return exitFailed
	}
	fmt.Printf("ftvm bench: report in %s (%v)\n", filepath.Join(*out, "REPORT.md"), time.Since(began).Round(time.Second))
	return 0
}

// stepNames lists the benchmark's parts for --only.
func stepNames() string {
	var names []string
	for _, s := range bench.Steps {
		names = append(names, s.Name)
	}
	return strings.Join(names, ", ")
}
