package logfile

import (
	"errors"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ftvm/ftvm/replay"
)

func entries() []replay.Entry {
	return []replay.Entry{
		{Seq: 1, Kind: replay.KindStart, Start: replay.StartInfo{VMID: "vm"}},
		{Seq: 2, Kind: replay.KindTSC, Exit: 1, RIP: 0x100040, Value: 1000},
		{Seq: 3, Kind: replay.KindConsoleRead, Exit: 2, RIP: 0x100080, Data: []byte("abc")},
		{Seq: 4, Kind: replay.KindEnd},
	}
}

func exists(path string) bool {
	_, err := os.Lstat(path)
	return err == nil
}

func TestCompleteLog(t *testing.T) {
	path := filepath.Join(t.TempDir(), "run.ftlog")
	w, err := Create(path)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries() {
		if err := w.Append(e); err != nil {
			t.Fatal(err)
		}
	}
	if exists(path) || !exists(path+IncompleteSuffix) {
		t.Fatalf("before Close the log must be only at %s", path+IncompleteSuffix)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if !exists(path) || exists(path+IncompleteSuffix) {
		t.Fatalf("after Close the log must be only at %s", path)
	}
	if err := w.Close(); err == nil {
		t.Fatal("closing twice succeeded")
	}

	r, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	for i, want := range entries() {
		got, err := r.Next()
		if err != nil {
			t.Fatalf("entry %d: %v", i, err)
		}
		if got.String() != want.String() {
			t.Fatalf("entry %d: got %v, want %v", i, got, want)
		}
	}
	if _, err := r.Next(); err != io.EOF {
		t.Fatalf("after the last entry: %v", err)
	}
	if st, _ := os.Stat(path); r.Bytes() != st.Size() {
		t.Fatalf("read %d bytes of %d", r.Bytes(), st.Size())
	}
}

// A recording that dies, or is aborted, leaves only the incomplete file,
// and Open of the final name says so.
func TestIncompleteLogStaysIncomplete(t *testing.T) {
	path := filepath.Join(t.TempDir(), "run.ftlog")
	w, err := Create(path)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries()[:3] {
		if err := w.Append(e); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Sync(); err != nil {
		t.Fatal(err)
	}
	if err := w.Abort(); err != nil {
		t.Fatal(err)
	}
	if exists(path) {
		t.Fatal("an aborted log was completed")
	}
	_, err = Open(path)
	if !errors.Is(err, fs.ErrNotExist) || !strings.Contains(err.Error(), "never completed") {
		t.Fatalf("Open of an incomplete log: %v", err)
	}
	// The incomplete file itself is readable, for a post-mortem.
	r, err := Open(path + IncompleteSuffix)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	n := 0
	for {
		if _, err := r.Next(); err != nil {
			if err != io.EOF {
				t.Fatal(err)
			}
			break
		}
		n++
	}
	if n != 3 {
		t.Fatalf("read %d entries of the incomplete log, want 3", n)
	}
	// And a new recording to the same path is refused until it is removed.
	if _, err := Create(path); err == nil || !strings.Contains(err.Error(), "running or died") {
		t.Fatalf("Create over an incomplete log: %v", err)
	}
}

func TestCreateRefusesAnExistingLog(t *testing.T) {
	path := filepath.Join(t.TempDir(), "run.ftlog")
	if err := os.WriteFile(path, []byte("old"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := Create(path); !errors.Is(err, fs.ErrExist) {
		t.Fatalf("Create over an existing log: %v", err)
	}
}

// A whole recording through a file and back through a replayer.
func TestRecordReplayThroughAFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "run.ftlog")
	w, err := Create(path)
	if err != nil {
		t.Fatal(err)
	}
	live := &counterWorld{}
	rec := replay.NewRecorder(live, w, replay.RecorderConfig{CheckpointEvery: 7})
	if err := rec.Start(replay.StartInfo{VMID: "file"}); err != nil {
		t.Fatal(err)
	}
	point := func(i uint64) replay.ExecPoint {
		return replay.ExecPoint{Exit: i, Regs: replay.Regs{RIP: 0x100040, RCX: i}}
	}
	for i := uint64(1); i <= 100; i++ {
		if _, err := rec.TSC(point(i)); err != nil {
			t.Fatal(err)
		}
	}
	if err := rec.Finish([32]byte{1}); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}

	r, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	rp := replay.NewReplayer(r)
	if _, err := rp.VerifyStart(replay.StartInfo{}); err != nil {
		t.Fatal(err)
	}
	for i := uint64(1); i <= 100; i++ {
		if v, err := rp.TSC(point(i)); err != nil || v != i*1000 {
			t.Fatalf("exit %d: %d, %v", i, v, err)
		}
	}
	if err := rp.Finish([32]byte{1}); err != nil {
		t.Fatal(err)
	}
	if s := rp.Summary(); s.Bytes != rec.Summary().Bytes || s.Entries != rec.Summary().Entries {
		t.Fatalf("replayed %v, recorded %v", s, rec.Summary())
	}
}

// counterWorld answers TSC with 1000 per call.
type counterWorld struct{ n uint64 }

func (w *counterWorld) TSC(replay.ExecPoint) (uint64, error) { w.n++; return w.n * 1000, nil }
func (w *counterWorld) Random(replay.ExecPoint, replay.RandKind) (uint64, error) {
	return 0, nil
}
func (w *counterWorld) Clock(replay.ExecPoint, replay.ClockID) (uint64, error) { return 0, nil }
func (w *counterWorld) ConsoleRead(replay.ExecPoint, []byte) (int, bool, error) {
	return 0, false, nil
}
func (w *counterWorld) NetReceive(replay.ExecPoint, [][]byte, []int) (int, error) { return 0, nil }
func (w *counterWorld) Wait(replay.ExecPoint, uint64) (replay.WaitResult, error)  { return 0, nil }
func (w *counterWorld) Output(replay.ExecPoint, replay.OutputKind, []byte) error  { return nil }
func (w *counterWorld) PowerOff(replay.ExecPoint, int) error                      { return nil }

func (w *counterWorld) DiskRead(replay.ExecPoint, []uint64, [][]byte) error { return nil }
