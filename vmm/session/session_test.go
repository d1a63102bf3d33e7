package session

import (
	"bytes"
	"context"
	"errors"
	"io"
	"math/rand"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ftvm/ftvm/replay"
	"github.com/ftvm/ftvm/vmm"
	"github.com/ftvm/ftvm/vmm/backend"
	"github.com/ftvm/ftvm/vmm/backends"
	"github.com/ftvm/ftvm/vmm/vmmtest"
)

// TestMain builds the guests these tests record and replay.
func TestMain(m *testing.M) {
	vmmtest.BuildGuests("../../guests")
	os.Exit(m.Run())
}

type Config = vmm.Config

func loadGuest(t testing.TB, name string) *vmm.Image {
	t.Helper()
	file, err := os.ReadFile(filepath.Join("..", "..", "guests", "build", name+".elf"))
	if err != nil {
		t.Fatal(err)
	}
	img, err := vmm.LoadELF(file)
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	return img
}

// recording is the outcome of one recorded or replayed run.
type recording struct {
	log     []byte
	console string
	regs    replay.Regs
	digest  [32]byte
	status  int
	runErr  error // the guest's fault, if it faulted
	summary replay.Summary
}

// record runs a guest live under a Recorder writing to memory.
func record(t testing.TB, name, input string, cfg Config) recording {
	t.Helper()
	return recordOn(t, vmmtest.Backend(t), name, input, cfg)
}

func recordOn(t testing.TB, b backend.Backend, name, input string, cfg Config) recording {
	t.Helper()
	img := loadGuest(t, name)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var log, console bytes.Buffer
	enc := replay.NewEncoder(&log)
	end, err := Record(ctx, b, img, cfg, "test", vmm.NewLiveWorld(ctx, strings.NewReader(input), &console), enc)
	if errors.Is(err, vmm.ErrInterrupted) {
		t.Fatalf("%s: recording did not finish", name)
	}
	if err != nil {
		t.Fatal(err)
	}
	if err := enc.Flush(); err != nil {
		t.Fatal(err)
	}
	return recording{log: log.Bytes(), console: console.String(), regs: end.Regs, digest: end.Digest,
		status: end.Result.Status, runErr: end.Err(), summary: end.Summary}
}

// replayLog replays a log of guest name on the test's backend and returns
// what the replay showed, its final state and the first error (a
// divergence, a bad log, or the final state's verdict).
func replayLog(t testing.TB, name string, log []byte) (recording, error) {
	t.Helper()
	return replayOn(t, vmmtest.Backend(t), name, log)
}

