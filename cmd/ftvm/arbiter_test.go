package main

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ftvm/ftvm/splitbrain"
)

// TestArbiterRefusedAtStart: a side whose arbiter could not decide its first
// failover (or would decide it against this side) exits at once with a
// usage status and says why, instead of listening, dialling and waiting.
func TestArbiterRefusedAtStart(t *testing.T) {
	requireBackend(t)
	empty := t.TempDir() // an unmounted share: the empty mount point
	used := t.TempDir()  // vm "web" at epoch 2; epoch 2's pairing had its failover
	held := t.TempDir()
	ctx := context.Background()
	for _, dir := range []string{used, held} {
		a, err := splitbrain.Open("file://" + dir)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := a.Init(ctx); err != nil {
			t.Fatal(err)
		}
		for from := uint64(0); from < 2; from++ {
			if _, err := a.AdvanceEpoch(ctx, "web", from, "test"); err != nil {
				t.Fatal(err)
			}
		}
		if dir == held {
			if _, err := a.Claim(ctx, splitbrain.Claim{VMID: "web", Generation: 2, Claimant: "backup@elsewhere"}); err != nil {
				t.Fatal(err)
			}
		}
	}
	backup := func(args ...string) []string {
		return append(append([]string{"backup", "--listen", "127.0.0.1:0", "--insecure-no-tls"}, args...), guest("hello"))
	}
	primary := func(args ...string) []string {
		return append(append([]string{"primary", "--backup", "127.0.0.1:1", "--insecure-no-tls"}, args...), guest("hello"))
	}
	cases := []struct {
		name   string
		args   []string
		stderr string
	}{
		{"bad vm id", backup("--vm-id", "bad/id", "--arbiter", "file:///nonexist"), "--vm-id"},
		{"missing root", backup("--arbiter", "file:///nonexist"), "no such file"},
		{"unmounted share (backup)", backup("--arbiter", "file://"+empty), "no cluster marker"},
		{"unmounted share (primary)", primary("--arbiter", "file://"+empty), "no cluster marker"},
		{"unreachable S3", backup("--arbiter", "s3://b/p?endpoint=http://127.0.0.1:1&region=r"), "connection refused"},
		{"primary of an old epoch", primary("--vm-id", "web", "--generation", "1", "--arbiter", "file://"+used), "not the current epoch"},
		{"backup of an old epoch", backup("--vm-id", "web", "--generation", "1", "--arbiter", "file://"+used), "not the current epoch"},
		{"epoch that had its failover", primary("--vm-id", "web", "--arbiter", "file://"+held), "held by backup@elsewhere"},
		{"no pairing started", primary("--vm-id", "other", "--arbiter", "file://"+used), "start it first"},
	}
	// Credentials that need no lookup, so the S3 case fails on the endpoint.
	t.Setenv("AWS_ACCESS_KEY_ID", "test")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "test")
	t.Setenv("AWS_EC2_METADATA_DISABLED", "true")
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, errOut, status := ftvm(t, "", c.args...)
			if status != exitUsage || !strings.Contains(errOut, c.stderr) || strings.Contains(errOut, "listening") {
				t.Fatalf("ftvm %s: status %d, stderr %q; want %d, %q and no listening", strings.Join(c.args, " "), status, errOut, exitUsage, c.stderr)
			}
		})
	}
}

