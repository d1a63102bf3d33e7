package main

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ftvm/ftvm/vmm/backend"
	"github.com/ftvm/ftvm/vmm/vmmtest"
)

var ftvmBin string

// TestMain builds the guests and the ftvm binary the tests run.
func TestMain(m *testing.M) {
	vmmtest.BuildGuests("../../guests")
	dir, err := os.MkdirTemp("", "ftvm-cmd-test")
	if err != nil {
		panic(err)
	}
	ftvmBin = filepath.Join(dir, "ftvm")
	if out, err := exec.Command("go", "build", "-o", ftvmBin, ".").CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "building ftvm: %v\n%s", err, out)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

func requireBackend(t *testing.T) backend.Backend { t.Helper(); return vmmtest.Backend(t) }

func guest(name string) string { return filepath.Join("..", "..", "guests", "build", name+".elf") }

// ftvm runs the binary with stdin and returns stdout, stderr and the status.
func ftvm(t *testing.T, stdin string, args ...string) (string, string, int) {
	t.Helper()
	cmd := exec.Command(ftvmBin, args...)
	cmd.Stdin = strings.NewReader(stdin)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	done := make(chan error, 1)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		var ee *exec.ExitError
		if err != nil && !errors.As(err, &ee) {
			t.Fatal(err)
		}
	case <-time.After(30 * time.Second):
		cmd.Process.Kill()
		t.Fatalf("ftvm %v hung; stderr:\n%s", args, errb.String())
	}
	return out.String(), errb.String(), cmd.ProcessState.ExitCode()
}

func TestRunStatuses(t *testing.T) {
	requireBackend(t)
	notELF := filepath.Join(t.TempDir(), "notelf")
	os.WriteFile(notELF, []byte("not an elf"), 0o644)
	cases := []struct {
		name   string
		args   []string
		status int
		stdout string
		stderr string
	}{
		{"hello", []string{"run", guest("hello")}, 0, "Hello from an ftvm guest!\n", ""},
		{"exit 3", []string{"run", guest("exit3")}, 3, "exiting with 3\n", ""},
		{"mem flag", []string{"run", "--mem", "8M", guest("hello")}, 0, "Hello", ""},
		{"bad mem", []string{"run", "--mem", "lots", guest("hello")}, exitUsage, "", "size"},
		{"not an ELF", []string{"run", notELF}, exitFailed, "", "not an ELF executable"},
		{"missing file", []string{"run", "/nonexistent.elf"}, exitFailed, "", "no such file"},
		{"no guest", []string{"run"}, exitUsage, "", "missing GUEST.elf"},
		{"fault", []string{"run", guest("ud2")}, exitGuestFault, "", "#UD invalid opcode at rip"},
		{"guest args", []string{"run", guest("cpu"), "rounds=3", "work=10"}, 0, "rounds=3 work=10", ""},
		{"bad guest arg", []string{"run", guest("cpu"), "bogus=1"}, 2, "", ""},
		{"unknown command", []string{"frobnicate"}, exitUsage, "", "unknown command"},
		{"inspect", []string{"inspect", guest("nondet")}, 0, "rdtsc", ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			out, errOut, status := ftvm(t, "", c.args...)
			if status != c.status || !strings.Contains(out, c.stdout) || !strings.Contains(errOut, c.stderr) {
				t.Fatalf("status %d stdout %q stderr %q; want %d, %q, %q", status, out, errOut, c.status, c.stdout, c.stderr)
			}
			if strings.Contains(errOut, "panic") || strings.Contains(errOut, "goroutine ") {
				t.Fatalf("Go panic:\n%s", errOut)
			}
		})
	}
}

// TestInterruptStopsAWaitingGuest: Ctrl-C stops a guest parked in wait.
func TestInterruptStopsAWaitingGuest(t *testing.T) {
	requireBackend(t)
	cmd, stdin, out := startEcho(t)
	defer stdin.Close()
	cmd.Process.Signal(syscall.SIGINT)
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		cmd.Process.Kill()
		t.Fatal("ftvm did not stop on SIGINT")
	}
	if code := cmd.ProcessState.ExitCode(); code != exitInterrupted || !strings.Contains(out.stderr.String(), "interrupted") {
		t.Fatalf("status %d stderr %q", code, out.stderr.String())
	}
}

// echoRun is the output of an ftvm run of the echo guest.
type echoRun struct{ stdout, stderr syncBuf }

// startEcho starts ftvm run echo with extra flags, in a process group of
// its own (as a shell starts a job), and returns once the guest has
// answered a line: it is then running, parked in wait for more input.
func startEcho(t *testing.T, flags ...string) (*exec.Cmd, io.WriteCloser, *echoRun) {
	t.Helper()
	cmd := exec.Command(ftvmBin, append(append([]string{"run"}, flags...), guest("echo"))...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	out := &echoRun{}
	cmd.Stdout, cmd.Stderr = &out.stdout, &out.stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	io.WriteString(stdin, "ready\n")
	if !waitFor(func() bool { return strings.Contains(out.stdout.String(), "echo: READY") }) {
		t.Fatalf("the echo guest did not answer; stderr:\n%s", out.stderr.String())
	}
	return cmd, stdin, out
}

// waitFor polls cond until it holds, for up to a minute (generous: under
// emulation processes start 3-5x slower), and reports whether it held.
// The test waits for the condition, not for a time.
func waitFor(cond func() bool) bool {
	for deadline := time.Now().Add(time.Minute); !cond(); {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(10 * time.Millisecond) // the poll interval; the deadline bounds the loop
	}
	return true
}

// syncBuf is a bytes.Buffer for a child's output read while it runs.
type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuf) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuf) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
