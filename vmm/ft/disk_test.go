package ft

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ftvm/ftvm/logchannel"
	"github.com/ftvm/ftvm/vmm"
)

// TestDiskWritesWaitForTheirAck: with the backup's acks held back, the
// primary stages the guest's writes (it has run them) but the shared file
// stays untouched; once the acks come, the writes reach it, and the
// backup verifies the run. The wait is on the primary's staged batches,
// not on time; were writes not held for their acks, the file would change
// once they were staged (or they would never be 4 staged at once).
func TestDiskWritesWaitForTheirAck(t *testing.T) {
	img := loadImage(t, "disk")
	path := filepath.Join(t.TempDir(), "disk.img")
	if err := os.WriteFile(path, make([]byte, 1<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	open := func() *vmm.DiskFile {
		d, err := vmm.OpenDiskFile(path)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { d.Close() })
		return d
	}
	pd, bd := open(), open() // one file, two handles: the primary's and the backup's hosts
	cfg := vmm.Config{Cmdline: "write=64 batch=16 flush=0", Disk: &vmm.DiskConfig{Size: pd.Size()}}
	gate := &ackGate{opened: make(chan struct{})}
	checked := make(chan error, 1)
	go func() {
		deadline := time.Now().Add(2 * time.Minute)
		for pd.Pending() < 4 && time.Now().Before(deadline) {
			time.Sleep(5 * time.Millisecond)
		}
		data, err := os.ReadFile(path)
		switch {
		case err != nil:
		case pd.Pending() < 4:
			err = errors.New("the primary never had the guest's 4 write batches staged at once: were the acks held?")
		case !bytes.Equal(data, make([]byte, len(data))):
			err = errors.New("a write reached the shared disk before its ack")
		}
		checked <- err
		close(gate.opened)
	}()
	r := runPairWith(t, img, cfg, cfg, logchannel.Config{FailoverTimeout: 20 * time.Second, InsecureNoTLS: true},
		func(a string) string { return gate.start(t, a) }, pd, bd)
	if err := <-checked; err != nil {
		t.Fatal(err)
	}
	if r.primaryErr != nil || r.backupErr != nil || !r.backup.Verified {
		t.Fatalf("primary: %v; backup: %v (%+v)", r.primaryErr, r.backupErr, r.backup)
	}
	if !strings.Contains(r.primaryOut, "wrote 64 blocks") {
		t.Fatalf("primary printed %q", r.primaryOut)
	}
	if err := pd.Sync(t.Context()); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Equal(data[:64*vmm.DiskBlock], make([]byte, 64*vmm.DiskBlock)) || !bytes.Equal(data[64*vmm.DiskBlock:], make([]byte, len(data)-64*vmm.DiskBlock)) {
		t.Fatal("after the acks, the 64 blocks are not on the disk, or more was written")
	}
}

// runPairWith is runPair with a config for each side and a shared disk:
// pd the primary's handle, bd the backup's (nil for none).
func runPairWith(t *testing.T, img *vmm.Image, pcfg, bcfg vmm.Config, chcfg logchannel.Config, proxy func(string) string, pd, bd *vmm.DiskFile) pairRun {
	t.Helper()
	b := requireBackend(t)
	ln, arb, ctx := pairSetup(t)
	bctx, stopBackup := context.WithCancel(ctx)
	defer stopBackup()
	pch, bch := channels(t, "test", chcfg)
	common := func(role string, cfg vmm.Config, ch logchannel.Config, out *syncBuffer, d *vmm.DiskFile) Common {
		return Common{Backend: b, Image: img, Config: cfg, VMID: "test", Generation: 1, Arbiter: arb, Claimant: role,
			Stdin: strings.NewReader(""), Stdout: out, Channel: ch, Disk: d, Logf: func(f string, a ...any) { t.Logf(role+": "+f, a...) }}
	}
	var pout, bout syncBuffer
	var r pairRun
	done := make(chan struct{})
	go func() {
		defer close(done)
		r.backup, r.backupErr = RunBackup(bctx, BackupOptions{Common: common("backup", bcfg, bch, &bout, bd), Listener: ln})
	}()
	addr := ln.Addr().String()
	if proxy != nil {
		addr = proxy(addr)
	}
	r.res, r.primaryErr = RunPrimary(ctx, PrimaryOptions{Common: common("primary", pcfg, pch, &pout, pd), BackupAddr: addr})
	if r.primaryErr != nil {
		stopBackup() // a primary refused at the handshake leaves the backup waiting for one
	}
	<-done
	r.primaryOut, r.backupOut = pout.String(), bout.String()
	return r
}

// localDisks makes two local disk images of size bytes, the backup's a
// copy of the primary's with block 3 changed if differ, and the config of
// each side (the digest of each side's own copy, unless sameDigest gives
// both the primary's).
func localDisks(t *testing.T, cmdline string, differ, sameDigest bool) (pcfg, bcfg vmm.Config, ppath, bpath string) {
	t.Helper()
	dir := t.TempDir()
	ppath, bpath = filepath.Join(dir, "primary.img"), filepath.Join(dir, "backup.img")
	data := make([]byte, 1<<20)
	for i := range data {
		data[i] = byte(i * 7)
	}
	if err := os.WriteFile(ppath, data, 0o600); err != nil {
		t.Fatal(err)
	}
	if differ {
		data[3*vmm.DiskBlock+100] ^= 1
	}
	if err := os.WriteFile(bpath, data, 0o600); err != nil {
		t.Fatal(err)
	}
	side := func(path, digestOf string) vmm.Config {
		d, err := vmm.OpenDiskFile(path)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { d.Close() })
		digest, err := vmm.DiskDigest(digestOf)
		if err != nil {
			t.Fatal(err)
		}
		return vmm.Config{Cmdline: cmdline, Disk: &vmm.DiskConfig{Size: d.Size(), Local: true, Digest: digest, File: d}}
	}
	bdigest := bpath
	if sameDigest {
		bdigest = ppath
	}
	return side(ppath, ppath), side(bpath, bdigest), ppath, bpath
}

