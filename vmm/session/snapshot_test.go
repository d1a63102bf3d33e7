package session

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ftvm/ftvm/replay"
	"github.com/ftvm/ftvm/vmm"
	"github.com/ftvm/ftvm/vmm/backend"
	"github.com/ftvm/ftvm/vmm/backends"
	"github.com/ftvm/ftvm/vmm/vmmtest"
)

// snapshotCases are guests recorded with a snapshot mid-run: at is an
// exit well before the end of each.
var snapshotCases = []struct {
	guest, input string
	cfg          Config
	at           uint64
}{
	{"cpu", "", Config{Cmdline: "rounds=2000 work=1000"}, 1000},
	{"echo", "first line\nsecond\n\nlast without newline", Config{}, 6},
	{"nondet", "typed by the test\n", Config{}, 7},
	{"fpstate", "", Config{Cmdline: "calls=200"}, 100},
}

// snapRecording is a recording with a snapshot taken during it.
type snapRecording struct {
	recording
	snapPath string
	state    *vmm.State
	taken    SnapshotTaken
	exits    uint64
}

func recordWithSnapshot(t *testing.T, b backend.Backend, name, input string, cfg Config, at uint64) snapRecording {
	t.Helper()
	img := loadGuest(t, name)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var log, console bytes.Buffer
	enc := replay.NewEncoder(&log)
	rec := replay.NewRecorder(vmm.NewLiveWorld(ctx, strings.NewReader(input), &console), enc, replay.RecorderConfig{})
	path := filepath.Join(t.TempDir(), name+".snap")
	end, taken, err := RecordSnapshot(ctx, b, img, cfg, "test", rec, SnapshotPlan{AtExit: at, Path: path})
	if err != nil {
		t.Fatalf("recording %s with a snapshot at exit %d: %v", name, at, err)
	}
	if err := enc.Flush(); err != nil {
		t.Fatal(err)
	}
	if taken.Err != nil || taken.Exit != at || taken.Bytes == 0 {
		t.Fatalf("snapshot at exit %d: taken %+v", at, taken)
	}
	if at >= end.Result.Exits {
		t.Fatalf("the snapshot at exit %d is not mid-run: the guest made %d exits", at, end.Result.Exits)
	}
	if _, err := os.Stat(path + ".incomplete"); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("the temporary snapshot file is left behind: %v", err)
	}
	st, err := vmm.ReadStateFile(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%s on %s: snapshot at exit %d of %d: %d bytes, %d pages, guest paused %v", name, b.Name(), at, end.Result.Exits, taken.Bytes, taken.Pages, taken.Pause)
	return snapRecording{
		recording: recording{log: log.Bytes(), console: console.String(), regs: end.Regs, digest: end.Digest,
			status: end.Result.Status, runErr: end.Err(), summary: end.Summary},
		snapPath: path, state: st, taken: taken, exits: end.Result.Exits,
	}
}

