package main

import (
	"fmt"
	"os"
	"time"

	"github.com/ftvm/ftvm/bench"
)

// cmdNet drives the netsink and netsource guests (Table 2-style runs).
func cmdNet(args []string) int {
	if len(args) < 1 || (args[0] != "sink" && args[0] != "source") {
		fmt.Fprintln(os.Stderr, "usage: ftvm net sink --addr ADDR [--duration D] | ftvm net source --addr ADDR [--count N] [--size B]")
		return exitUsage
	}
	fs := newFlagSet("net "+args[0], "--addr ADDR ...")
	addr := fs.String("addr", "127.0.0.1:7001", "the guest's forwarded `HOST:PORT`")
	duration := fs.Duration("duration", 5*time.Second, "sink: how long to send")
	count := fs.Int("count", 100000, "source: datagrams to ask for")
	size := fs.Int("size", 1400, "source: payload bytes per datagram (at most 1472)")
	if err := fs.Parse(args[1:]); err != nil {
		return exitUsage
	}
	ctx, cancel := interruptContext()
	defer cancel()
	var mbps float64
	var err error
	if args[0] == "sink" {
		mbps, err = bench.BlastSink(ctx, *addr, *duration)
	} else {
		mbps, err = bench.DrainSource(ctx, *addr, *count, *size)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "ftvm net %s: %v\n", args[0], err)
		return 1
	}
	fmt.Printf("%s: %.1f Mbit/s\n", map[string]string{"sink": "received by the guest", "source": "sent by the guest"}[args[0]], mbps)
	return 0
}
