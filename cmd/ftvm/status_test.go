package main

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ftvm/ftvm/replay"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// TestExitStatusTable holds ftvm to the README's table of exit statuses, one
// row at a time: 2 for a command line that cannot work (before anything
// starts), 123 only for a replay that really parted from its log, 125 for
// a log that is missing, damaged or of another guest, 126 for a guest
// fault. (0, the guest's own status and 130 have tests of their own:
// TestRunStatuses, TestInterruptStopsAWaitingGuest and
// TestInterruptStopsAWaitingBackup.)
func TestExitStatusTable(t *testing.T) {
	requireBackend(t)
	dir := t.TempDir()
	cpuLog := filepath.Join(dir, "cpu.log")
	if _, errOut, status := ftvm(t, "", "record", "--log", cpuLog, guest("cpu"), "rounds=300", "work=50"); status != 0 {
		t.Fatalf("record: status %d\n%s", status, errOut)
	}
	logBytes, err := os.ReadFile(cpuLog)
	if err != nil {
		t.Fatal(err)
	}
	altered := filepath.Join(dir, "altered.log")
	os.WriteFile(altered, reencode(t, logBytes, true), 0o644)
	// In small frames, so that the cut falls well after the start entry.
	small := reencode(t, logBytes, false)
	cut := filepath.Join(dir, "cut.log")
	os.WriteFile(cut, small[:len(small)*2/3], 0o644)

	cases := []struct {
		name   string
		args   []string
		status int
		stderr string
	}{
		{"run without a guest", []string{"run"}, exitUsage, "missing GUEST.elf"},
		{"pcap without net", []string{"run", "--pcap", filepath.Join(dir, "x.pcap"), guest("hello")}, exitUsage, "--pcap needs --net"},
		{"unknown net kind", []string{"run", "--net", "bogus", guest("hello")}, exitUsage, "unknown kind"},
		{"primary without arbiter", []string{"primary", "--backup", "127.0.0.1:1", guest("hello")}, exitUsage, "--arbiter is required"},
		{"backup without arbiter", []string{"backup", "--listen", "127.0.0.1:0", guest("hello")}, exitUsage, "--arbiter is required"},
		{"record without log", []string{"record", guest("hello")}, exitUsage, "--log FILE is required"},
		{"replay without log", []string{"replay", guest("hello")}, exitUsage, "usage"},
		{"replay of a missing log", []string{"replay", "--log", filepath.Join(dir, "none.log"), guest("cpu")}, exitFailed, "no such file"},
		{"replay of a log of another guest", []string{"replay", "--log", cpuLog, guest("hello")}, exitFailed, "does not replay"},
		{"replay of a log cut short", []string{"replay", "--log", cut, guest("cpu")}, exitFailed, "the log is damaged"},
		{"log stats of a non-log", []string{"log", "stats", "/etc/passwd"}, exitFailed, "corrupt log"},
		{"log dump of a non-log", []string{"log", "dump", "/etc/passwd"}, exitFailed, "corrupt log"},
		{"replay that diverges", []string{"replay", "--quiet", "--log", altered, guest("cpu")}, exitDiverged, "DIVERGED"},
		{"guest fault", []string{"run", guest("ud2")}, exitGuestFault, "#UD"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, errOut, status := ftvm(t, "", c.args...)
			if status != c.status || !strings.Contains(errOut, c.stderr) {
				t.Fatalf("ftvm %s: status %d, stderr %q; want %d and %q", strings.Join(c.args, " "), status, errOut, c.status, c.stderr)
			}
		})
	}
}

// reencode re-encodes a log in frames of 256 bytes, with one RDTSC answer
// in its middle changed if alter.
func reencode(t *testing.T, log []byte, alter bool) []byte {
	t.Helper()
	dec := replay.NewDecoder(bytes.NewReader(log))
	var out bytes.Buffer
	enc := replay.NewEncoderSize(&out, 256)
	var entries []replay.Entry
	tscs := 0
	for {
		e, err := dec.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if e.Kind == replay.KindTSC {
			tscs++
		}
		entries = append(entries, e)
	}
	seen := 0
	for _, e := range entries {
		if e.Kind == replay.KindTSC {
			if seen++; alter && seen == tscs/2 {
				e.Value += 7
			}
		}
		if err := enc.Append(e); err != nil {
			t.Fatal(err)
		}
	}
	if tscs < 2 {
		t.Fatalf("the log has %d RDTSC entries; the test needs a guest that reads the clock", tscs)
	}
	if err := enc.Flush(); err != nil {
		t.Fatal(err)
	}
	return out.Bytes()
}

// TestInterruptStopsAWaitingBackup: Ctrl-C to a backup still waiting for
// its primary is an interruption (130), not a failure.
func TestInterruptStopsAWaitingBackup(t *testing.T) {
	requireBackend(t)
	arb := t.TempDir()
	if _, errOut, status := ftvm(t, "", "arbiter", "init", "--arbiter", "file://"+arb); status != 0 {
		t.Fatalf("arbiter init: %d\n%s", status, errOut)
	}
	cmd := exec.Command(ftvmBin, "backup", "--listen", "127.0.0.1:0", "--insecure-no-tls", "--arbiter", "file://"+arb, guest("hello"))
	var errb syncBuf
	cmd.Stderr = &errb
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	if !waitFor(func() bool { return strings.Contains(errb.String(), "listening for the primary") }) {
		cmd.Process.Kill()
		cmd.Wait()
		t.Fatalf("the backup never listened:\n%s", errb.String())
	}
	cmd.Process.Signal(syscall.SIGINT)
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		cmd.Process.Kill()
		<-done
		t.Fatalf("the backup did not stop on SIGINT:\n%s", errb.String())
	}
	if code := cmd.ProcessState.ExitCode(); code != exitInterrupted {
		t.Fatalf("status %d, want %d:\n%s", code, exitInterrupted, errb.String())
	}
}

// TestStatusSaysWhetherProtected: ftvm status shows whether a backup
// protects the guest, since when, and the backups that joined.
func TestStatusSaysWhetherProtected(t *testing.T) {
	at := time.Now().Add(-90 * time.Second)
	for _, tc := range []struct {
		protected float64
		want      []string
	}{
		{1, []string{"protected            yes since " + at.Format("15:04:05") + " (1m30s ago)", "backups joined       2", "state transferred    4096 bytes"}},
		{0, []string{"protected            NO: the guest runs alone since " + at.Format("15:04:05"), "ftvm backup --join"}},
	} {
		text := fmt.Sprintf("# TYPE ftvm_protected gauge\nftvm_protected %v\n# TYPE ftvm_protected_changed_timestamp_seconds gauge\nftvm_protected_changed_timestamp_seconds %v\n"+
			"# TYPE ftvm_backups_joined_total counter\nftvm_backups_joined_total 2\n# TYPE ftvm_transfer_bytes_sent gauge\nftvm_transfer_bytes_sent 4096\n",
			tc.protected, float64(at.UnixNano())/1e9)
		parser := expfmt.NewTextParser(model.UTF8Validation)
		families, err := parser.TextToMetricFamilies(strings.NewReader(text))
		if err != nil {
			t.Fatal(err)
		}
		got := formatStatus(families)
		for _, w := range tc.want {
			if !strings.Contains(got, w) {
				t.Errorf("ftvm_protected %v: status lacks %q:\n%s", tc.protected, w, got)
			}
		}
	}
}
