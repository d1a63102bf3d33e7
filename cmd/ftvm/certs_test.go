package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestCertsForTwoHosts: ftvm certs writes a CA and a certificate per host,
// keys readable by their owner only; a hand-started pair on them connects
// over TLS; a backup started without TLS flags is refused at start-up.
func TestCertsForTwoHosts(t *testing.T) {
	requireBackend(t)
	dir := filepath.Join(t.TempDir(), "pair")
	out, errOut, status := ftvm(t, "", "certs", "--dir", dir, "--vm-id", "web", "--hosts", "alpha,beta")
	if status != 0 {
		t.Fatalf("certs: status %d\n%s%s", status, out, errOut)
	}
	for name, mode := range map[string]os.FileMode{"ca.crt": 0o644, "ca.key": 0o600, "alpha.crt": 0o644, "alpha.key": 0o600, "beta.crt": 0o644, "beta.key": 0o600} {
		st, err := os.Stat(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		if st.Mode().Perm() != mode {
			t.Errorf("%s: mode %v, want %v", name, st.Mode().Perm(), mode)
		}
	}
	if left, _ := filepath.Glob(filepath.Join(dir, ".*tmp*")); len(left) != 0 {
		t.Errorf("temporary files left: %q", left)
	}

	_, errOut, status = ftvm(t, "", "backup", "--listen", "127.0.0.1:0", "--arbiter", "file://"+t.TempDir(), guest("hello"))
	if status != exitUsage || !strings.Contains(errOut, "--tls-cert") || !strings.Contains(errOut, "--insecure-no-tls") {
		t.Fatalf("backup without TLS flags: status %d, stderr %q; want %d naming the flags", status, errOut, exitUsage)
	}

	arb := t.TempDir()
	if _, errOut, status := ftvm(t, "", "arbiter", "init", "--arbiter", "file://"+arb); status != 0 {
		t.Fatalf("arbiter init: status %d\n%s", status, errOut)
	}
	addr, err := freeTCPAddr()
	if err != nil {
		t.Fatal(err)
	}
	side := func(host string) []string {
		return []string{"--arbiter", "file://" + arb, "--vm-id", "web",
			"--tls-cert", filepath.Join(dir, host+".crt"), "--tls-key", filepath.Join(dir, host+".key"), "--tls-ca", filepath.Join(dir, "ca.crt")}
	}
	var berr syncBuf
	b := exec.Command(ftvmBin, append(append([]string{"backup", "--listen", addr}, side("beta")...), guest("exit3"))...)
	b.Stderr = &berr
	if err := b.Start(); err != nil {
		t.Fatal(err)
	}
	bdone := make(chan struct{})
	go func() { b.Wait(); close(bdone) }()
	t.Cleanup(func() { b.Process.Kill(); <-bdone })
	if !waitFor(func() bool { return strings.Contains(berr.String(), "listening for the primary") }) {
		t.Fatalf("the backup did not listen:\n%s", berr.String())
	}
	_, perr, status := ftvm(t, "", append(append([]string{"primary", "--backup", addr}, side("alpha")...), guest("exit3"))...)
	<-bdone
	if status != 3 || !strings.Contains(perr, "over mutual TLS") || !strings.Contains(berr.String(), "backup: verified") {
		t.Fatalf("primary: status %d\n%s\nbackup:\n%s", status, perr, berr.String())
	}
	if strings.Contains(perr+berr.String(), "INSECURE") {
		t.Fatalf("a TLS pair says INSECURE:\n%s\n%s", perr, berr.String())
	}
}

// TestInsecureSaysSoEverywhere: a pair run with --insecure-no-tls marks
// every line its sides log.
func TestInsecureSaysSoEverywhere(t *testing.T) {
	requireBackend(t)
	_, errOut, status := ftvm(t, "", "pair", "--insecure-no-tls", guest("exit3"))
	if status != 3 {
		t.Fatalf("pair: status %d\n%s", status, errOut)
	}
	sides := 0
	for _, line := range strings.Split(strings.TrimSpace(errOut), "\n") {
		if strings.HasPrefix(line, "ftvm primary ") || strings.HasPrefix(line, "ftvm backup ") {
			sides++
			if !strings.Contains(line, "[INSECURE: logging channel in clear, no TLS]") {
				t.Errorf("line without the mark: %q", line)
			}
		}
	}
	if sides < 2 || !strings.Contains(errOut, "in clear (--insecure-no-tls)") {
		t.Fatalf("%d lines from the sides:\n%s", sides, errOut)
	}
}