func replayOn(t testing.TB, b backend.Backend, name string, log []byte) (recording, error) {
	t.Helper()
	img := loadGuest(t, name)
	var console bytes.Buffer
	wrap := func(rep *replay.Replayer) replay.World {
		return replay.WithOutputs(rep, func(_ replay.OutputKind, b []byte) error { console.Write(b); return nil })
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	pick := func() (backend.Backend, error) { return b, nil }
	end, err := Replay(ctx, pick, img, replay.NewDecoder(bytes.NewReader(log)), wrap)
	r := recording{console: console.String(), status: end.Result.Status, runErr: end.Err(), regs: end.Regs, digest: end.Digest, summary: end.Summary}
	return r, err
}

// sameRun fails the test unless the replay (with its error) verified and
// showed exactly what the recording did: console output, final registers,
// memory digest, status, and the same fault if the guest faulted.
func sameRun(t *testing.T, rec, rep recording, err error) {
	t.Helper()
	if err != nil {
		t.Fatalf("replay: %v", err)
	}
	if rep.console != rec.console || rep.regs != rec.regs || rep.digest != rec.digest || rep.status != rec.status {
		t.Fatalf("replay differs:\nconsole %q\n   vs   %q\nregs %+v\n vs  %+v\nstatus %d vs %d", rep.console, rec.console, rep.regs, rec.regs, rep.status, rec.status)
	}
	if (rec.runErr == nil) != (rep.runErr == nil) || rec.runErr != nil && rec.runErr.Error() != rep.runErr.Error() {
		t.Fatalf("ending differs: %v vs %v", rec.runErr, rep.runErr)
	}
}

// TestDeterminism records and replays every guest: console output, final
// registers, memory hash and exit status must match (rr's compare_test).
func TestDeterminism(t *testing.T) {
	cases := []struct {
		guest, input string
		cfg          Config
	}{
		{"hello", "", Config{}},
		{"echo", "first line\nsecond\n\nlast without newline", Config{}},
		{"nondet", "typed by the test\n", Config{}},
		{"cpu", "", Config{Cmdline: "rounds=2000 work=1000"}},
		{"exit3", "", Config{}},
		{"ud2", "", Config{MemSize: 8 << 20}}, // a run that ends in a fault replays too
	}
	for _, c := range cases {
		t.Run(c.guest, func(t *testing.T) {
			rec := record(t, c.guest, c.input, c.cfg)
			rep, err := replayLog(t, c.guest, rec.log)
			sameRun(t, rec, rep, err)
			if rec.console == "" {
				t.Fatal("no console output: the test would not see a difference")
			}
		})
	}
}

// TestLongCPUDeterminism: a long cpu run, at least 100,000 RDTSC reads
// (110,000 rounds: about 1 s on kvm_pvm and 4 s on ptrace here), replays to
// the same checksum, registers and memory. The promise is the count of
// reads, which every machine sees alike; the time is only reported.
func TestLongCPUDeterminism(t *testing.T) {
	if testing.Short() {
		t.Skip("long run")
	}
	start := time.Now()
	rec := record(t, "cpu", "", Config{Cmdline: "rounds=110000 work=9000"})
	took := time.Since(start)
	if n := rec.summary.Kinds[replay.KindTSC]; n < 100_000 {
		t.Fatalf("only %d RDTSC entries", n)
	}
	rep, err := replayLog(t, "cpu", rec.log)
	if err != nil {
		t.Fatal(err)
	}
	if rep.console != rec.console || rep.digest != rec.digest {
		t.Fatalf("replay differs: %q vs %q", rep.console, rec.console)
	}
	t.Logf("recorded %v, %d TSC entries, %d log bytes (%.2f bytes/entry overall)", took.Round(time.Millisecond),
		rec.summary.Kinds[replay.KindTSC], len(rec.log), float64(len(rec.log))/float64(rec.summary.Entries))
}

// reencode decodes a log, lets edit change its entries, and encodes it again.
func reencode(t *testing.T, log []byte, edit func(e *replay.Entry)) []byte {
	t.Helper()
	dec := replay.NewDecoder(bytes.NewReader(log))
	var out bytes.Buffer
	enc := replay.NewEncoder(&out)
	for {
		e, err := dec.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		edit(&e)
		if err := enc.Append(e); err != nil {
			t.Fatal(err)
		}
	}
	enc.Flush()
	return out.Bytes()
}

// TestReplayRefusesAnotherImage: a log of one guest does not replay another.
func TestReplayRefusesAnotherImage(t *testing.T) {
	rec := record(t, "hello", "", Config{})
	_, err := replayLog(t, "exit3", rec.log)
	if !errors.Is(err, replay.ErrStartMismatch) || !strings.Contains(err.Error(), "guest image differs") {
		t.Fatalf("got %v", err)
	}
}

// TestAlteredTSCDiverges changes one RDTSC value in the middle of a cpu log:
// the replay must fail with a DivergenceError whose range holds that exit.
func TestAlteredTSCDiverges(t *testing.T) {
	rec := record(t, "cpu", "", Config{Cmdline: "rounds=1000 work=100"})
	var altered uint64
	n := 0
	bad := reencode(t, rec.log, func(e *replay.Entry) {
		if e.Kind == replay.KindTSC {
			if n++; n == 500 {
				e.Value += 7
				altered = e.Exit
			}
		}
	})
	_, err := replayLog(t, "cpu", bad)
	var d *replay.DivergenceError
	if !errors.As(err, &d) {
		t.Fatalf("got %v, want a DivergenceError", err)
	}
	if d.Exit < altered || d.Since >= altered {
		t.Fatalf("divergence reported at exit %d (since %d); the altered TSC was at exit %d: %v", d.Exit, d.Since, altered, err)
	}
	t.Logf("altered exit %d: %v", altered, err)
}

// TestDamagedLogs: truncated logs, flipped bits and random bytes give
// errors that say where, never a panic and never a verified replay.
func TestDamagedLogs(t *testing.T) {
	rec := record(t, "echo", "one\ntwo\n", Config{})
	log := rec.log
	t.Run("truncated", func(t *testing.T) {
		for _, cut := range []int{len(log) - 1, len(log) / 2, 10} {
			_, err := replayLog(t, "echo", log[:cut])
			if err == nil || !strings.Contains(err.Error(), "byte") {
				t.Errorf("cut at %d: %v; want an error naming the offset", cut, err)
			}
		}
	})
	t.Run("flipped bit", func(t *testing.T) {
		b := append([]byte(nil), log...)
		b[len(b)-20] ^= 0x10
		_, err := replayLog(t, "echo", b)
		if !errors.Is(err, replay.ErrChecksum) || !strings.Contains(err.Error(), "frame 1") {
			t.Fatalf("got %v; want a checksum error naming frame 1", err)
		}
	})
	t.Run("random bytes", func(t *testing.T) {
		rng := rand.New(rand.NewSource(1))
		for i := 0; i < 50; i++ {
			b := make([]byte, rng.Intn(4096))
			rng.Read(b)
			if i%2 == 0 && len(b) > 16 {
				copy(b, log[:16]) // a valid header, then garbage
			}
			if _, err := replayLog(t, "echo", b); err == nil {
				t.Fatalf("random log %d replayed without error", i)
			}
		}
	})
}

// TestReplayAcrossBackends: a log recorded on one backend replays on every
// other usable one, bit-identical (console, registers, memory digest,
// status, the fault of a faulting guest), because the guest sees the same
// machine on each (vmm.ABIProfile).
func TestReplayAcrossBackends(t *testing.T) {
	bs := backends.UsableBackends()
	if len(bs) < 2 {
		t.Logf("only %v usable here: no other backend to replay on (.ci/run runs the KVM tests under emulation on such hosts)", backends.Usable())
	}
	cases := []struct {
		guest, input string
		cfg          Config
	}{
		{"hello", "", Config{}},
		{"echo", "first line\nsecond\n", Config{}},
		{"nondet", "typed by the test\n", Config{}},
		{"cpu", "", Config{Cmdline: "rounds=2000 work=1000"}},
		{"ud2", "", Config{}},
		{"nullptr", "", Config{}},
		{"stackoverflow", "", Config{}},
	}
	for _, from := range bs {
		for _, to := range bs {
			for _, c := range cases {
				t.Run(from.Name()+"-to-"+to.Name()+"/"+c.guest, func(t *testing.T) {
					rec := recordOn(t, from, c.guest, c.input, c.cfg)
					rep, err := replayOn(t, to, c.guest, rec.log)
					sameRun(t, rec, rep, err)
				})
			}
		}
	}
}
