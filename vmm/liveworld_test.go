package vmm

import (
	"context"
	"io"
	"testing"
	"time"

	"github.com/ftvm/ftvm/replay"
)

// TestNudgeEndsAWaitForever: a guest idle in a wait without timeout makes
// no exit; Nudge (a live transfer's pause) makes the wait return as if its
// timeout expired, once, whether it comes during the wait or before it.
func TestNudgeEndsAWaitForever(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	pr, pw := io.Pipe() // no input ever: the wait would block for good
	defer pw.Close()
	w := NewLiveWorld(ctx, pr, io.Discard)
	forever := ^uint64(0)

	w.Nudge() // before the wait: the wait returns at once
	if res, err := w.Wait(replay.ExecPoint{Exit: 1}, forever); err != nil || res != replay.WaitTimeout {
		t.Fatalf("wait after a nudge: %v, %v", res, err)
	}
	got := make(chan replay.WaitResult, 1)
	go func() {
		res, err := w.Wait(replay.ExecPoint{Exit: 2}, forever)
		if err != nil {
			t.Error(err)
		}
		got <- res
	}()
	select {
	case res := <-got:
		t.Fatalf("a wait forever without input or nudge returned %v", res)
	case <-time.After(50 * time.Millisecond):
		// Still waiting, as it should (this bounds nothing: a late
		// return is caught below, since the one nudge is taken).
	}
	w.Nudge()
	if res := <-got; res != replay.WaitTimeout {
		t.Fatalf("nudged wait: %v", res)
	}
	// Two nudges in a row end one wait: the next blocks again.
	w.Nudge()
	w.Nudge()
	if res, _ := w.Wait(replay.ExecPoint{Exit: 3}, forever); res != replay.WaitTimeout {
		t.Fatalf("wait after two nudges: %v", res)
	}
	// A timer never fires early, so a wait that returns before its
	// timeout took a second nudge.
	began := time.Now()
	if res, err := w.Wait(replay.ExecPoint{Exit: 4}, uint64(20*time.Millisecond)); err != nil || res != replay.WaitTimeout {
		t.Fatalf("a 20 ms wait: %v, %v", res, err)
	}
	if took := time.Since(began); took < 20*time.Millisecond {
		t.Fatalf("a 20 ms wait after two nudges and one wait returned after %v: the second nudge was kept", took)
	}
}
