package vmm

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/ftvm/ftvm/replay"
	"github.com/ftvm/ftvm/vmm/backend"
	"github.com/ftvm/ftvm/vmm/vmmtest"
)

// scriptedWorld answers every question the same way in every run: TSC,
// clocks and random bits count up from fixed seeds, console input is a
// fixed string. Two runs of a guest in it may differ only by the backend.
type scriptedWorld struct {
	input   string
	n       uint64
	console strings.Builder
	packets int
}

func (w *scriptedWorld) next() uint64 { w.n++; return w.n }

func (w *scriptedWorld) TSC(replay.ExecPoint) (uint64, error) { return 1_000_000 + 1000*w.next(), nil }
func (w *scriptedWorld) Random(replay.ExecPoint, replay.RandKind) (uint64, error) {
	return w.next() * 0x9e3779b97f4a7c15, nil
}
func (w *scriptedWorld) Clock(_ replay.ExecPoint, c replay.ClockID) (uint64, error) {
	if c == replay.ClockRealtime {
		return 1_700_000_000_000_000_000 + 1000*w.next(), nil
	}
	return 1000 * w.next(), nil
}
func (w *scriptedWorld) ConsoleRead(_ replay.ExecPoint, buf []byte) (int, bool, error) {
	if w.input == "" {
		return 0, true, nil
	}
	n := copy(buf, w.input)
	w.input = w.input[n:]
	return n, false, nil
}
func (w *scriptedWorld) Wait(replay.ExecPoint, uint64) (replay.WaitResult, error) {
	return replay.WaitConsoleInput, nil // input or its end is always pending
}
func (w *scriptedWorld) NetReceive(replay.ExecPoint, [][]byte, []int) (int, error) { return 0, nil }
func (w *scriptedWorld) Output(_ replay.ExecPoint, kind replay.OutputKind, data []byte) error {
	if kind == replay.OutputConsole {
		w.console.Write(data)
	} else {
		w.packets++
	}
	return nil
}
func (w *scriptedWorld) PowerOff(replay.ExecPoint, int) error { return nil }

// outcome is everything the contract compares between backends.
type outcome struct {
	Console string
	Status  int
	Exits   uint64
	Packets int
	Fault   string // What, RIP, instruction and registers of a GuestFault
	Err     string // any other error
	// Digest is the final state: registers (those of the faulting
	// instruction after a fault) and all of RAM. Neither backend writes
	// guest RAM when the guest faults (ABI v2).
	Digest [32]byte
}

func runScripted(t *testing.T, b backend.Backend, guest, input string, cfg Config) outcome {
	t.Helper()
	w := &scriptedWorld{input: input}
	m, err := New(b, loadGuest(t, guest), cfg, w)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	res, err := m.Run(ctx)
	o := outcome{Console: w.console.String(), Status: res.Status, Exits: res.Exits, Packets: w.packets}
	var f *GuestFault
	switch {
	case errors.Is(err, ErrInterrupted):
		t.Fatalf("%s did not finish on %s; output so far:\n%s", guest, b.Name(), o.Console)
	case errors.As(err, &f):
		o.Fault = fmt.Sprintf("%s at %#x (%s) %s", f.What, f.RIP, f.Insn, f.RegisterDump())
	case err != nil:
		o.Err = err.Error()
	}
	if o.Digest, err = m.StateDigest(); err != nil {
		t.Fatal(err)
	}
	return o
}

// contractCases are the guests every backend must run identically.
var contractCases = []struct {
	guest, input string
	cfg          Config
}{
	{"hello", "", Config{}},
	{"exit3", "", Config{}},
	{"machine", "", Config{}},
	{"memabuse", "a line\n", Config{}},
	{"echo", "one\nTwo 2\n", Config{}},
	{"nondet", "a line\n", Config{}},
	{"cpu", "", Config{Cmdline: "rounds=300 work=1000"}},
	{"nicabuse", "", Config{}},
	{"nicabuse", "", Config{NIC: &NICConfig{MAC: [6]byte{2, 0, 0, 0, 0, 1}, Addr: netip.MustParsePrefix("10.0.2.15/24"), Gateway: netip.MustParseAddr("10.0.2.2")}}},
	{"badport", "", Config{}},
	{"oob", "", Config{}},
	{"hlt", "", Config{}},
	{"int3", "", Config{}},
	{"ud2", "", Config{}},
	{"nullptr", "", Config{}},
	{"stackoverflow", "", Config{}},
	{"selfmodify", "", Config{}},
}

