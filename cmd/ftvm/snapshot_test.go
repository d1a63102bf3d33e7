package main

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
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

// TestKVStoreSnapshot: kvstore recorded serving a session over user
// networking, with a snapshot taken part-way through the session; the
// replay from the snapshot takes the rest of the packets from the log and
// ends with the same final state digest as the full replay.
func TestKVStoreSnapshot(t *testing.T) {
	requireBackend(t)
	port := freeUDPPort(t)
	dir := t.TempDir()
	log, snap := filepath.Join(dir, "kv.log"), filepath.Join(dir, "kv.snap")
	wait := startFTVM(t, "record", "--log", log, "--snapshot-at-exit", "12", "--snapshot", snap,
		"--net", fmt.Sprintf("user,hostfwd=udp:127.0.0.1:%d-:7000", port), guest("kvstore"), "requests=8")
	kvSession(t, fmt.Sprintf("127.0.0.1:%d", port))
	recOut, errOut, status := wait()
	if status != 0 || !strings.Contains(errOut, "snapshot at exit 12") {
		t.Fatalf("record: status %d\n%s", status, errOut)
	}
	t.Logf("record: %s", errOut)
	digest := regexp.MustCompile(`final state digest ([0-9a-f]+) matches`)
	_, fullErr, status := ftvm(t, "", "replay", "--log", log, guest("kvstore"))
	full := digest.FindStringSubmatch(fullErr)
	if status != 0 || full == nil {
		t.Fatalf("full replay: status %d\n%s", status, fullErr)
	}
	partOut, partErr, status := ftvm(t, "", "replay", "--log", log, "--from-snapshot", snap, guest("kvstore"))
	part := digest.FindStringSubmatch(partErr)
	if status != 0 || part == nil || part[1] != full[1] || !strings.Contains(partErr, "net-rx=") {
		t.Fatalf("replay from the snapshot: status %d (full replay's digest %v)\n%s", status, full, partErr)
	}
	if !strings.HasSuffix(recOut, partOut) {
		t.Fatalf("replay from the snapshot showed %q, not the end of %q", partOut, recOut)
	}
}