// replayFromSnapshotOn replays log from st on b; console is what the
// replay showed after the snapshot.
func replayFromSnapshotOn(t *testing.T, b backend.Backend, name string, st *vmm.State, log []byte) (recording, error) {
	t.Helper()
	img := loadGuest(t, name)
	var console bytes.Buffer
	wrap := func(rep *replay.Replayer) replay.World {
		return replay.WithOutputs(rep, func(_ replay.OutputKind, b []byte) error { console.Write(b); return nil })
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	pick := func() (backend.Backend, error) { return b, nil }
	end, err := ReplayFromSnapshot(ctx, pick, img, st, replay.NewDecoder(bytes.NewReader(log)), wrap)
	return recording{console: console.String(), status: end.Result.Status, runErr: end.Err(), regs: end.Regs, digest: end.Digest, summary: end.Summary}, err
}

// TestReplayFromSnapshot: for each guest, on every usable backend, a
// snapshot taken mid-recording and replayed with the rest of the log ends
// in the same state as the full replay and the recording (final digest,
// registers, status), having shown the end of the same console output;
// the replay consumed only the entries after the snapshot.
func TestReplayFromSnapshot(t *testing.T) {
	vmmtest.ForEachBackend(t, func(t *testing.T, b backend.Backend) {
		for _, c := range snapshotCases {
			t.Run(c.guest, func(t *testing.T) {
				rec := recordWithSnapshot(t, b, c.guest, c.input, c.cfg, c.at)
				full, err := replayOn(t, b, c.guest, rec.log)
				sameRun(t, rec.recording, full, err)
				part, err := replayFromSnapshotOn(t, b, c.guest, rec.state, rec.log)
				if err != nil {
					t.Fatalf("replay from the snapshot: %v", err)
				}
				if part.digest != full.digest || part.regs != full.regs || part.status != full.status {
					t.Fatalf("replay from the snapshot ends differently from the full replay:\ndigest %x vs %x\nregs %+v\n vs  %+v\nstatus %d vs %d", part.digest, full.digest, part.regs, full.regs, part.status, full.status)
				}
				if !strings.HasSuffix(rec.console, part.console) {
					t.Fatalf("replay from the snapshot showed %q, not the end of %q", part.console, rec.console)
				}
				if part.summary.Exits >= full.summary.Exits {
					t.Fatalf("replay from the snapshot was asked at %d points, the full replay at %d: the prefix was not skipped", part.summary.Exits, full.summary.Exits)
				}
				if c.guest == "fpstate" && !strings.Contains(rec.console, "state kept") {
					t.Fatalf("fpstate lost its FP state while recording: %q", rec.console)
				}
			})
		}
	})
}

// TestSnapshotAcrossBackends: a snapshot taken on one backend replays with
// its log on the other, and runs on from there as a plain run, with the
// x87/SSE state intact (the fpstate guest checks it after the snapshot).
func TestSnapshotAcrossBackends(t *testing.T) {
	bs := backends.UsableBackends()
	if len(bs) < 2 {
		t.Skipf("only %v usable here: no second backend to restore on", backends.Usable())
	}
	for _, from := range bs {
		for _, to := range bs {
			if from.Name() == to.Name() {
				continue
			}
			for _, c := range snapshotCases {
				t.Run(from.Name()+"-to-"+to.Name()+"/"+c.guest, func(t *testing.T) {
					rec := recordWithSnapshot(t, from, c.guest, c.input, c.cfg, c.at)
					part, err := replayFromSnapshotOn(t, to, c.guest, rec.state, rec.log)
					if err != nil {
						t.Fatalf("replay on %s from a snapshot taken on %s: %v", to.Name(), from.Name(), err)
					}
					if part.digest != rec.digest || part.regs != rec.regs || part.status != rec.status {
						t.Fatalf("replay on %s from the %s snapshot ends differently: digest %x vs %x, status %d vs %d", to.Name(), from.Name(), part.digest, rec.digest, part.status, rec.status)
					}
				})
			}
		}
	}
}

// TestRunFromSnapshotKeepsFPState: the fpstate guest, snapshotted in the
// middle of its loop of calls (x87, XMM8-15, MXCSR and FCW all holding
// its values), runs on from the snapshot on every backend and finds them
// all intact.
func TestRunFromSnapshotKeepsFPState(t *testing.T) {
	from := vmmtest.Backend(t)
	rec := recordWithSnapshot(t, from, "fpstate", "", Config{Cmdline: "calls=200"}, 100)
	if rec.state.FP.MXCSR != 0x7f80 || rec.state.FP.FCW != 0x27f {
		t.Fatalf("the snapshot's FP state is not the guest's: MXCSR %#x FCW %#x", rec.state.FP.MXCSR, rec.state.FP.FCW)
	}
	vmmtest.ForEachBackend(t, func(t *testing.T, b backend.Backend) {
		out, end := runFromSnapshot(t, b, "fpstate", rec.state)
		if end.Err() != nil || end.Result.Status != 0 || !strings.Contains(out, "fpstate: state kept") {
			t.Fatalf("fpstate from a %s snapshot on %s: status %d, %v, output %q", from.Name(), b.Name(), end.Result.Status, end.Err(), out)
		}
	})
}

// clockWatch remembers the first TSC and monotonic clock values a world
// gave after a restore.
type clockWatch struct {
	replay.World
	firstTSC, firstMono uint64
}

func (w *clockWatch) TSC(p replay.ExecPoint) (uint64, error) {
	v, err := w.World.TSC(p)
	if w.firstTSC == 0 {
		w.firstTSC = v
	}
	return v, err
}

func (w *clockWatch) Clock(p replay.ExecPoint, c replay.ClockID) (uint64, error) {
	v, err := w.World.Clock(p, c)
	if c == replay.ClockMonotonic && w.firstMono == 0 {
		w.firstMono = v
	}
	return v, err
}

func runFromSnapshot(t *testing.T, b backend.Backend, name string, st *vmm.State) (string, End) {
	t.Helper()
	out, end, _ := runFromSnapshotWatched(t, b, name, st)
	return out, end
}

func runFromSnapshotWatched(t *testing.T, b backend.Backend, name string, st *vmm.State) (string, End, *clockWatch) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var console bytes.Buffer
	live := vmm.NewLiveWorld(ctx, nil, &console)
	live.ContinueFrom(st.SeenTime())
	w := &clockWatch{World: live}
	end, err := RunFromSnapshot(ctx, b, loadGuest(t, name), st, w)
	if err != nil {
		t.Fatalf("run of %s from the snapshot on %s: %v", name, b.Name(), err)
	}
	return console.String(), end, w
}

