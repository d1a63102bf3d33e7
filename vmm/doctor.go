package vmm

import (
	"context"
	"fmt"
	"os"
	"time"

	"github.com/bobuhiro11/gokvm/kvm"
	"github.com/ftvm/ftvm/replay"
	"golang.org/x/sys/unix"
)

// Check is one line of a host report: what was checked, whether ftvm can
// work with it, and what was found.
type Check struct {
	Name   string
	OK     bool
	Detail string
}

// rawImage is a one-segment image of hand-assembled code at imageBase.
func rawImage(code []byte) *Image {
	return &Image{Entry: imageBase, End: imageBase + pageSize, sites: map[uint64]*Site{},
		Segments: []Segment{{Addr: imageBase, Data: code, MemSize: pageSize, Exec: true}}}
}

// Doctor checks what ftvm needs of this host, like virt-host-validate.
func Doctor() []Check {
	var checks []Check
	add := func(name string, ok bool, format string, args ...any) {
		checks = append(checks, Check{name, ok, fmt.Sprintf(format, args...)})
	}
	fd, err := unix.Open("/dev/kvm", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		add("/dev/kvm", false, "cannot open: %v", err)
		return checks
	}
	defer unix.Close(fd)
	add("/dev/kvm", true, "opened read-write")
	api, err := kvm.GetAPIVersion(uintptr(fd))
	add("KVM API version", err == nil && api == 12, "%d (want 12)", api)
	sync, _ := kvm.CheckExtension(uintptr(fd), kvmCapSyncRegs)
	add("KVM_CAP_SYNC_REGS", true, "%#x (used when it has the general registers: two ioctls fewer per exit)", sync)
	if err := checkHostCPU(); err != nil {
		add("CPU baseline", false, "%v", err)
	} else {
		add("CPU baseline", true, "host has SSE2..SSE4.2, POPCNT, CX16, PCLMULQDQ (the fixed CPUID table)")
	}

	// CPL3 speed: mov rcx, 300M; 1: add rax,rcx; dec rcx; jnz 1b; out 0x05 (exit, RDI=0).
	loop := []byte{0x48, 0xb9, 0, 0xa3, 0xe1, 0x11, 0, 0, 0, 0, 0x48, 0x01, 0xc8, 0x48, 0xff, 0xc9, 0x75, 0xf8, 0x31, 0xff, 0xe6, portExit}
	start := time.Now()
	if err := runRaw(loop); err != nil {
		add("CPL3 runs natively", false, "%v", err)
	} else {
		d := time.Since(start)
		ips := 900e6 / d.Seconds()
		add("CPL3 runs natively", ips > 100e6, "900M instructions in %v (%.0f M/s; emulation would be ~1 M/s)", d.Round(time.Millisecond), ips/1e6)
	}
	// Exit cost: 20000 clock calls.
	const n = 20000
	exits := []byte{0xb9, byte(n & 0xff), byte(n >> 8), 0, 0, 0x31, 0xff, 0xe6, portClock, 0xff, 0xc9, 0x75, 0xf8, 0x31, 0xff, 0xe6, portExit}
	start = time.Now()
	if err := runRaw(exits); err != nil {
		add("exit round trip", false, "%v", err)
	} else {
		per := time.Since(start) / n
		add("exit round trip", per < time.Millisecond, "%v per guest-caused exit, VMM work included", per)
	}
	add("RDTSC trapping", true, "not relied on: ftvm rewrites RDTSC/RDTSCP/RDRAND/RDSEED/RDPID/CPUID at load time")
	_, err = os.Stat("/sys/bus/event_source/devices/cpu")
	pmu := err == nil
	add("PMU", true, "host perf 'cpu' events: %v; ftvm does not need a PMU (positions are exit numbers)", pmu)
	return checks
}

func runRaw(code []byte) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	m, err := New(rawImage(code), Config{}, NewLiveWorld(ctx, nil, os.Stderr))
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
