package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// newDisk makes a zeroed disk image of size bytes.
func newDisk(t *testing.T, size int64) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "disk.img")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	return path
}

// TestDiskBadInput: requests the ABI refuses (bounds, alignment, sizes,
// buffers, mixed batches) each fail with the error it names, and none of
// them writes; without --disk there is no disk; a bad image is refused.
func TestDiskBadInput(t *testing.T) {
	requireBackend(t)
	disk := newDisk(t, 1<<20)
	out, errOut, status := ftvm(t, "", "run", "--disk", disk, guest("disk"), "abuse=1")
	if status != 0 || !strings.Contains(out, "abuse ok") {
		t.Fatalf("status %d\n%s%s", status, out, errOut)
	}
	out, _, status = ftvm(t, "", "run", guest("disk"))
	if status != 3 || !strings.Contains(out, "no disk") {
		t.Fatalf("without a disk: status %d %q", status, out)
	}
	odd := filepath.Join(t.TempDir(), "odd.img")
	if err := os.WriteFile(odd, make([]byte, 5000), 0o600); err != nil {
		t.Fatal(err)
	}
	_, errOut, status = ftvm(t, "", "run", "--disk", odd, guest("disk"))
	if status == 0 || !strings.Contains(errOut, "multiple of 4096") {
		t.Fatalf("an image of 5000 bytes: status %d %q", status, errOut)
	}
}

// TestDiskRecordReplay: a run that writes and reads its disk replays from
// the log alone, without the disk (its reads are in the log), to the same
// final state; the data reached the file, and a second run reads it back.
func TestDiskRecordReplay(t *testing.T) {
	requireBackend(t)
	disk := newDisk(t, 4<<20)
	log := filepath.Join(t.TempDir(), "disk.log")
	out, errOut, status := ftvm(t, "", "record", "--log", log, "--disk", disk, guest("disk"), "write=200", "verify=200", "seed=9", "batch=7")
	if status != 0 || !strings.Contains(out, "verified 200 blocks") {
		t.Fatalf("record: status %d\n%s%s", status, out, errOut)
	}
	out, errOut, status = ftvm(t, "", "replay", "--log", log, guest("disk"))
	if status != 0 || !strings.Contains(out, "verified 200 blocks") {
		t.Fatalf("replay: status %d\n%s%s", status, out, errOut)
	}
	out, errOut, status = ftvm(t, "", "run", "--disk", disk, guest("disk"), "verify=200", "seed=9")
	if status != 0 || !strings.Contains(out, "verified 200 blocks") {
		t.Fatalf("reading back: status %d\n%s%s", status, out, errOut)
	}
	out, _, status = ftvm(t, "", "run", "--disk", disk, guest("disk"), "verify=200", "seed=10")
	if status != 1 || !strings.Contains(out, "differs") {
		t.Fatalf("another seed must not verify (the check could not fail): status %d %q", status, out)
	}
}
