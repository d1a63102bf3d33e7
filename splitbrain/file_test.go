package splitbrain

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
)

// newFileStorage makes an empty directory and opens arbiters over it.
func newFileStorage(t *testing.T) func() Arbiter {
	t.Helper()
	dir := t.TempDir()
	return func() Arbiter {
		a, err := Open("file://" + dir)
		if err != nil {
			t.Fatal(err)
		}
		return a
	}
}

// newReadyFileArbiter returns an arbiter over an initialized root whose
// vm1 is at epoch 1.
func newReadyFileArbiter(t *testing.T) (*FileArbiter, string) {
	t.Helper()
	root := t.TempDir()
	a, err := NewFileArbiter(root)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.Init(context.Background()); err != nil {
		t.Fatal(err)
	}
	takeEpoch(t, a, "vm1", 0)
	return a, root
}

func TestFileContract(t *testing.T) {
	RunContractTests(t, newFileStorage, func(t *testing.T) Arbiter {
		// An unmounted share looks like a missing directory.
		a, err := NewFileArbiter(filepath.Join(t.TempDir(), "not-mounted"))
		if err != nil {
			t.Fatal(err)
		}
		return a
	})
}

func TestFileMissingRootIsNotCreated(t *testing.T) {
	root := filepath.Join(t.TempDir(), "not-mounted")
	a, err := NewFileArbiter(root)
	if err != nil {
		t.Fatal(err)
	}
	if d, err := a.Claim(context.Background(), Claim{VMID: "vm1", Generation: 1, Claimant: "x"}); err == nil || d.Won {
		t.Fatalf("Claim = %+v, %v; want error", d, err)
	}
	if id, err := a.Init(context.Background()); err == nil {
		t.Fatalf("Init of a missing root = %q; want an error", id)
	}
	if _, err := os.Stat(root); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("Claim or Init created or touched the missing root: %v", err)
	}
}

func TestFileRootThatIsAFileIsAnError(t *testing.T) {
	root := filepath.Join(t.TempDir(), "plain-file")
	if err := os.WriteFile(root, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	a, err := NewFileArbiter(root)
	if err != nil {
		t.Fatal(err)
	}
	if d, err := a.Claim(context.Background(), Claim{VMID: "vm1", Generation: 1, Claimant: "x"}); err == nil || d.Won {
		t.Fatalf("Claim = %+v, %v; want error", d, err)
	}
}

func TestFileReadOnlyRootIsAnError(t *testing.T) {
	if os.Geteuid() == 0 {
		t.Skip("root ignores directory permissions")
	}
	a, root := newReadyFileArbiter(t)
	if err := os.Chmod(filepath.Join(root, "vm1"), 0o555); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.Chmod(filepath.Join(root, "vm1"), 0o755) })
	if d, err := a.Claim(context.Background(), Claim{VMID: "vm1", Generation: 1, Claimant: "x"}); err == nil || !IsPermanent(err) || d.Won {
		t.Fatalf("Claim = %+v, %v; want a permanent error", d, err)
	}
	if err := os.Chmod(root, 0o555); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.Chmod(root, 0o755) })
	if _, err := a.Check(context.Background()); err == nil || !IsPermanent(err) {
		t.Fatalf("Check of a read-only root = %v; want a permanent error", err)
	}
}

func TestFileCorruptClaimDecidesNothing(t *testing.T) {
	a, root := newReadyFileArbiter(t)
	dir := filepath.Join(root, "vm1")
	for name, content := range map[string]string{
		"gen-1.claim": "",                             // what O_EXCL-then-crash would leave
		"gen-2.claim": `{"format":"ftvm-claim/1","vm`, // torn
		"gen-3.claim": `{"format":"ftvm-claim/1","vm_id":"other","generation":3,"claimant":"x"}`,
	} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	for gen := uint64(1); gen <= 3; gen++ {
		if gen > 1 {
			takeEpoch(t, a, "vm1", gen-1)
		}
		d, err := a.Claim(context.Background(), Claim{VMID: "vm1", Generation: gen, Claimant: "x"})
		if !errors.Is(err, ErrCorruptClaim) || d.Won {
			t.Errorf("gen %d: Claim = %+v, %v; want ErrCorruptClaim", gen, d, err)
		}
	}
}