func TestArbiterInit(t *testing.T) {
	dir := t.TempDir()
	out, errOut, status := ftvm(t, "", "arbiter", "init", "--arbiter", "file://"+dir)
	if status != 0 || !strings.Contains(out, "cluster ") {
		t.Fatalf("arbiter init: status %d, stdout %q, stderr %q", status, out, errOut)
	}
	again, _, status := ftvm(t, "", "arbiter", "init", "--arbiter", "file://"+dir)
	if status != 0 || again != out {
		t.Fatalf("second arbiter init: status %d, %q; want the first cluster %q", status, again, out)
	}
	show, errOut, status := ftvm(t, "", "arbiter", "show", "--arbiter", "file://"+dir, "--vm-id", "web")
	if status != 0 || !strings.Contains(show, strings.TrimSpace(out)) || !strings.Contains(show, "web: no epoch taken yet") {
		t.Fatalf("arbiter show: status %d, stdout %q, stderr %q", status, show, errOut)
	}
	if _, errOut, status := ftvm(t, "", "arbiter", "init", "--arbiter", "file://"+filepath.Join(dir, "nonexist")); status == 0 || !strings.Contains(errOut, "no such file") {
		t.Fatalf("arbiter init of a missing directory: status %d, stderr %q; want an error", status, errOut)
	}
	if _, err := os.Stat(filepath.Join(dir, "nonexist")); !os.IsNotExist(err) {
		t.Fatalf("arbiter init created the missing directory: %v", err)
	}
}

// TestPairRestartedOnAUsedArbiter: a primary and a backup started by hand
// on an arbiter whose last pairing had its failover. Each pairing takes a
// new epoch, so the second pairing's backup goes live too, instead of
// finding the first pairing's claim and halting.
func TestPairRestartedOnAUsedArbiter(t *testing.T) {
	requireBackend(t)
	dir := t.TempDir()
	if _, errOut, status := ftvm(t, "", "arbiter", "init", "--arbiter", "file://"+dir); status != 0 {
		t.Fatalf("arbiter init: status %d\n%s", status, errOut)
	}
	for run := 1; run <= 2; run++ {
		addr, err := freeTCPAddr()
		if err != nil {
			t.Fatal(err)
		}
		common := append([]string{"--arbiter", "file://" + dir, "--vm-id", "web", "--failover-timeout", "300ms"}, clearChannelFlags(t)...)
		guestArgs := []string{guest("cpu"), "rounds=3000", "work=20000"}
		bout, berr := &syncBuf{}, &syncBuf{}
		b := exec.Command(ftvmBin, append(append([]string{"backup", "--listen", addr}, common...), guestArgs...)...)
		b.Stdout, b.Stderr = bout, berr
		if err := b.Start(); err != nil {
			t.Fatal(err)
		}
		bdone := make(chan struct{})
		go func() { b.Wait(); close(bdone) }()
		t.Cleanup(func() { b.Process.Kill(); <-bdone })
		if !waitFor(func() bool { return strings.Contains(berr.String(), "listening for the primary") }) {
			t.Fatalf("run %d: the backup did not listen:\n%s", run, berr.String())
		}
		var perr bytes.Buffer
		p := exec.Command(ftvmBin, append(append([]string{"primary", "--backup", addr}, common...), guestArgs...)...)
		p.Stderr = &perr
		if err := p.Start(); err != nil {
			t.Fatal(err)
		}
		if !waitFor(func() bool { return strings.Contains(berr.String(), "primary connected") }) {
			p.Process.Kill()
			p.Wait()
			t.Fatalf("run %d: the primary did not connect:\nbackup:\n%s\nprimary:\n%s", run, berr.String(), perr.String())
		}
		p.Process.Signal(syscall.SIGKILL)
		p.Wait()
		select {
		case <-bdone:
		case <-time.After(2 * time.Minute):
			t.Fatalf("run %d: the backup did not finish:\n%s", run, berr.String())
		}
		if status := b.ProcessState.ExitCode(); status != 0 || !strings.Contains(berr.String(), "LIVE") {
			t.Fatalf("run %d: backup status %d; want 0 after going live:\n%s", run, status, berr.String())
		}
	}
}

// clearChannelFlags are the flags that run a hand-started pair's logging
// channel in clear, where this binary's channel has TLS: the test is about
// the arbiter, not about certificates.
func clearChannelFlags(t *testing.T) []string {
	_, usage, _ := ftvm(t, "", "backup", "-h")
	if strings.Contains(usage, "-insecure-no-tls") {
		return []string{"--insecure-no-tls"}
	}
	return nil
}