// TestRunFromSnapshotTimeGoesOn: a plain run from a snapshot continues
// the virtual TSC and monotonic clock after the values the guest saw
// before it, even though the new world starts its clocks at 0.
func TestRunFromSnapshotTimeGoesOn(t *testing.T) {
	b := vmmtest.Backend(t)
	rec := recordWithSnapshot(t, b, "cpu", "", Config{Cmdline: "rounds=2000 work=1000"}, 1000)
	if rec.state.Seen.TSC == 0 {
		t.Fatal("the snapshot holds no TSC value although cpu reads it every round")
	}
	_, end, w := runFromSnapshotWatched(t, b, "cpu", rec.state)
	if end.Err() != nil || end.Result.Exits != rec.exits {
		t.Fatalf("run from the snapshot: %v, %d exits (the recording made %d)", end.Err(), end.Result.Exits, rec.exits)
	}
	if w.firstTSC <= rec.state.Seen.TSC {
		t.Fatalf("the TSC went backwards across the snapshot: %d after %d", w.firstTSC, rec.state.Seen.TSC)
	}
}

// TestSnapshotRefused: a snapshot is refused, saying why, for another guest
// image, another configuration, a log of another recording, and when it
// is damaged or truncated.
func TestSnapshotRefused(t *testing.T) {
	b := vmmtest.Backend(t)
	rec := recordWithSnapshot(t, b, "nondet", "typed\n", Config{}, 7)
	ctx := context.Background()

	_, err := RunFromSnapshot(ctx, b, loadGuest(t, "hello"), rec.state, &clockWatch{})
	if !errors.Is(err, ErrRefused) || !errors.Is(err, vmm.ErrStateMismatch) || !strings.Contains(err.Error(), "guest image") {
		t.Errorf("run of another image from the snapshot: %v", err)
	}
	_, err = replayFromSnapshotOn(t, b, "hello", rec.state, rec.log)
	if !errors.Is(err, ErrRefused) {
		t.Errorf("replay of another image from the snapshot: %v", err)
	}

	other := *rec.state
	other.Config = strings.Replace(other.Config, `"cmdline":""`, `"cmdline":"x=1"`, 1)
	if other.Config == rec.state.Config {
		t.Fatalf("could not alter the config text %q", other.Config)
	}
	_, err = RunFromSnapshot(ctx, b, loadGuest(t, "nondet"), &other, &clockWatch{})
	if !errors.Is(err, ErrRefused) || !strings.Contains(err.Error(), "configuration") {
		t.Errorf("run from a snapshot whose configuration is not its digest's: %v", err)
	}
	otherLog := recordOn(t, b, "nondet", "typed\n", Config{Cmdline: "x=1"})
	_, err = replayFromSnapshotOn(t, b, "nondet", rec.state, otherLog.log)
	if !errors.Is(err, ErrRefused) || !strings.Contains(err.Error(), "configuration") {
		t.Errorf("replay of a log of another configuration from the snapshot: %v", err)
	}

	file, err := os.ReadFile(rec.snapPath)
	if err != nil {
		t.Fatal(err)
	}
	for _, cut := range []int{0, 5, 12, 100, len(file) / 2, len(file) - 1} {
		if _, err := vmm.DecodeState(file[:cut]); !errors.Is(err, vmm.ErrSnapshotCorrupt) {
			t.Errorf("snapshot truncated to %d of %d bytes: %v", cut, len(file), err)
		}
	}
	damaged := bytes.Clone(file)
	damaged[len(damaged)/3] ^= 0x40
	if _, err := vmm.DecodeState(damaged); !errors.Is(err, vmm.ErrSnapshotCorrupt) || !strings.Contains(err.Error(), "checksum") {
		t.Errorf("damaged snapshot: %v", err)
	}
}

