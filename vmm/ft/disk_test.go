package ft

import (
	"bytes"
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
	r := runPairWith(t, img, cfg, logchannel.Config{FailoverTimeout: 20 * time.Second, InsecureNoTLS: true},
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

// runPairWith is runPair with a shared disk: pd the primary's handle, bd
// the backup's.
func runPairWith(t *testing.T, img *vmm.Image, cfg vmm.Config, chcfg logchannel.Config, proxy func(string) string, pd, bd *vmm.DiskFile) pairRun {
	t.Helper()
	b := requireBackend(t)
	ln, arb, ctx := pairSetup(t)
	pch, bch := channels(t, "test", chcfg)
	common := func(role string, ch logchannel.Config, out *syncBuffer, d *vmm.DiskFile) Common {
		return Common{Backend: b, Image: img, Config: cfg, VMID: "test", Generation: 1, Arbiter: arb, Claimant: role,
			Stdin: strings.NewReader(""), Stdout: out, Channel: ch, Disk: d, Logf: func(f string, a ...any) { t.Logf(role+": "+f, a...) }}
	}
	var pout, bout syncBuffer
	var r pairRun
	done := make(chan struct{})
	go func() {
		defer close(done)
		r.backup, r.backupErr = RunBackup(ctx, BackupOptions{Common: common("backup", bch, &bout, bd), Listener: ln})
	}()
	r.res, r.primaryErr = RunPrimary(ctx, PrimaryOptions{Common: common("primary", pch, &pout, pd), BackupAddr: proxy(ln.Addr().String())})
	<-done
	r.primaryOut, r.backupOut = pout.String(), bout.String()
	return r
}
