package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"
	"github.com/ftvm/ftvm/bench/kv"
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

// TestDiskFailoverThenColdRestart: kvstore keeps its data on its disk
// (disk=1) under ftvm pair; kill -9 of the primary under load. With a
// shared disk, the backup goes live after writing again what the primary
// may not have completed; with a local one, its own copy has every write
// it replayed. Either way the clients' history is linearizable. Then, with
// both sides gone, the guest starts cold from the surviving disk alone:
// one GET of every key joins the history, so a lost acknowledged write
// makes it not linearizable.
func TestDiskFailoverThenColdRestart(t *testing.T) {
	requireBackend(t)
	for _, mode := range []string{"shared", "local"} {
		t.Run(mode, func(t *testing.T) {
			disk := newDisk(t, 16<<20)
			arg, survivor, want := disk, disk, "disk blocks that the primary may not have completed"
			if mode == "local" {
				arg, survivor, want = disk+",local", disk+".backup", "backup: LIVE since"
			}
			out, stderr := pairTrialGuest(t, 7, 2500*time.Millisecond, has("backup: LIVE since"), []string{"disk=1"},
				"--disk", arg, "--kill-primary-after", "800ms", "--no-reprotect")
			if !strings.Contains(stderr, "backup: LIVE since") || !strings.Contains(stderr, want) {
				t.Fatalf("the backup did not go live (%q):\n%s", want, stderr)
			}
			checkHistory(t, out, stderr)
			coldRestartReads(t, survivor, out.Calls)
		})
	}
}

// coldRestartReads starts kvstore disk=1 on disk alone, GETs every key,
// and checks the history with those reads added.
func coldRestartReads(t *testing.T, disk string, calls []kv.Call) {
	t.Helper()
	port := freeUDPPort(t)
	wait := startFTVM(t, "run", "--net", fmt.Sprintf("user,hostfwd=udp:127.0.0.1:%d-:7000", port), "--disk", disk, guest("kvstore"), "disk=1", "requests=5") // HELLO and 4 GETs
	c, err := kv.Dial(fmt.Sprintf("127.0.0.1:%d", port))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for k := 0; k < 4; k++ {
		call := kv.Call{Client: 99, Op: kv.Get, Key: fmt.Sprintf("k%d", k), Start: time.Now()}
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		r, err := c.Do(ctx, kv.Get, call.Key, "")
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		call.Reply, call.Done, call.End = r, true, time.Now()
		calls = append(calls, call)
	}
	if res, _ := kv.CheckLinearizable(calls, 30*time.Second); res != porcupine.Ok {
		t.Fatalf("after a cold restart from the disk, the history of %d calls is %v: an acknowledged write was lost", len(calls), res)
	}
	runOut, _, _ := wait()
	if !strings.Contains(runOut, "restored") {
		t.Fatalf("the cold start restored nothing:\n%s", runOut)
	}
}

// TestLocalDiskRecordReplay: a log of a VM with a local disk holds hashes
// of its reads, not the data: the replay refuses to run without the copy
// the recording started from, refuses the copy as the run left it, and
// verifies with the original, which it leaves untouched.
func TestLocalDiskRecordReplay(t *testing.T) {
	requireBackend(t)
	disk := newDisk(t, 1<<20)
	orig := disk + ".orig"
	data, err := os.ReadFile(disk)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(orig, data, 0o600); err != nil {
		t.Fatal(err)
	}
	log := filepath.Join(t.TempDir(), "local.log")
	out, errOut, status := ftvm(t, "", "record", "--log", log, "--disk", disk+",local", guest("disk"), "write=50", "verify=50", "seed=2")
	if status != 0 || !strings.Contains(out, "verified 50 blocks") {
		t.Fatalf("record: status %d\n%s%s", status, out, errOut)
	}
	_, errOut, status = ftvm(t, "", "replay", "--log", log, guest("disk"))
	if status == 0 || !strings.Contains(errOut, "local disk") {
		t.Fatalf("a replay without the disk: status %d %q", status, errOut)
	}
	_, errOut, status = ftvm(t, "", "replay", "--log", log, "--disk", disk, guest("disk"))
	if status == 0 || !strings.Contains(errOut, "not the copy the recording started from") {
		t.Fatalf("a replay from the copy the run changed: status %d %q", status, errOut)
	}
	out, errOut, status = ftvm(t, "", "replay", "--log", log, "--disk", orig, guest("disk"))
	if status != 0 || !strings.Contains(out, "verified 50 blocks") {
		t.Fatalf("replay from the original copy: status %d\n%s%s", status, out, errOut)
	}
	if after, _ := os.ReadFile(orig); !bytes.Equal(after, data) {
		t.Fatal("the replay wrote the copy it read")
	}
}

// TestLocalDiskReprotected: kvstore on a local disk under ftvm pair and
// load; kill -9 of the primary, a new backup joins the live side with a
// copy of the dead primary's copy (the join sends what changed since),
// kill -9 of that live side too, and the joined backup takes over: the
// clients' history is linearizable. Then the guest starts cold from the
// last live side's copy alone and every key reads back: the writes that
// reached that copy by the join's transfer, not by its replay, are there.
func TestLocalDiskReprotected(t *testing.T) {
	requireBackend(t)
	disk := newDisk(t, 16<<20)
	out, stderr := pairTrialGuest(t, time.Now().UnixNano(), 0, func(log string) bool {
		return strings.Count(log, "primary: PROTECTED again") >= 2
	}, []string{"disk=1"}, "--disk", disk+",local", "--kill-primary-after", "800ms", "--failovers", "2")
	if n := strings.Count(stderr, "backup: LIVE since"); n != 2 {
		t.Fatalf("%d sides went live, want 2:\n%s", n, stderr)
	}
	if n := strings.Count(stderr, "primary: PROTECTED again"); n < 2 {
		t.Fatalf("%d joins, want 2:\n%s", n, stderr)
	}
	if !strings.Contains(stderr, "backup-2's copy of the local disk is "+disk+".backup-2, copied from the primary's") {
		t.Fatalf("backup-2's copy was not made from the dead primary's:\n%s", stderr)
	}
	var sent []string
	for _, l := range strings.Split(stderr, "\n") {
		if i := strings.Index(l, "the joining backup's copy of the local disk"); i >= 0 {
			sent = append(sent, l[i:])
		}
	}
	if len(sent) < 2 {
		t.Fatalf("the joins did not say what of the disk they sent:\n%s", stderr)
	}
	t.Logf("joins: %s", strings.Join(sent, "; "))
	for _, l := range strings.Split(stderr, "\n") {
		if strings.Contains(l, "PROTECTED again") {
			t.Log(l)
		}
	}
	checkHistory(t, out, stderr)
	coldRestartReads(t, disk+".backup-2", out.Calls)
}
