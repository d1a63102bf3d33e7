package ft

import (
	"context"
	"errors"
	"io"
	"strings"
	"testing"

	"github.com/ftvm/ftvm/replay"
	"github.com/ftvm/ftvm/vmm"
)

// TestNoReleaseOnAStaleLease: acks that arrive when the channel says the
// backup may have gone live meanwhile (a primary paused past the failover
// timeout reads acks that waited in its socket) release nothing; the
// outputs wait, in order, for the arbiter, and leave only if this side
// goes on alone. The campaign's freeze-primary trials saw the woken
// primary's output reach the LAN after the backup's first, which took the
// guest's MAC back to the dead host for 23-46 s.
func TestNoReleaseOnAStaleLease(t *testing.T) {
	var sent []string
	h := newHoldingWorld(context.Background(), vmm.NewLiveWorld(context.Background(), nil, io.Discard),
		func(_ replay.OutputKind, data []byte) error { sent = append(sent, string(data)); return nil },
		func() error { return nil }, nil)
	leaseOK := true
	h.mayRelease = func() error {
		if leaseOK {
			return nil
		}
		return errors.New("the lease has expired")
	}
	for i, out := range []string{"a", "b", "c", "d"} {
		if err := h.HoldOutput(replay.ExecPoint{}, uint64(i+1), replay.OutputConsole, []byte(out)); err != nil {
			t.Fatal(err)
		}
	}
	h.Ack(1)
	if len(sent) != 1 || sent[0] != "a" {
		t.Fatalf("with the lease held, ack 1 sent %q", sent)
	}
	leaseOK = false
	h.Ack(3)
	if len(sent) != 1 {
		t.Fatalf("with the lease expired, ack 3 sent %q", sent)
	}
	if done, _ := h.pending(); done {
		t.Fatal("pending says every output left while b and c wait")
	}
	leaseOK = true // later acks change nothing: what waits, waits for the arbiter
	h.Ack(4)
	if len(sent) != 1 {
		t.Fatalf("after a stale lease, ack 4 sent %q", sent)
	}
	h.goSolo()
	if got := strings.Join(sent, " "); got != "a b c d" {
		t.Fatalf("after going solo: %q", got)
	}
}

// TestLeaseCheckedPerOutput: a lease that runs out in the middle of a
// batch of acknowledged outputs stops the batch there (a side paused
// between two writes of one batch must not send the rest when it wakes).
func TestLeaseCheckedPerOutput(t *testing.T) {
	var sent []string
	h := newHoldingWorld(context.Background(), vmm.NewLiveWorld(context.Background(), nil, io.Discard),
		func(_ replay.OutputKind, data []byte) error { sent = append(sent, string(data)); return nil },
		func() error { return nil }, nil)
	checks := 0
	h.mayRelease = func() error {
		if checks++; checks > 2 {
			return errors.New("the lease has expired")
		}
		return nil
	}
	for i, out := range []string{"a", "b", "c", "d"} {
		if err := h.HoldOutput(replay.ExecPoint{}, uint64(i+1), replay.OutputConsole, []byte(out)); err != nil {
			t.Fatal(err)
		}
	}
	h.Ack(4)
	if got := strings.Join(sent, " "); got != "a b" {
		t.Fatalf("a batch whose lease ran out after two outputs sent %q", got)
	}
	h.goSolo()
	if got := strings.Join(sent, " "); got != "a b c d" {
		t.Fatalf("after going solo: %q", got)
	}
}