// TestSnapshotAfterTheEnd: a snapshot planned after the guest's last exit
// is reported as not taken, and the recording is still complete.
func TestSnapshotAfterTheEnd(t *testing.T) {
	b := vmmtest.Backend(t)
	ctx := context.Background()
	var log bytes.Buffer
	enc := replay.NewEncoder(&log)
	rec := replay.NewRecorder(vmm.NewLiveWorld(ctx, nil, io.Discard), enc, replay.RecorderConfig{})
	path := filepath.Join(t.TempDir(), "late.snap")
	_, taken, err := RecordSnapshot(ctx, b, loadGuest(t, "hello"), Config{}, "test", rec, SnapshotPlan{AtExit: 1 << 40, Path: path})
	if err != nil {
		t.Fatalf("the recording failed: %v", err)
	}
	if taken.Err == nil || !strings.Contains(taken.Err.Error(), "no snapshot taken") {
		t.Fatalf("snapshot after the end: %+v", taken)
	}
	if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("a snapshot file exists: %v", err)
	}
	enc.Flush()
	if _, err := replayOn(t, b, "hello", log.Bytes()); err != nil {
		t.Fatalf("the log of that recording does not replay: %v", err)
	}
}

// entriesAfter is a source of log's entries after seq, as a joining
// backup receives them.
func entriesAfter(t *testing.T, log []byte, seq uint64) replay.Source {
	t.Helper()
	dec := replay.NewDecoder(bytes.NewReader(log))
	var buf bytes.Buffer
	enc := replay.NewEncoderSize(&buf, 512)
	for {
		e, err := dec.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if e.Seq > seq {
			if err := enc.Append(e); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := enc.Flush(); err != nil {
		t.Fatal(err)
	}
	return replay.NewDecoder(&buf)
}

// TestReplayJoined: a backup that joins mid-run gets the state at a moment
// and the log from the entry after it, nothing before. On every pair of
// usable backends (the state taken on one, the join on another too), the
// joined replay ends exactly as the full replay; a log that misses its
// first entry after the state is refused as damaged.
func TestReplayJoined(t *testing.T) {
	bs := backends.UsableBackends()
	for _, from := range bs {
		for _, to := range bs {
			// Across backends one guest is enough here: the state's form
			// is checked across them by TestSnapshotAcrossBackends.
			cases := snapshotCases
			if from != to {
				cases = snapshotCases[3:] // fpstate: registers, memory and x87/SSE
			}
			t.Run(from.Name()+"-to-"+to.Name(), func(t *testing.T) {
				for _, c := range cases {
					rec := recordWithSnapshot(t, from, c.guest, c.input, c.cfg, c.at)
					full, err := replayOn(t, to, c.guest, rec.log)
					sameRun(t, rec.recording, full, err)
					ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
					img := loadGuest(t, c.guest)
					end, err := ReplayJoined(ctx, to, img, rec.state, entriesAfter(t, rec.log, rec.state.Log.Seq), nil)
					cancel()
					if err != nil {
						t.Fatalf("%s: joined replay: %v", c.guest, err)
					}
					if end.Digest != full.digest || end.Regs != full.regs || end.Result.Status != full.status {
						t.Fatalf("%s: the joined replay ends differently from the full replay: digest %x vs %x", c.guest, end.Digest, full.digest)
					}
					if end.Summary.Entries >= full.summary.Entries {
						t.Fatalf("%s: the joined replay read %d entries, the full one %d", c.guest, end.Summary.Entries, full.summary.Entries)
					}
				}
			})
		}
	}
	// A gap right after the state: the first entry is missing.
	b := bs[0]
	rec := recordWithSnapshot(t, b, "cpu", "", snapshotCases[0].cfg, snapshotCases[0].at)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	_, err := ReplayJoined(ctx, b, loadGuest(t, "cpu"), rec.state, entriesAfter(t, rec.log, rec.state.Log.Seq+1), nil)
	if !errors.Is(err, replay.ErrCorrupt) {
		t.Fatalf("a joined log with a gap: %v", err)
	}
}

// syncBuffer is a bytes.Buffer for one writing goroutine and a reader that
// waits for it to be done.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

// TestLiveTransferThenJoin: the whole of a joining backup's start, without
// the network. A recording sends its running guest away with pre-copy (the
// guest writes its memory all along), the state at the transfer's pause
// carries the recorder's position, and a VM restored from the received
// stream replays the log after that position to the same end as a full
// replay, on every usable backend.
func TestLiveTransferThenJoin(t *testing.T) {
	cfg := Config{Cmdline: "pages=512 every=64 passes=2000"}
	vmmtest.ForEachBackend(t, func(t *testing.T, b backend.Backend) {
		img := loadGuest(t, "dirty")
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		var log, console bytes.Buffer
		enc := replay.NewEncoder(&log)
		rec := replay.NewRecorder(vmm.NewLiveWorld(ctx, strings.NewReader(""), &console), enc, replay.RecorderConfig{})
		var stream syncBuffer
		// Started mid-run, while the guest rewrites its 512 pages.
		end, taken, err := RecordSnapshot(ctx, b, img, cfg, "test", rec, SnapshotPlan{Transfer: &stream, TransferAtExit: 2000})
		if err != nil {
			t.Fatal(err)
		}
		if err := enc.Flush(); err != nil {
			t.Fatal(err)
		}
		if taken.TransferErr != nil {
			t.Fatalf("the transfer: %v", taken.TransferErr)
		}
		st, err := vmm.ReceivePrecopy(&stream.b)
		if err != nil {
			t.Fatal(err)
		}
		if st.Log.Seq == 0 || st.Exits != taken.Transfer.Exit || st.Exits <= 2000 || st.Exits >= end.Result.Exits {
			t.Fatalf("the state is at exit %d (log seq %d), the transfer paused at %d, the guest made %d exits: not a mid-run state with a position",
				st.Exits, st.Log.Seq, taken.Transfer.Exit, end.Result.Exits)
		}
		t.Logf("%s: %d rounds, %d bytes, paused %v at exit %d of %d", b.Name(), len(taken.Transfer.Rounds), taken.Transfer.Bytes(), taken.Transfer.Pause, st.Exits, end.Result.Exits)
		for _, to := range backends.UsableBackends() {
			jctx, jcancel := context.WithTimeout(context.Background(), 2*time.Minute)
			joined, err := ReplayJoined(jctx, to, img, st, entriesAfter(t, log.Bytes(), st.Log.Seq), nil)
			jcancel()
			if err != nil {
				t.Fatalf("joined replay on %s: %v", to.Name(), err)
			}
			if joined.Digest != end.Digest || joined.Regs != end.Regs || joined.Result.Status != end.Result.Status {
				t.Fatalf("joined replay on %s ends differently from the recording: digest %x vs %x", to.Name(), joined.Digest, end.Digest)
			}
		}
	})
}
