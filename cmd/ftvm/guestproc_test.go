package main

import (
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"

	"github.com/ftvm/ftvm/vmm/ptrace"
)

// requirePtrace skips (outside CI) or fails (in CI) without the ptrace
// backend; these tests are about its guest process whatever FTVM_BACKEND is.
func requirePtrace(t *testing.T) {
	t.Helper()
	if err := (ptrace.Backend{}).Usable(); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("the ptrace backend must work in CI: %v", err)
		}
		t.Skipf("ptrace backend not usable: %v", err)
	}
}

// guestChild returns the pid of ftvm's one child process, the guest.
func guestChild(t *testing.T, ftvmPid int) int {
	t.Helper()
	tasks, _ := os.ReadDir(fmt.Sprintf("/proc/%d/task", ftvmPid))
	var kids []string
	for _, task := range tasks {
		b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/children", ftvmPid, task.Name()))
		kids = append(kids, strings.Fields(string(b))...)
	}
	if len(kids) != 1 {
		t.Fatalf("ftvm has children %v; want exactly the guest", kids)
	}
	var pid int
	fmt.Sscan(kids[0], &pid)
	if comm, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid)); strings.TrimSpace(string(comm)) != "ftvm-guest" {
		t.Fatalf("ftvm's child %d is %q, not the guest", pid, comm)
	}
	return pid
}

// waitGone waits until pid has exited (a zombie counts: it runs nothing).
func waitGone(t *testing.T, pid int, why string) {
	t.Helper()
	gone := waitFor(func() bool {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		f := strings.Fields(string(b))
		return err != nil || len(f) > 2 && f[2] == "Z"
	})
	if !gone {
		t.Fatalf("guest process %d still runs a minute after %s", pid, why)
	}
}

// TestKill9OfFtvmKillsItsGuest: a kill -9 of ftvm (a primary killed for a
// failover) never leaves its guest running, even one busy computing,
// which a tracer's death alone would merely detach and let run on.
func TestKill9OfFtvmKillsItsGuest(t *testing.T) {
	requirePtrace(t)
	cmd := exec.Command(ftvmBin, "run", "--backend", "ptrace", guest("cpu"), "rounds=1", "work=100000000000")
	var stderr syncBuf
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	// Wait until the guest computes: ftvm's child, the guest, is running.
	var pid int
	if !waitFor(func() (ok bool) { pid, ok = runningGuest(cmd.Process.Pid); return ok }) {
		t.Fatalf("no running guest process under ftvm; stderr:\n%s", stderr.String())
	}
	cmd.Process.Kill()
	cmd.Wait()
	waitGone(t, pid, "kill -9 of ftvm")
}

// runningGuest finds ftvm's child guest process running guest code: set
// up (its seccomp filter is the last step) and in state R.
func runningGuest(ftvmPid int) (int, bool) {
	tasks, _ := os.ReadDir(fmt.Sprintf("/proc/%d/task", ftvmPid))
	for _, task := range tasks {
		b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/children", ftvmPid, task.Name()))
		for _, kid := range strings.Fields(string(b)) {
			st, _ := os.ReadFile("/proc/" + kid + "/stat")
			// pid (comm) state ...
			status, _ := os.ReadFile("/proc/" + kid + "/status")
			if f := strings.Fields(string(st)); len(f) > 2 && f[1] == "(ftvm-guest)" && f[2] == "R" && strings.Contains(string(status), "Seccomp:\t2") {
				var pid int
				fmt.Sscan(kid, &pid)
				return pid, true
			}
		}
	}
	return 0, false
}

// TestCtrlCReachesFtvmNotTheGuest: Ctrl-C at a terminal signals the whole
// foreground process group; the guest is in a group of its own, so only
// ftvm sees it, stops the guest and exits 130.
func TestCtrlCReachesFtvmNotTheGuest(t *testing.T) {
	requirePtrace(t)
	cmd, stdin, out := startEcho(t, "--backend", "ptrace")
	defer stdin.Close()
	pid := guestChild(t, cmd.Process.Pid)
	if pgid, _ := syscall.Getpgid(pid); pgid == cmd.Process.Pid {
		t.Fatalf("the guest is in ftvm's process group %d", pgid)
	}
	syscall.Kill(-cmd.Process.Pid, syscall.SIGINT) // what the terminal does
	cmd.Wait()
	if code := cmd.ProcessState.ExitCode(); code != exitInterrupted {
		t.Fatalf("ftvm exited %d, want %d; stderr:\n%s", code, exitInterrupted, out.stderr.String())
	}
	waitGone(t, pid, "ftvm stopped")
}

// TestStatusNamesTheBackend: ftvm status shows which backend a pair
// member runs its guest on.
func TestStatusNamesTheBackend(t *testing.T) {
	b := requireBackend(t)
	addr, err := freeTCPAddr()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(ftvmBin, "pair", "--metrics-primary", addr, guest("echo"))
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr syncBuf
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { stdin.Close(); cmd.Process.Kill(); cmd.Wait() })
	var out []byte
	answered := waitFor(func() bool {
		out, err = exec.Command(ftvmBin, "status", addr).CombinedOutput()
		return err == nil && strings.Contains(string(out), "role")
	})
	if !answered {
		t.Fatalf("ftvm status %s never answered: %v\n%s\npair stderr:\n%s", addr, err, out, stderr.String())
	}
	if !strings.Contains(string(out), "backend              "+b.Name()) {
		t.Fatalf("ftvm status does not name the %s backend:\n%s", b.Name(), out)
	}
}