func TestFileStaleTempFilesDoNotBlock(t *testing.T) {
	a, root := newReadyFileArbiter(t)
	dir := filepath.Join(root, "vm1")
	// A claimant that crashed before link() leaves only its temp file.
	if err := os.WriteFile(filepath.Join(dir, ".gen-1.claim.tmp-dead"), []byte("half"), 0o644); err != nil {
		t.Fatal(err)
	}
	if d := mustClaim(t, a, Claim{VMID: "vm1", Generation: 1, Claimant: "x"}); !d.Won {
		t.Fatalf("claim lost to a stale temp file: %+v", d)
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 3 { // the epoch, the stale temp and the claim; our own temp is gone
		t.Errorf("dir holds %d entries, want 3: %v", len(entries), entries)
	}
}

// TestFileUnmountedShareIsRefused: the share is mounted on root when the
// side starts; later the mount goes away, leaving the empty mount-point
// directory, and later still another share is mounted there. Neither may
// be taken for the shared storage: the empty directory is undecided (the
// share may come back), the other share is refused for good.
func TestFileUnmountedShareIsRefused(t *testing.T) {
	ctx := context.Background()
	mnt := filepath.Join(t.TempDir(), "mnt")
	share := filepath.Join(t.TempDir(), "share")
	if err := os.Mkdir(mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	a, err := NewFileArbiter(mnt)
	if err != nil {
		t.Fatal(err)
	}
	// Not mounted at start: refused before anything else happens.
	if id, err := a.Check(ctx); !errors.Is(err, ErrNotInitialized) {
		t.Fatalf("Check of an empty mount point = %q, %v; want ErrNotInitialized", id, err)
	}
	if rec, err := a.AdvanceEpoch(ctx, "vm1", 0, "x"); !errors.Is(err, ErrNotInitialized) {
		t.Fatalf("AdvanceEpoch on an empty mount point = %+v, %v; want ErrNotInitialized", rec, err)
	}
	if entries, _ := os.ReadDir(mnt); len(entries) != 0 {
		t.Fatalf("the refused calls wrote to the mount point: %v", entries)
	}

	// "mount" the share (initialized on another host) and start.
	if err := os.Remove(mnt); err != nil {
		t.Fatal(err)
	}
	other, _ := NewFileArbiter(share)
	if err := os.Mkdir(share, 0o755); err != nil {
		t.Fatal(err)
	}
	if _, err := other.Init(ctx); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(share, mnt); err != nil {
		t.Fatal(err)
	}
	id, err := a.Check(ctx)
	if err != nil {
		t.Fatalf("Check of the mounted share: %v", err)
	}
	takeEpoch(t, a, "vm1", 0)

	// Unmounted: the empty mount point is back.
	if err := os.Rename(mnt, share); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	d, err := a.Claim(ctx, Claim{VMID: "vm1", Generation: 1, Claimant: "x"})
	if !errors.Is(err, ErrNotInitialized) || IsPermanent(err) || d.Won {
		t.Fatalf("Claim on the empty mount point = %+v, %v; want a transient ErrNotInitialized", d, err)
	}

	// Another share mounted there, with a marker of its own.
	b, err := NewFileArbiter(mnt)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.Init(ctx); err != nil {
		t.Fatal(err)
	}
	takeEpoch(t, b, "vm1", 0)
	d, err = a.Claim(ctx, Claim{VMID: "vm1", Generation: 1, Claimant: "x"})
	if !errors.Is(err, ErrWrongCluster) || !IsPermanent(err) || d.Won {
		t.Fatalf("Claim on another cluster's share = %+v, %v; want a permanent ErrWrongCluster", d, err)
	}

	// The right share again: the claim goes through.
	if err := os.RemoveAll(mnt); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(share, mnt); err != nil {
		t.Fatal(err)
	}
	if d := mustClaim(t, a, Claim{VMID: "vm1", Generation: 1, Claimant: "x"}); !d.Won {
		t.Fatalf("claim on the remounted share lost: %+v", d)
	}
	if again, err := a.Check(ctx); err != nil || again != id {
		t.Fatalf("Check after remount = %q, %v; want %q", again, err, id)
	}
}
