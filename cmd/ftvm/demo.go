package main

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"github.com/anishathalye/porcupine"
	"github.com/ftvm/ftvm/bench/kv"
)

// cmdDemo is the default job: the kvstore guest protected by a pair on
// this machine, three clients using it, and a kill -9 of the primary in
// the middle. It reports what the clients saw and checks their history.
func cmdDemo(args []string) int {
	fs := newFlagSet("demo", "[--duration D] [--kill-after D] [--failovers N] [--guest FILE]")
	duration := fs.Duration("duration", 6*time.Second, "how long the clients run (at least kill-after times failovers+1)")
	killAfter := fs.Duration("kill-after", 3*time.Second, "kill -9 the live side this long after it is protected (0: never)")
	failovers := fs.Int("failovers", 1, "kill the live side this many times; after each failover a new backup joins the survivor")
	guestPath := fs.String("guest", "", "the kvstore image (default: guests/build/kvstore.elf beside this binary's tree)")
	if err := fs.Parse(args); err != nil {
		return exitUsage
	}
	exe, err := os.Executable()
	if err != nil {
		fmt.Fprintf(os.Stderr, "ftvm demo: %v\n", err)
		return exitFailed
	}
	if *guestPath == "" {
		*guestPath = filepath.Join(filepath.Dir(exe), "..", "guests", "build", "kvstore.elf")
	}
	if _, err := os.Stat(*guestPath); err != nil {
		fmt.Fprintf(os.Stderr, "ftvm demo: %v (run make, or pass --guest)\n", err)
		return exitFailed
	}
	c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		fmt.Fprintf(os.Stderr, "ftvm demo: %v\n", err)
		return exitFailed
	}
	addr := c.LocalAddr().String()
	c.Close()
	if *failovers < 1 {
		fmt.Fprintln(os.Stderr, "ftvm demo: --failovers must be at least 1")
		return exitUsage
	}
	pairArgs := []string{"pair", "--net", "user,hostfwd=udp:" + addr + "-:7000"}
	what := "no failure is injected"
	if *killAfter > 0 {
		pairArgs = append(pairArgs, "--kill-primary-after", killAfter.String(), "--failovers", strconv.Itoa(*failovers))
		*duration = max(*duration, *killAfter*time.Duration(*failovers+1))
		what = fmt.Sprintf("the primary is killed with kill -9 %v after it is protected", *killAfter)
		if *failovers > 1 {
			what = fmt.Sprintf("the live side is killed with kill -9 %d times, each %v after a new backup joined it", *failovers, *killAfter)
		}
	}
	fmt.Printf("ftvm demo: the kvstore guest runs under ftvm pair (a primary and a backup VMM on this machine);\n"+
		"ftvm demo: 3 clients send PUT/GET/APPEND to %s for %v; %s.\n\n", addr, *duration, what)
	pair := exec.Command(exe, append(pairArgs, *guestPath)...)
	pair.Stdout, pair.Stderr = os.Stdout, os.Stderr
	if err := pair.Start(); err != nil {
		fmt.Fprintf(os.Stderr, "ftvm demo: %v\n", err)
		return exitFailed
	}
	defer func() {
		pair.Process.Signal(syscall.SIGTERM)
		pair.Wait()
	}()
	ctx, cancel := interruptContext()
	defer cancel()
	w := kv.Workload{Clients: 3, Keys: 5, Duration: *duration, Seed: time.Now().UnixNano(), OpTimeout: 30 * time.Second}
	out, err := w.Run(ctx, addr)
	if err != nil {
		fmt.Fprintf(os.Stderr, "ftvm demo: %v\n", err)
		return exitFailed
	}
	res, _ := kv.CheckLinearizable(out.Calls, time.Minute)
	fmt.Printf("\nftvm demo: the clients completed %d calls (%d without a reply); the longest time with no reply anywhere was %v.\n",
		len(out.Calls), out.Failed, out.MaxGap.Round(time.Millisecond))
	if res != porcupine.Ok || out.Failed > 0 {
		fmt.Printf("ftvm demo: FAILED: the clients' history is %v\n", res)
		return 1
	}
	fmt.Println("ftvm demo: their history is linearizable (checked with porcupine): no acknowledged write was lost across the failover.")
	return 0
}