// TestLocalDiskCopiesStayIdentical: each side writes its own copy; after
// the run the two files are byte for byte the same, and the log carried
// a hash per call, not the data.
func TestLocalDiskCopiesStayIdentical(t *testing.T) {
	img := loadImage(t, "disk")
	pcfg, bcfg, ppath, bpath := localDisks(t, "write=200 verify=200 batch=9 seed=3", false, false)
	r := runPairWith(t, img, pcfg, bcfg, logchannel.Config{}, nil, nil, nil)
	if r.primaryErr != nil || r.backupErr != nil || !r.backup.Verified {
		t.Fatalf("primary: %v; backup: %v (%+v)", r.primaryErr, r.backupErr, r.backup)
	}
	if !strings.Contains(r.primaryOut, "verified 200 blocks") {
		t.Fatalf("primary printed %q", r.primaryOut)
	}
	pcfg.Disk.File.Sync(t.Context())
	bcfg.Disk.File.Sync(t.Context())
	a, err1 := os.ReadFile(ppath)
	b, err2 := os.ReadFile(bpath)
	if err1 != nil || err2 != nil || !bytes.Equal(a, b) {
		t.Fatalf("the copies differ after the run (%v %v)", err1, err2)
	}
	if r.backup.Summary.DroppedOutputBytes > 64<<10 {
		t.Fatalf("the backup checked %d bytes of outputs: the log carried disk data, not hashes", r.backup.Summary.DroppedOutputBytes)
	}
}

// TestLocalDiskCopiesThatDifferAreRefused: copies whose digests differ
// make configurations that differ, and the pair never starts.
func TestLocalDiskCopiesThatDifferAreRefused(t *testing.T) {
	img := loadImage(t, "disk")
	pcfg, bcfg, _, _ := localDisks(t, "verify=8", true, false)
	r := runPairWith(t, img, pcfg, bcfg, logchannel.Config{FailoverTimeout: 2 * time.Second}, nil, nil, nil)
	if r.primaryErr == nil || !strings.Contains(r.primaryErr.Error(), "config") {
		t.Fatalf("a pair whose local disks differ started: primary %v, backup %v", r.primaryErr, r.backupErr)
	}
}

// TestLocalDiskThatDiffersIsADivergence: copies that differ although
// their digests were said equal (a disk changed behind the VMM's back):
// the backup's first read of the changed block is a divergence, never a
// guest that goes on with other data.
func TestLocalDiskThatDiffersIsADivergence(t *testing.T) {
	img := loadImage(t, "disk")
	pcfg, bcfg, _, _ := localDisks(t, "write=2 verify=8 batch=8 seed=5", true, true)
	r := runPairWith(t, img, pcfg, bcfg, logchannel.Config{FailoverTimeout: 2 * time.Second}, nil, nil, nil)
	if !errors.Is(r.backupErr, ErrDiverged) {
		t.Fatalf("backup: %v (%+v); want a divergence", r.backupErr, r.backup)
	}
}
