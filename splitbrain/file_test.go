package splitbrain

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
)

func newTestFileArbiter(t *testing.T) Arbiter {
	t.Helper()
	a, err := Open("file://" + t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func TestFileContract(t *testing.T) {
	RunContractTests(t, newTestFileArbiter, func(t *testing.T) Arbiter {
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
	if _, err := os.Stat(root); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("Claim created or touched the missing root: %v", err)
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
	root := t.TempDir()
	if err := os.Chmod(root, 0o555); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.Chmod(root, 0o755) })
	a, _ := NewFileArbiter(root)
	if d, err := a.Claim(context.Background(), Claim{VMID: "vm1", Generation: 1, Claimant: "x"}); err == nil || d.Won {
		t.Fatalf("Claim = %+v, %v; want error", d, err)
	}
}

func TestFileCorruptClaimDecidesNothing(t *testing.T) {
	root := t.TempDir()
	a, _ := NewFileArbiter(root)
	dir := filepath.Join(root, "vm1")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
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
		d, err := a.Claim(context.Background(), Claim{VMID: "vm1", Generation: gen, Claimant: "x"})
		if !errors.Is(err, ErrCorruptClaim) || d.Won {
			t.Errorf("gen %d: Claim = %+v, %v; want ErrCorruptClaim", gen, d, err)
		}
	}
}

func TestFileStaleTempFilesDoNotBlock(t *testing.T) {
	root := t.TempDir()
	a, _ := NewFileArbiter(root)
	dir := filepath.Join(root, "vm1")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	// A claimant that crashed before link() leaves only its temp file.
	if err := os.WriteFile(filepath.Join(dir, ".gen-1.claim.tmp-dead"), []byte("half"), 0o644); err != nil {
		t.Fatal(err)
	}
	if d := mustClaim(t, a, Claim{VMID: "vm1", Generation: 1, Claimant: "x"}); !d.Won {
		t.Fatalf("claim lost to a stale temp file: %+v", d)
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 2 { // the stale temp and the claim; our own temp is gone
		t.Errorf("dir holds %d entries, want 2: %v", len(entries), entries)
	}
}
