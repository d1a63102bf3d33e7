package vmm

import (
	"context"
	"fmt"
	"os"
	"time"

	"github.com/ftvm/ftvm/replay"
	"github.com/ftvm/ftvm/vmm/backend"
)

// Check is one line of a host report: what was checked, whether ftvm can
// work with it, and what was found.
type Check = backend.Check

// rawImage is a one-segment image of hand-assembled code at imageBase.
func rawImage(code []byte) *Image {
	return &Image{Entry: imageBase, End: imageBase + pageSize, sites: map[uint64]*Site{},
		Segments: []Segment{{Addr: imageBase, Data: code, MemSize: pageSize, Exec: true}}}
}

// HostChecks are the checks that do not depend on a backend.
func HostChecks() []Check {
	var checks []Check
	if err := checkHostCPU(); err != nil {
		checks = append(checks, Check{Name: "CPU baseline", OK: false, Detail: err.Error()})
	} else {
		checks = append(checks, Check{Name: "CPU baseline", OK: true, Detail: "host has SSE2..SSE4.2, POPCNT, CX16, PCLMULQDQ (the fixed CPUID table)"})
	}
	checks = append(checks, Check{Name: "RDTSC trapping", OK: true, Detail: "not relied on: ftvm rewrites RDTSC/RDTSCP/RDRAND/RDSEED/RDPID/CPUID at load time"})
	_, err := os.Stat("/sys/bus/event_source/devices/cpu")
	checks = append(checks, Check{Name: "PMU", OK: true, Detail: fmt.Sprintf("host perf 'cpu' events: %v; ftvm does not need a PMU (positions are exit numbers)", err == nil)})
	return checks
}

// Doctor checks backend b on this host, like virt-host-validate: whether it
// is usable, what it found, and guests run on it for speed and exit cost.
func Doctor(b backend.Backend) []Check {
	name := b.Name() + ": "
	if err := b.Usable(); err != nil {
		return []Check{{Name: name + "usable", OK: false, Detail: err.Error()}}
	}
	checks := []Check{{Name: name + "usable", OK: true, Detail: "yes"}}
	for _, c := range b.Doctor() {
		c.Name = name + c.Name
		checks = append(checks, c)
	}
	add := func(n string, ok bool, format string, args ...any) {
		checks = append(checks, Check{Name: name + n, OK: ok, Detail: fmt.Sprintf(format, args...)})
	}
	// CPL3 speed: mov rcx, 300M; 1: add rax,rcx; dec rcx; jnz 1b; out 0x05 (exit, RDI=0).
	loop := []byte{0x48, 0xb9, 0, 0xa3, 0xe1, 0x11, 0, 0, 0, 0, 0x48, 0x01, 0xc8, 0x48, 0xff, 0xc9, 0x75, 0xf8, 0x31, 0xff, 0xe6, portExit}
	start := time.Now()
	if err := runRaw(b, loop); err != nil {
		add("guest code runs natively", false, "%v", err)
	} else {
		d := time.Since(start)
		ips := 900e6 / d.Seconds()
		add("guest code runs natively", ips > 100e6, "900M instructions in %v (%.0f M/s; emulation would be ~1 M/s)", d.Round(time.Millisecond), ips/1e6)
	}
	per, err := ExitRoundTrip(b, 20000)
	if err != nil {
		add("exit round trip", false, "%v", err)
	} else {
		add("exit round trip", per < time.Millisecond, "%v per guest-caused exit, VMM work included", per)
	}
	return checks
}

// ExitRoundTrip measures the mean cost of a guest-caused exit on b, VMM
// work included: a guest that reads the clock n times.
func ExitRoundTrip(b backend.Backend, n int) (time.Duration, error) {
	if n <= 0 || n > 0xffff {
		return 0, fmt.Errorf("vmm: exit round trip count %d: want 1-65535", n)
	}
	exits := []byte{0xb9, byte(n & 0xff), byte(n >> 8), 0, 0, 0x31, 0xff, 0xe6, portClock, 0xff, 0xc9, 0x75, 0xf8, 0x31, 0xff, 0xe6, portExit}
	start := time.Now()
	if err := runRaw(b, exits); err != nil {
		return 0, err
	}
	return time.Since(start) / time.Duration(n), nil
}

func runRaw(b backend.Backend, code []byte) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	m, err := New(b, rawImage(code), Config{}, NewLiveWorld(ctx, nil, os.Stderr))
	if err != nil {
		return err
	}
	defer m.Close()
	res, err := m.Run(ctx)
	if err == nil && res.Status != 0 {
		err = fmt.Errorf("probe guest exited %d", res.Status)
	}
	return err
}

var _ replay.World = (*LiveWorld)(nil)
