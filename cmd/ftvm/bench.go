package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/ftvm/ftvm/bench"
)

// cmdBench runs the benchmarks and writes bench/results/DATE/REPORT.md.
func cmdBench(args []string) int {
	fs := newFlagSet("bench", "[--quick] [--out DIR] [--guests DIR]")
	quick := fs.Bool("quick", false, "one short repetition of everything (under two minutes): a smoke test")
	out := fs.String("out", "", "where to write the report (default bench/results/DATE)")
	guests := fs.String("guests", "", "the guest images (default guests/build beside this binary's tree)")
	if err := fs.Parse(args); err != nil {
		return exitUsage
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
	began := time.Now()
	res, err := bench.Run(ctx, bench.Options{Quick: *quick, GuestDir: *guests, FTVM: exe,
		Logf: func(f string, a ...any) {
			fmt.Fprintf(os.Stderr, "ftvm bench %s: %s\n", time.Now().Format("15:04:05"), fmt.Sprintf(f, a...))
		}})
	if err != nil {
		fmt.Fprintf(os.Stderr, "ftvm bench: %v\n", err)
		return exitFailed
	}
	res.Command = "ftvm bench " + strings.Join(args, " ")
	if err := res.WriteReport(*out); err != nil {
		fmt.Fprintf(os.Stderr, "ftvm bench: %v\n", err)
		return exitFailed
	}
	fmt.Printf("ftvm bench: report in %s (%v)\n", filepath.Join(*out, "REPORT.md"), time.Since(began).Round(time.Second))
	return 0
}
