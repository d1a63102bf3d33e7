package main

import (
	"fmt"

	"github.com/ftvm/ftvm/vmm"
)

func cmdDoctor(args []string) int {
	fs := newFlagSet("doctor", "")
	if err := fs.Parse(args); err != nil {
		return exitUsage
	}
	status := 0
	for _, c := range vmm.Doctor() {
		mark := "PASS"
		if !c.OK {
			mark, status = "FAIL", 1
		}
		fmt.Printf("%-4s %-20s %s\n", mark, c.Name, c.Detail)
	}
	return status
}
