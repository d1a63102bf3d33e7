package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestSnapshotCommands: ftvm record --snapshot-at-exit takes a snapshot
// mid-run; ftvm replay --from-snapshot verifies the rest of the log and the
// final digest; ftvm run --from-snapshot runs on to the guest's end; a
// damaged snapshot and another guest's are refused.
func TestSnapshotCommands(t *testing.T) {
	requireBackend(t)
	dir := t.TempDir()
	log, snap := filepath.Join(dir, "echo.log"), filepath.Join(dir, "echo.snap")
	input := "one\ntwo\nthree\n"
	out, errs, code := ftvm(t, input, "record", "--log", log, "--snapshot-at-exit", "5", "--snapshot", snap, guest("echo"))
	if code != 0 || !strings.Contains(errs, "snapshot at exit 5") {
		t.Fatalf("record: status %d\n%s", code, errs)
	}
	if !strings.Contains(out, "echo: 3 lines") {
		t.Fatalf("record: output %q", out)
	}
	rout, errs, code := ftvm(t, "", "replay", "--log", log, "--from-snapshot", snap, guest("echo"))
	if code != 0 || !strings.Contains(errs, "verified: final state digest") {
		t.Fatalf("replay from the snapshot: status %d\n%s", code, errs)
	}
	if rout == "" || !strings.HasSuffix(out, rout) {
		t.Fatalf("replay from the snapshot showed %q, not the end of %q", rout, out)
	}
	_, errs, code = ftvm(t, "", "run", "--from-snapshot", snap, guest("echo"))
	if code != 0 {
		t.Fatalf("run from the snapshot: status %d\n%s", code, errs)
	}
	_, errs, code = ftvm(t, "", "run", "--from-snapshot", snap, guest("hello"))
	if code == 0 || !strings.Contains(errs, "not of this VM") {
		t.Fatalf("run of another guest from the snapshot: status %d\n%s", code, errs)
	}
	file, err := os.ReadFile(snap)
	if err != nil {
		t.Fatal(err)
	}
	cut := filepath.Join(dir, "cut.snap")
	if err := os.WriteFile(cut, file[:len(file)/2], 0o644); err != nil {
		t.Fatal(err)
	}
	_, errs, code = ftvm(t, "", "replay", "--log", log, "--from-snapshot", cut, guest("echo"))
	if code == 0 || !strings.Contains(errs, "damaged") {
		t.Fatalf("replay from a truncated snapshot: status %d\n%s", code, errs)
	}
	_, errs, code = ftvm(t, "", "record", "--log", log, "--snapshot-at-exit", "5", guest("echo"))
	if code == 0 || !strings.Contains(errs, "go together") {
		t.Fatalf("--snapshot-at-exit without --snapshot: status %d\n%s", code, errs)
	}
}
