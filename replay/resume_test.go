package replay

import (
	"errors"
	"testing"
)

// recordWithPosition records TSC calls at exits 1..n (checkpoints every
// 10), noting the position after exit mid, with a forced checkpoint next
// as a snapshot makes.
func recordWithPosition(t *testing.T, n, mid uint64) ([]Entry, Position) {
	t.Helper()
	sink := &memSink{}
	live := &scriptedWorld{}
	r := NewRecorder(live, sink, RecorderConfig{CheckpointEvery: 10})
	if err := r.Start(StartInfo{}); err != nil {
		t.Fatal(err)
	}
	var pos Position
	for i := uint64(1); i <= n; i++ {
		live.value = i * 100
		if _, err := r.TSC(at(i)); err != nil {
			t.Fatal(err)
		}
		if i == mid {
			pos = r.Position()
			r.CheckpointNext()
		}
	}
	if err := r.Finish([32]byte{}); err != nil {
		t.Fatal(err)
	}
	return sink.entries, pos
}

func resumedReplayer(t *testing.T, log []Entry, pos Position) (*Replayer, error) {
	t.Helper()
	rp := NewReplayer(&memSink{entries: append([]Entry(nil), log...)})
	if _, err := rp.VerifyStart(StartInfo{}); err != nil {
		t.Fatal(err)
	}
	return rp, rp.ResumeAt(pos)
}

// TestResumeAt: a replay resumed at a recorded position answers the calls
// after it, checks the checkpoints that follow (whose hash covers points
// before the position too) and the end; a position beyond the log or
// before entries it should cover is refused.
func TestResumeAt(t *testing.T) {
	log, pos := recordWithPosition(t, 100, 45)
	rp, err := resumedReplayer(t, log, pos)
	if err != nil {
		t.Fatal(err)
	}
	for i := uint64(46); i <= 100; i++ {
		if v, err := rp.TSC(at(i)); err != nil || v != i*100 {
			t.Fatalf("resumed replay at exit %d: %d, %v", i, v, err)
		}
	}
	if err := rp.Finish([32]byte{}); err != nil {
		t.Fatal(err)
	}

	// A wrong hash is found at the checkpoint right after the position.
	bad := pos
	bad.Hash ^= 1
	rp, err = resumedReplayer(t, log, bad)
	if err != nil {
		t.Fatal(err)
	}
	var div *DivergenceError
	if _, err := rp.TSC(at(46)); !errors.As(err, &div) || div.Mismatch != MismatchRegsHash || div.Exit != 46 {
		t.Fatalf("resumed with a wrong hash: %v", err)
	}

	// A guest that resumes at another exit diverges at once.
	rp, _ = resumedReplayer(t, log, pos)
	if _, err := rp.TSC(at(47)); !errors.As(err, &div) {
		t.Fatalf("resumed guest at exit 47, the log at 46: %v", err)
	}

	beyond := pos
	beyond.Seq = uint64(len(log)) + 5
	if _, err := resumedReplayer(t, log, beyond); !errors.Is(err, ErrPosition) {
		t.Fatalf("a position past the log: %v", err)
	}
	early := pos
	early.Last.Exit = 30 // entries up to Seq are of exits up to 45
	if _, err := resumedReplayer(t, log, early); !errors.Is(err, ErrPosition) {
		t.Fatalf("a position whose entries lie after its exit: %v", err)
	}
	rp = NewReplayer(&memSink{entries: log})
	if err := rp.ResumeAt(pos); err == nil {
		t.Fatal("ResumeAt before VerifyStart was accepted")
	}
}

