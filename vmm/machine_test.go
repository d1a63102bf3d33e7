package vmm

import (
	"errors"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"unsafe"

	"github.com/ftvm/ftvm/replay"
)

func TestRegsMatchKVMLayout(t *testing.T) {
	if unsafe.Sizeof(replay.Regs{}) != 144 {
		t.Fatalf("replay.Regs is %d bytes; struct kvm_regs is 144", unsafe.Sizeof(replay.Regs{}))
	}
	if unsafe.Offsetof(replay.Regs{}.RIP) != 128 {
		t.Fatal("RIP must be at offset 128 as in struct kvm_regs")
	}
}

func TestHello(t *testing.T) {
	out, res, err := runGuest(t, "hello", "", Config{})
	if err != nil {
		t.Fatal(err)
	}
	if out != "Hello from an ftvm guest!\n" || res.Status != 0 {
		t.Fatalf("got %q status %d", out, res.Status)
	}
}

// TestMachineState: the entry state ABI v2 promises, as the guest sees it.
func TestMachineState(t *testing.T) {
	out, res, err := runGuest(t, "machine", "", Config{})
	if err != nil || res.Status != 0 {
		t.Fatalf("status %d, %v", res.Status, err)
	}
	for _, want := range []string{"abi=2 rflags=0x202 iopl=0 fcw=0x37f mxcsr=0x1f80", "boot info at 0x10000,", "stack top 0x4000000,"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
}

// TestDevicesKeepWX: a device writes into guest memory only where the
// guest itself may write (never its text, read-only data or the boot
// information) and reads only what it may read; a refused call fails with
// -EFAULT and changes nothing (guests/memabuse.c; the NIC's cases are in
// nicabuse, run by cmd/ftvm's TestNICBadInput).
func TestDevicesKeepWX(t *testing.T) {
	out, res, err := runGuest(t, "memabuse", "a line\n", Config{})
	if err != nil || res.Status != 0 || !strings.Contains(out, "all cases behaved") {
		t.Fatalf("status %d, %v:\n%s", res.Status, err, out)
	}
}

func TestExitStatusPassesThrough(t *testing.T) {
	_, res, err := runGuest(t, "exit3", "", Config{})
	if err != nil || res.Status != 3 {
		t.Fatalf("got status %d, err %v; want 3", res.Status, err)
	}
}

func TestEchoTransformsLines(t *testing.T) {
	out, res, err := runGuest(t, "echo", "one\nTwo 2\n", Config{})
	if err != nil || res.Status != 0 {
		t.Fatalf("status %d err %v", res.Status, err)
	}
	want := "echo: ONE\necho: TWO 2\necho: 2 lines\n"
	if out != want {
		t.Fatalf("got %q want %q", out, want)
	}
}

// TestNondetSeesTheVMM checks that the rewritten instructions are answered by
// the VMM: TSC values increase at 1 GHz from 0 at boot (the host's TSC is in
// the billions after minutes of uptime), TSC_AUX and RDPID are 0, and CPUID
// is the fixed table, not the host's.
func TestNondetSeesTheVMM(t *testing.T) {
	out, res, err := runGuest(t, "nondet", "a line\n", Config{})
	if err != nil || res.Status != 0 {
		t.Fatalf("status %d err %v\n%s", res.Status, err, out)
	}
	for _, want := range []string{
		"nondet: rdtsc increasing: yes", "aux=0", "nondet: rdpid: 0",
		`vendor="FTVMFTVMFTVM"`, "rdrand=no", "rdseed=no", `nondet: got "a line"`,
		"rdrand64: ", "cf=1",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	tsc := regexp.MustCompile(`rdtsc 1: (\d+)`).FindStringSubmatch(out)
	if tsc == nil {
		t.Fatalf("no TSC in output:\n%s", out)
	}
	if v, _ := strconv.ParseUint(tsc[1], 10, 64); v > 10_000_000_000 {
		t.Errorf("first TSC %d is not virtual time since boot (over 10 s)", v)
	}
	// RDRAND values come from the VMM: two runs differ.
	out2, _, _ := runGuest(t, "nondet", "", Config{})
	r := regexp.MustCompile(`rdrand64: (0x[0-9a-f]+)`)
	if a, b := r.FindStringSubmatch(out), r.FindStringSubmatch(out2); a == nil || b == nil || a[1] == b[1] {
		t.Errorf("rdrand64 the same in two runs (%v, %v)", a, b)
	}
}

// TestGuestFaults runs each fault guest: each must stop with a GuestFault
// naming what happened and the right instruction, never hang or panic.
func TestGuestFaults(t *testing.T) {
	cases := []struct{ guest, what, insn string }{
		{"badport", "out to unknown port 0x77", "out %al,$0x77"},
		{"oob", "#PF page fault (error code 0x4) accessing 0x40000000", "mov 0x40000000"},
		{"hlt", "#GP general protection fault", "hlt"},
		{"int3", "#BP breakpoint", "int3"},
		{"ud2", "#UD invalid opcode", "ud2"},
		{"nullptr", "#PF page fault (error code 0x6) accessing 0x0", "movl"},
		{"stackoverflow", "#PF page fault", "call"},
		{"selfmodify", "#PF page fault (error code 0x7) accessing 0x100040", "movb"},
	}
	for _, c := range cases {
		t.Run(c.guest, func(t *testing.T) {
			_, _, err := runGuest(t, c.guest, "", Config{})
			var f *GuestFault
			if !errors.As(err, &f) {
				t.Fatalf("got %v, want a GuestFault", err)
			}
			msg := err.Error()
			if !strings.Contains(msg, c.what) || !strings.Contains(f.Insn, c.insn) || strings.Contains(msg, "\n") {
				t.Fatalf("message %q (insn %q); want one line with %q and %q", msg, f.Insn, c.what, c.insn)
			}
			if f.RIP < imageBase || f.RIP >= imageBase+1<<20 {
				t.Fatalf("rip %#x is not in the guest's text", f.RIP)
			}
		})
	}
}

func TestMemorySizes(t *testing.T) {
	out, _, err := runGuest(t, "hello", "", Config{MemSize: 4 << 20})
	if err != nil || out == "" {
		t.Fatalf("4 MiB guest: %v", err)
	}
	requireBackend(t)
	for _, bad := range []uint64{1 << 20, 3 << 20, 2 << 30} {
		if _, err := New(requireBackend(t), loadGuest(t, "hello"), Config{MemSize: bad}, nil); err == nil || !strings.Contains(err.Error(), "guest memory") {
			t.Errorf("mem %d: got %v", bad, err)
		}
	}
}

func TestParseSize(t *testing.T) {
	for in, want := range map[string]uint64{"64M": 64 << 20, "64MiB": 64 << 20, "1G": 1 << 30, "4096": 4096, "8K": 8 << 10} {
		if got, err := ParseSize(in); err != nil || got != want {
			t.Errorf("ParseSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "M", "-1M", "12X", "1.5G", "99999999999999999999G"} {
		if _, err := ParseSize(bad); err == nil {
			t.Errorf("ParseSize(%q) accepted", bad)
		}
	}
}

// TestRunKeepsASpareP: a process with one P (pinned to one core, or a
// one-CPU cgroup quota) gets a second one when it runs a vCPU, so the
// goroutines beside the vCPU thread (the logging channel's acks) need not
// wait for the scheduler to retake the P the vCPU holds in KVM_RUN.
func TestRunKeepsASpareP(t *testing.T) {
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(1))
	if _, _, err := runGuest(t, "hello", "", Config{}); err != nil {
		t.Fatal(err)
	}
	if n := runtime.GOMAXPROCS(0); n < 2 {
		t.Fatalf("GOMAXPROCS %d after a run with one P; want at least 2", n)
	}
}
