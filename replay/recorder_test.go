package replay

import (
	"errors"
	"io"
	"strings"
	"testing"
)

// memSink keeps the entries it is given.
type memSink struct {
	entries []Entry
	fail    error
	flushes int
}

func (s *memSink) Append(e Entry) error {
	if s.fail != nil {
		return s.fail
	}
	e.Data = append([]byte(nil), e.Data...)
	s.entries = append(s.entries, e)
	return nil
}

func (s *memSink) Flush() error { s.flushes++; return s.fail }

// Next makes a memSink a Source too, for replaying what it took.
func (s *memSink) Next() (Entry, error) {
	if len(s.entries) == 0 {
		return Entry{}, io.EOF
	}
	e := s.entries[0]
	s.entries = s.entries[1:]
	return e, nil
}

// plainWorld is a live World that does not hold outputs; it notes how many
// entries its sink had when each output reached it.
type plainWorld struct {
	value         uint64
	sink          *memSink
	entriesAtSend []int
	err           error
}

func (w *plainWorld) TSC(ExecPoint) (uint64, error)                      { return w.value, w.err }
func (w *plainWorld) Random(ExecPoint, RandKind) (uint64, error)         { return w.value, w.err }
func (w *plainWorld) Clock(ExecPoint, ClockID) (uint64, error)           { return w.value, w.err }
func (w *plainWorld) NetReceive(ExecPoint, [][]byte, []int) (int, error) { return 0, w.err }
func (w *plainWorld) Wait(ExecPoint, uint64) (WaitResult, error)         { return 0, w.err }
func (w *plainWorld) PowerOff(ExecPoint, int) error                      { return w.err }
func (w *plainWorld) ConsoleRead(ExecPoint, []byte) (int, bool, error) {
	return 0, false, w.err
}
func (w *plainWorld) Output(p ExecPoint, kind OutputKind, data []byte) error {
	w.entriesAtSend = append(w.entriesAtSend, len(w.sink.entries))
	return nil
}

func at(exit uint64) ExecPoint {
	return ExecPoint{Exit: exit, Regs: Regs{RIP: 0x100000 + exit*0x40, RAX: exit}}
}

func TestOutputIsLoggedBeforeItLeaves(t *testing.T) {
	sink := &memSink{}
	live := &plainWorld{sink: sink}
	r := NewRecorder(live, sink, RecorderConfig{})
	if err := r.Start(StartInfo{}); err != nil {
		t.Fatal(err)
	}
	if err := r.Output(at(1), OutputConsole, []byte("hi")); err != nil {
		t.Fatal(err)
	}
	if len(live.entriesAtSend) != 1 || live.entriesAtSend[0] != 2 {
		t.Fatalf("the live world got the output with %v entries logged, want 2 (start, output)", live.entriesAtSend)
	}
	last := sink.entries[len(sink.entries)-1]
	if last.Kind != KindOutput || last.Seq != r.LastSeq() || last.Length != 2 || last.Hash != OutputHash([]byte("hi")) {
		t.Fatalf("last entry %v, LastSeq %d", last, r.LastSeq())
	}
}

func TestOutputHolderGetsTheSeq(t *testing.T) {
	sink := &memSink{}
	live := &scriptedWorld{}
	r := NewRecorder(live, sink, RecorderConfig{})
	if err := r.Start(StartInfo{}); err != nil {
		t.Fatal(err)
	}
	live.value = 7
	if _, err := r.TSC(at(1)); err != nil {
		t.Fatal(err)
	}
	if err := r.Output(at(2), OutputPacket, []byte("pkt")); err != nil {
		t.Fatal(err)
	}
	if want := `hold output packet "pkt" until seq 3 is acked`; len(live.trace) != 1 || live.trace[0] != want {
		t.Fatalf("trace %q, want %q", live.trace, want)
	}
}

func TestRecorderCheckpointsEveryK(t *testing.T) {
	for _, k := range []int{0, 1, 10} {
		sink := &memSink{}
		live := &scriptedWorld{}
		r := NewRecorder(live, sink, RecorderConfig{CheckpointEvery: k})
		if err := r.Start(StartInfo{}); err != nil {
			t.Fatal(err)
		}
		for i := range uint64(1000) {
			live.value = i
			if _, err := r.TSC(at(i + 1)); err != nil {
				t.Fatal(err)
			}
		}
		if err := r.Finish([32]byte{}); err != nil {
			t.Fatal(err)
		}
		every := k
		if every == 0 {
			every = DefaultCheckpointEvery
		}
		got := r.Summary().Kinds[KindCheckpoint]
		// One before entries K+1, 2K+1, ..., and one at Finish unless
		// the last entry had one before it.
		want := uint64(999 / every)
		if 999%every != 0 {
			want++
		}
		if got != want {
			t.Errorf("K=%d: %d checkpoints in 1000 entries, want %d", k, got, want)
		}
		if sink.flushes != 1 {
			t.Errorf("K=%d: %d flushes, want 1 at Finish", k, sink.flushes)
		}
		// And the log replays.
		rp := NewReplayer(sink)
		if _, err := rp.VerifyStart(StartInfo{}); err != nil {
			t.Fatal(err)
		}
		for i := range uint64(1000) {
			if v, err := rp.TSC(at(i + 1)); err != nil || v != i {
				t.Fatalf("K=%d: replay at exit %d: %d, %v", k, i+1, v, err)
			}
		}
		if err := rp.Finish([32]byte{}); err != nil {
			t.Fatalf("K=%d: %v", k, err)
		}
	}
}