// TestJoinAt: a joining backup's replayer gets only the entries after the
// position (no start entry, no prefix) and checks them as a full replay
// does, the end included; a source that does not start right after the
// position is corrupt; a wrong hash diverges at the next checkpoint.
func TestJoinAt(t *testing.T) {
	log, pos := recordWithPosition(t, 100, 45)
	after := func() []Entry {
		var es []Entry
		for _, e := range log {
			if e.Seq > pos.Seq {
				es = append(es, e)
			}
		}
		return es
	}
	rp := NewReplayer(&memSink{entries: after()})
	if err := rp.JoinAt(pos); err != nil {
		t.Fatal(err)
	}
	for i := uint64(46); i <= 100; i++ {
		if v, err := rp.TSC(at(i)); err != nil || v != i*100 {
			t.Fatalf("joined replay at exit %d: %d, %v", i, v, err)
		}
	}
	if err := rp.Finish([32]byte{}); err != nil {
		t.Fatal(err)
	}

	bad := pos
	bad.Hash ^= 1
	rp = NewReplayer(&memSink{entries: after()})
	if err := rp.JoinAt(bad); err != nil {
		t.Fatal(err)
	}
	var div *DivergenceError
	if _, err := rp.TSC(at(46)); !errors.As(err, &div) || div.Mismatch != MismatchRegsHash {
		t.Fatalf("joined with a wrong hash: %v", err)
	}

	// The source starts one entry late: a gap in the log.
	rp = NewReplayer(&memSink{entries: after()[1:]})
	if err := rp.JoinAt(pos); err != nil {
		t.Fatal(err)
	}
	if _, err := rp.TSC(at(46)); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("a source with a gap after the position: %v", err)
	}

	rp = NewReplayer(&memSink{entries: log})
	if _, err := rp.VerifyStart(StartInfo{}); err != nil {
		t.Fatal(err)
	}
	if err := rp.JoinAt(pos); err == nil {
		t.Fatal("JoinAt after VerifyStart was accepted")
	}
	if err := NewReplayer(&memSink{}).JoinAt(Position{}); !errors.Is(err, ErrPosition) {
		t.Fatalf("a join at seq 0: %v", err)
	}
}

// TestContinueAt: a recording that continues a log at a position (a
// backup gone live) numbers its entries on from it, and a replay joined at
// a later position of that recording replays it; ContinueAt after Start,
// or at seq 0, is refused.
func TestContinueAt(t *testing.T) {
	sink := &memSink{}
	live := &scriptedWorld{}
	r := NewRecorder(live, sink, RecorderConfig{CheckpointEvery: 10})
	if err := r.ContinueAt(FreshPosition(500, at(40))); err != nil {
		t.Fatal(err)
	}
	if _, err := r.TSC(at(40)); err == nil {
		t.Fatal("a point at the continued position's own exit was recorded")
	}
	r = NewRecorder(live, sink, RecorderConfig{CheckpointEvery: 10})
	if err := r.ContinueAt(FreshPosition(500, at(40))); err != nil {
		t.Fatal(err)
	}
	var pos Position
	for i := uint64(41); i <= 90; i++ {
		live.value = i * 7
		if _, err := r.TSC(at(i)); err != nil {
			t.Fatal(err)
		}
		if i == 60 {
			pos = r.Position()
			r.CheckpointNext()
		}
	}
	if err := r.Finish([32]byte{}); err != nil {
		t.Fatal(err)
	}
	if first := sink.entries[0].Seq; first != 501 {
		t.Fatalf("the continued recording's first entry has seq %d, want 501", first)
	}
	var after []Entry
	for _, e := range sink.entries {
		if e.Seq > pos.Seq {
			after = append(after, e)
		}
	}
	rp := NewReplayer(&memSink{entries: after})
	if err := rp.JoinAt(pos); err != nil {
		t.Fatal(err)
	}
	for i := uint64(61); i <= 90; i++ {
		if v, err := rp.TSC(at(i)); err != nil || v != i*7 {
			t.Fatalf("joined replay at exit %d: %d, %v", i, v, err)
		}
	}
	if err := rp.Finish([32]byte{}); err != nil {
		t.Fatal(err)
	}

	started := NewRecorder(live, &memSink{}, RecorderConfig{})
	if err := started.Start(StartInfo{}); err != nil {
		t.Fatal(err)
	}
	if err := started.ContinueAt(Position{Seq: 3}); err == nil {
		t.Fatal("ContinueAt after Start was accepted")
	}
	if err := NewRecorder(live, &memSink{}, RecorderConfig{}).ContinueAt(Position{}); !errors.Is(err, ErrPosition) {
		t.Fatalf("ContinueAt seq 0: %v", err)
	}
}
