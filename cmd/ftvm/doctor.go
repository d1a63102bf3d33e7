package main

import (
	"fmt"
	"os"

	"github.com/ftvm/ftvm/vmm"
	"github.com/ftvm/ftvm/vmm/backends"
)

// cmdDoctor reports what this host offers ftvm: the checks every backend
// shares, then each backend, usable or why not, with its measured speed
// and exit round trip. It fails when no backend is usable.
func cmdDoctor(args []string) int {
	fs := newFlagSet("doctor", "")
	if err := fs.Parse(args); err != nil {
		return exitUsage
	}
	status := 0
	show := func(c vmm.Check, unusable bool) {
		mark := "PASS"
		switch {
		case unusable:
			mark = "NO"
		case !c.OK:
			mark, status = "FAIL", 1
		}
		fmt.Printf("%-4s %-28s %s\n", mark, c.Name, c.Detail)
	}
	for _, c := range vmm.HostChecks() {
		show(c, false)
	}
	var usable []string
	for _, b := range backends.All {
		checks := vmm.Doctor(b)
		ok := b.Usable() == nil
		for _, c := range checks {
			show(c, !ok)
		}
		if ok {
			usable = append(usable, b.Name())
		}
	}
	if len(usable) == 0 {
		fmt.Println("FAIL no backend is usable on this host")
		return 1
	}
	chosen, _ := backends.Choose("auto")
	fmt.Printf("usable backends: %v; --backend auto picks %s\n", usable, chosen.Name())
	return status
}

// cmdBackends prints the backends usable here, one per line, the one auto
// picks first; with -v, each unusable one too, with why (on stderr).
func cmdBackends(args []string) int {
	fs := newFlagSet("backends", "[-v]")
	verbose := fs.Bool("v", false, "also say why each unusable backend is unusable (on stderr)")
	if err := fs.Parse(args); err != nil {
		return exitUsage
	}
	usable := backends.Usable()
	for _, name := range usable {
		fmt.Println(name)
	}
	if *verbose {
		for _, b := range backends.All {
			if err := b.Usable(); err != nil {
				fmt.Fprintf(os.Stderr, "%s: not usable: %v\n", b.Name(), err)
			}
		}
	}
	if len(usable) == 0 {
		return exitFailed
	}
	return 0
}