func TestRecorderRefusesMisuse(t *testing.T) {
	newRec := func() (*Recorder, *plainWorld) {
		sink := &memSink{}
		live := &plainWorld{sink: sink}
		return NewRecorder(live, sink, RecorderConfig{}), live
	}
	r, _ := newRec()
	if _, err := r.TSC(at(1)); err == nil || !strings.Contains(err.Error(), "Start was not called") {
		t.Errorf("TSC before Start: %v", err)
	}

	r, _ = newRec()
	r.Start(StartInfo{})
	r.TSC(at(5))
	if _, err := r.TSC(at(5)); err == nil || !strings.Contains(err.Error(), "not after the previous exit 5") {
		t.Errorf("the same exit twice: %v", err)
	}
	if _, err := r.TSC(at(6)); err == nil {
		t.Errorf("a recorder that failed goes on")
	}

	r, _ = newRec()
	r.Start(StartInfo{})
	r.PowerOff(at(1), 0)
	if _, err := r.TSC(at(2)); err == nil || !strings.Contains(err.Error(), "already stopped") {
		t.Errorf("TSC after PowerOff: %v", err)
	}

	r, live := newRec()
	r.Start(StartInfo{})
	live.err = errors.New("clock broken")
	if _, err := r.TSC(at(1)); err == nil || !strings.Contains(err.Error(), "clock broken") {
		t.Errorf("live error: %v", err)
	}
	if n := len(live.sink.entries); n != 1 {
		t.Errorf("a failed live call logged %d entries, want only the start", n)
	}

	sink := &memSink{}
	r = NewRecorder(&scriptedWorld{}, sink, RecorderConfig{})
	r.Start(StartInfo{})
	sink.fail = errors.New("link down")
	if _, err := r.TSC(at(1)); err == nil || !strings.Contains(err.Error(), "link down") {
		t.Errorf("sink error: %v", err)
	}
}

// bigReader is a live world whose console always has more input than
// anyone asks for.
type bigReader struct{ scriptedWorld }

func (bigReader) ConsoleRead(_ ExecPoint, buf []byte) (int, bool, error) { return len(buf), false, nil }

func TestConsoleReadIsClippedToAnEntry(t *testing.T) {
	sink := &memSink{}
	r := NewRecorder(&bigReader{}, sink, RecorderConfig{})
	r.Start(StartInfo{})
	n, _, err := r.ConsoleRead(at(1), make([]byte, MaxDataLen+100))
	if err != nil || n != MaxDataLen {
		t.Fatalf("read %d bytes, %v; want %d", n, err, MaxDataLen)
	}
}

func TestReplayerRefusesMisuse(t *testing.T) {
	rp := NewReplayer(&memSink{})
	if _, err := rp.TSC(at(1)); err == nil || !strings.Contains(err.Error(), "VerifyStart was not called") {
		t.Errorf("TSC before VerifyStart: %v", err)
	}
	rp = NewReplayer(&memSink{})
	if _, err := rp.VerifyStart(StartInfo{}); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Errorf("empty log: %v", err)
	}
	rp = NewReplayer(&memSink{entries: []Entry{{Seq: 1, Kind: KindTSC, Exit: 1}}})
	if _, err := rp.VerifyStart(StartInfo{}); !errors.Is(err, ErrCorrupt) {
		t.Errorf("log without start: %v", err)
	}
	// A source that skips an entry.
	rp = NewReplayer(&memSink{entries: []Entry{{Seq: 1, Kind: KindStart}, {Seq: 3, Kind: KindTSC, Exit: 1}}})
	rp.VerifyStart(StartInfo{})
	if _, err := rp.TSC(at(1)); !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), "seq 3 follows seq 1") {
		t.Errorf("missing entry: %v", err)
	}
}

func TestDivergenceErrorFields(t *testing.T) {
	sink := &memSink{}
	live := &scriptedWorld{}
	r := NewRecorder(live, sink, RecorderConfig{})
	r.Start(StartInfo{})
	r.TSC(at(1))
	r.Finish([32]byte{})

	rp := NewReplayer(sink)
	rp.VerifyStart(StartInfo{})
	p := at(1)
	p.Regs.RIP++
	_, err := rp.TSC(p)
	var de *DivergenceError
	if !errors.As(err, &de) {
		t.Fatalf("got %v, want a *DivergenceError", err)
	}
	if de.Exit != 1 || de.Seq != 2 || de.Mismatch != MismatchRIP || de.Want.RIP != 0x100040 || de.Got.RIP != 0x100041 {
		t.Fatalf("got %+v", de)
	}
}

func (w *plainWorld) DiskRead(ExecPoint, []uint64, [][]byte) error { return w.err }
