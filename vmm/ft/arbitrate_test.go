package ft

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ftvm/ftvm/splitbrain"
)

// newTestArbiter returns a file arbiter over a new initialized directory
// with vmID at epoch 1, the generation the tests' pairs use.
func newTestArbiter(t *testing.T, vmID string) (splitbrain.Arbiter, error) {
	t.Helper()
	arb, err := splitbrain.Open("file://" + t.TempDir())
	if err != nil {
		return nil, err
	}
	if _, err := arb.Init(context.Background()); err != nil {
		return nil, err
	}
	if gen, err := TakeEpoch(context.Background(), arb, vmID, "test"); err != nil || gen != 1 {
		t.Fatalf("TakeEpoch = %d, %v; want 1", gen, err)
	}
	return arb, nil
}

func quietLog(string, ...any) {}

// TestArbitrateStaleEpochIsFatal: a side of a pairing that was replaced
// (another backup took a newer epoch) asks the arbiter after losing its
// peer; the answer can never change, so arbitrate ends with
// ErrArbiterRefused at once instead of retrying forever.
func TestArbitrateStaleEpochIsFatal(t *testing.T) {
	arb, err := newTestArbiter(t, "vm")
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if _, err := TakeEpoch(ctx, arb, "vm", "new-backup"); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	d, err := arbitrate(ctx, arb, splitbrain.Claim{VMID: "vm", Generation: 1, Claimant: "old-primary"}, quietLog)
	if !errors.Is(err, ErrArbiterRefused) || !errors.Is(err, splitbrain.ErrStaleEpoch) || d.Won {
		t.Fatalf("arbitrate at a stale epoch = %+v, %v; want ErrArbiterRefused wrapping ErrStaleEpoch", d, err)
	}
	if ctx.Err() != nil {
		t.Fatal("arbitrate waited for its deadline instead of failing")
	}
	// The current pairing still decides normally.
	d, err = arbitrate(ctx, arb, splitbrain.Claim{VMID: "vm", Generation: 2, Claimant: "new-backup"}, quietLog)
	if err != nil || !d.Won {
		t.Fatalf("arbitrate at the current epoch = %+v, %v; want won", d, err)
	}
}

// TestArbitrateWrongClusterIsFatal: the share a side started on is replaced
// by another one (another cluster's marker); its claim is refused for good.
func TestArbitrateWrongClusterIsFatal(t *testing.T) {
	root := t.TempDir()
	arb, err := splitbrain.Open("file://" + root)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if _, err := arb.Init(ctx); err != nil {
		t.Fatal(err)
	}
	gen, err := TakeEpoch(ctx, arb, "vm", "backup")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(filepath.Join(root, ".ftvm-arbiter")); err != nil {
		t.Fatal(err)
	}
	other, _ := splitbrain.Open("file://" + root)
	if _, err := other.Init(ctx); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	d, err := arbitrate(ctx, arb, splitbrain.Claim{VMID: "vm", Generation: gen, Claimant: "backup"}, quietLog)
	if !errors.Is(err, ErrArbiterRefused) || !errors.Is(err, splitbrain.ErrWrongCluster) || d.Won {
		t.Fatalf("arbitrate on another cluster's share = %+v, %v; want ErrArbiterRefused wrapping ErrWrongCluster", d, err)
	}
}

// TestStartChecks: what a side refuses at start-up, before it listens or
// dials, instead of at its first failover.
func TestStartChecks(t *testing.T) {
	ctx := context.Background()
	open := func(t *testing.T, root string) splitbrain.Arbiter {
		a, err := splitbrain.Open("file://" + root)
		if err != nil {
			t.Fatal(err)
		}
		return a
	}
	t.Run("MissingRoot", func(t *testing.T) {
		a := open(t, filepath.Join(t.TempDir(), "nonexist"))
		if _, err := TakeEpoch(ctx, a, "vm", "backup"); err == nil {
			t.Fatal("TakeEpoch on a missing root succeeded")
		}
		if _, err := JoinEpoch(ctx, a, "vm", 0); err == nil {
			t.Fatal("JoinEpoch on a missing root succeeded")
		}
	})
	t.Run("UnmountedShare", func(t *testing.T) {
		// The empty mount-point directory: no marker.
		a := open(t, t.TempDir())
		if _, err := TakeEpoch(ctx, a, "vm", "backup"); !errors.Is(err, splitbrain.ErrNotInitialized) {
			t.Fatalf("TakeEpoch on an empty mount point = %v; want ErrNotInitialized", err)
		}
		if _, err := JoinEpoch(ctx, a, "vm", 0); !errors.Is(err, splitbrain.ErrNotInitialized) {
			t.Fatalf("JoinEpoch on an empty mount point = %v; want ErrNotInitialized", err)
		}
	})
	t.Run("BadVMID", func(t *testing.T) {
		a, err := newTestArbiter(t, "vm")
		if err != nil {
			t.Fatal(err)
		}
		if _, err := TakeEpoch(ctx, a, "bad/id", "backup"); !errors.Is(err, splitbrain.ErrInvalidClaim) || !strings.Contains(err.Error(), "--vm-id") {
			t.Fatalf("TakeEpoch(bad/id) = %v; want ErrInvalidClaim naming --vm-id", err)
		}
	})
	t.Run("Epochs", func(t *testing.T) {
		a, err := newTestArbiter(t, "vm") // epoch 1, unclaimed
		if err != nil {
			t.Fatal(err)
		}
		if gen, err := JoinEpoch(ctx, a, "vm", 0); err != nil || gen != 1 {
			t.Fatalf("JoinEpoch(current) = %d, %v; want 1", gen, err)
		}
		if gen, err := JoinEpoch(ctx, a, "vm", 1); err != nil || gen != 1 {
			t.Fatalf("JoinEpoch(1) = %d, %v; want 1", gen, err)
		}
		if _, err := JoinEpoch(ctx, a, "vm", 7); err == nil {
			t.Fatal("JoinEpoch of an epoch nobody took succeeded")
		}
		if _, err := JoinEpoch(ctx, a, "other", 0); err == nil {
			t.Fatal("JoinEpoch of a VM without an epoch succeeded")
		}
		// The pairing of epoch 1 fails over; a pair may not start on it again.
		if d, err := a.Claim(ctx, splitbrain.Claim{VMID: "vm", Generation: 1, Claimant: "backup"}); err != nil || !d.Won {
			t.Fatal(d, err)
		}
		if _, err := JoinEpoch(ctx, a, "vm", 1); err == nil || !strings.Contains(err.Error(), "held by backup") {
			t.Fatalf("JoinEpoch of a held epoch = %v; want refused, naming the holder", err)
		}
		// A new pairing takes a new epoch and starts.
		gen, err := TakeEpoch(ctx, a, "vm", "backup2")
		if err != nil || gen != 2 {
			t.Fatalf("TakeEpoch after a failover = %d, %v; want 2", gen, err)
		}
		if _, err := JoinEpoch(ctx, a, "vm", 1); err == nil {
			t.Fatal("JoinEpoch of an old epoch succeeded")
		}
		if got, err := JoinEpoch(ctx, a, "vm", 0); err != nil || got != 2 {
			t.Fatalf("JoinEpoch(current) = %d, %v; want 2", got, err)
		}
	})
}