// TestBackendContract runs every guest on every usable backend in a world
// that answers identically each time: console output, exit status, exit
// count, fault report and the final state digest (registers and all of
// RAM) must be the same on all of them.
func TestBackendContract(t *testing.T) {
	results := map[string]map[string]outcome{} // case -> backend -> outcome
	var order []string
	vmmtest.ForEachBackend(t, func(t *testing.T, b backend.Backend) {
		order = append(order, b.Name())
		for i, c := range contractCases {
			name := fmt.Sprintf("%d-%s", i, c.guest)
			o := runScripted(t, b, c.guest, c.input, c.cfg)
			if o.Err != "" {
				t.Errorf("%s: %s", name, o.Err)
			}
			if o.Exits == 0 || (o.Console == "" && o.Fault == "") {
				t.Errorf("%s: no exits or no output: %+v (the contract would not see a difference)", name, o)
			}
			if results[name] == nil {
				results[name] = map[string]outcome{}
			}
			results[name][b.Name()] = o
		}
	})
	if len(order) < 2 {
		t.Logf("only %v usable here: each backend ran every guest, but there was nothing to compare with", order)
		return
	}
	for name, byBackend := range results {
		want := byBackend[order[0]]
		for _, b := range order[1:] {
			if got := byBackend[b]; got != want {
				t.Errorf("%s differs between %s and %s:\n%s: %+v\n%s: %+v", name, order[0], b, order[0], want, b, got)
			}
		}
	}
}

// TestBackendKicks: a kick before the vCPU runs is not lost; cancelling
// Run stops a guest deep in a loop without exits; a kick after Close is
// harmless. On every backend.
func TestBackendKicks(t *testing.T) {
	vmmtest.ForEachBackend(t, func(t *testing.T, b backend.Backend) {
		long := Config{Cmdline: "rounds=1 work=100000000000"}
		t.Run("before run", func(t *testing.T) {
			m, err := New(b, loadGuest(t, "cpu"), long, NewLiveWorld(context.Background(), nil, io.Discard))
			if err != nil {
				t.Fatal(err)
			}
			defer m.Close()
			m.vcpu.Kick()
			var r replay.Regs
			exit, err := m.vcpu.Run(&r, false)
			if err != nil || exit.Kind != backend.ExitKick {
				t.Fatalf("got %+v %v; want a kick", exit, err)
			}
		})
		t.Run("cancel computing guest", func(t *testing.T) {
			ctx, cancel := context.WithCancel(context.Background())
			m, err := New(b, loadGuest(t, "cpu"), long, NewLiveWorld(ctx, nil, io.Discard))
			if err != nil {
				t.Fatal(err)
			}
			defer m.Close()
			time.AfterFunc(200*time.Millisecond, cancel)
			start := time.Now()
			if _, err = m.Run(ctx); !errors.Is(err, ErrInterrupted) {
				t.Fatalf("got %v", err)
			}
			if d := time.Since(start); d > 5*time.Second {
				t.Fatalf("took %v to stop", d)
			}
		})
		t.Run("created on a thread that is gone", func(t *testing.T) {
			// New may run the vCPU (KVM's probe) on its own thread; Run
			// then runs on another. A kick must reach the thread that runs
			// now: it once went to the creating thread's id, and a guest
			// computing without exits was never stopped.
			made := make(chan *Machine, 1)
			go func() {
				runtime.LockOSThread() // never unlocked: the thread exits with this goroutine
				m, err := New(b, loadGuest(t, "cpu"), long, NewLiveWorld(context.Background(), nil, io.Discard))
				if err != nil {
					t.Error(err)
				}
				made <- m
			}()
			m := <-made
			if m == nil {
				return
			}
			defer m.Close()
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan error, 1)
			go func() { _, err := m.Run(ctx); done <- err }()
			// The guest is computing once it has been scheduled a while;
			// a kick before that is caught at entry, which proves less, but
			// is no failure either.
			time.Sleep(100 * time.Millisecond)
			cancel()
			select {
			case err := <-done:
				if !errors.Is(err, ErrInterrupted) {
					t.Fatalf("got %v, want interrupted", err)
				}
			case <-time.After(30 * time.Second):
				t.Fatal("a cancelled guest kept computing: the kick went to another thread")
			}
		})
		t.Run("after close", func(t *testing.T) {
			for i := 0; i < 20; i++ {
				ctx, cancel := context.WithCancel(context.Background())
				m, err := New(b, loadGuest(t, "hello"), Config{}, NewLiveWorld(ctx, nil, io.Discard))
				if err != nil {
					t.Fatal(err)
				}
				res, err := m.Run(ctx)
				if err != nil || res.Status != 0 {
					t.Fatalf("run %d: status %d, %v", i, res.Status, err)
				}
				m.Close()
				cancel()
				m.vcpu.Kick()
			}
		})
	})
}

func (w *scriptedWorld) DiskRead(replay.ExecPoint, []uint64, [][]byte) error { return nil }
