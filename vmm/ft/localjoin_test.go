package ft

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ftvm/ftvm/logchannel"
	"github.com/ftvm/ftvm/vmm"
	"github.com/ftvm/ftvm/vmm/vnet"
)

// TestLocalDiskJoinSendsOnlyWhatDiffers: kvstore keeps its data on a
// local disk; the primary dies after a run of PUTs, its backup goes live
// and takes more; a new backup joins it with a stale copy of the disk
// (the one the pair started from). The transfer sends exactly the chunks
// that differ (counted here, on the files), the joined backup replays the
// rest of the run verified, and at the end the two copies are byte for
// byte the same.
func TestLocalDiskJoinSendsOnlyWhatDiffers(t *testing.T) {
	b := requireBackend(t)
	img := loadImage(t, "kvstore")
	probe, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	port := probe.LocalAddr().(*net.UDPAddr).Port
	probe.Close()
	spec, err := vnet.ParseSpec(fmt.Sprintf("user,hostfwd=udp:127.0.0.1:%d-:7000", port), "test")
	if err != nil {
		t.Fatal(err)
	}
	const diskSize = 4 << 20
	const puts = 3 * 100
	dir := t.TempDir()
	paths := map[string]string{}
	for _, name := range []string{"primary", "backup-1", "backup-2", "other-size"} {
		size := diskSize
		if name == "other-size" {
			size += vmm.DiskBlock
		}
		paths[name] = filepath.Join(dir, name+".img")
		if err := os.WriteFile(paths[name], make([]byte, size), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	digest, err := vmm.DiskDigest(paths["primary"])
	if err != nil {
		t.Fatal(err)
	}
	disks := map[string]*vmm.DiskFile{}
	config := func(name string) vmm.Config {
		d, err := vmm.OpenDiskFile(paths[name])
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { d.Close() })
		disks[name] = d
		// HELLO, the PUTs and a GET: then kvstore ends.
		cfg := vmm.Config{Cmdline: fmt.Sprintf("disk=1 requests=%d", puts+2), NIC: &vmm.NICConfig{Addr: spec.Addr, Gateway: spec.Gateway},
			Disk: &vmm.DiskConfig{Size: d.Size(), Local: true, Digest: digest, File: d}}
		copy(cfg.NIC.MAC[:], spec.MAC)
		return cfg
	}
	netFor := func(bound bool) vnet.Backend {
		open := vnet.New
		if bound {
			open = vnet.Open
		}
		n, err := open(spec)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { n.Close() })
		return n
	}

	ln, arb, ctx := pairSetup(t)
	pch, bch := channels(t, "test", logchannel.Config{FailoverTimeout: 2 * time.Second, HandshakeTimeout: time.Minute})
	var log syncBuffer
	common := func(name string, nic vnet.Backend, ch logchannel.Config, m *Metrics) Common {
		return Common{Backend: b, Image: img, Config: config(name), VMID: "test", Generation: 1, Arbiter: arb, Claimant: name, Net: nic,
			Stdin: strings.NewReader(""), Stdout: &log, Channel: ch, Metrics: m, Logf: func(f string, a ...any) {
				t.Logf(name+": "+f, a...)
				fmt.Fprintf(&log, name+": "+f+"\n", a...)
			}}
	}
	waitLog := func(what string) {
		t.Helper()
		for deadline := time.Now().Add(2 * time.Minute); !strings.Contains(log.String(), what); time.Sleep(5 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("no %q within 2 minutes", what)
			}
		}
	}
	joinLn, err := logchannel.Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { joinLn.Close() })

	pm, bm, jm := NewMetrics(), NewMetrics(), NewMetrics()
	pnet := netFor(true)
	backupDone := make(chan error, 1)
	go func() {
		_, err := RunBackup(ctx, BackupOptions{Common: common("backup-1", netFor(false), bch, bm), Listener: ln, JoinListener: joinLn})
		backupDone <- err
	}()
	pctx, killPrimary := context.WithCancel(ctx)
	primaryDone := make(chan error, 1)
	go func() {
		_, err := RunPrimary(pctx, PrimaryOptions{Common: common("primary", pnet, pch, pm), BackupAddr: ln.Addr().String()})
		primaryDone <- err
	}()

	c := newUDPClient(t, fmt.Sprintf("127.0.0.1:%d", port))
	if r := c.ask("1 1 HELLO"); r != "OK" {
		t.Fatalf("HELLO: %q", r)
	}
	seq := 1
	put := func(n int) {
		t.Helper()
		for range n {
			seq++
			if r := c.ask(fmt.Sprintf("1 %d PUT key%d %s", seq, seq, strings.Repeat("v", 1000))); r != "OK" {
				t.Fatalf("PUT %d: %q", seq, r)
			}
		}
	}
	put(puts / 3)
	for deadline := time.Now().Add(time.Minute); metric(t, bm, "ftvm_log_entries_received_total") < metric(t, pm, "ftvm_log_entries_sent_total"); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the backup never received the primary's log")
		}
	}
	killPrimary()
	<-primaryDone
	pnet.Close() // the dead host's sockets go with it
	waitLog("backup-1: backup: LIVE since")
	put(puts / 3) // alone

	// The guest is idle: what differs between the live copy and the
	// stale one is what the join must send, no more.
	if err := disks["backup-1"].Sync(ctx); err != nil {
		t.Fatal(err)
	}
	live, err := os.ReadFile(paths["backup-1"])
	if err != nil {
		t.Fatal(err)
	}
	stale, err := os.ReadFile(paths["backup-2"])
	if err != nil {
		t.Fatal(err)
	}
	chunk := int(vmm.DiskChunkSize(diskSize))
	differ := 0
	for off := 0; off < diskSize; off += chunk {
		if !bytes.Equal(live[off:off+chunk], stale[off:off+chunk]) {
			differ++
		}
	}
	if differ < 2 {
		t.Fatalf("the PUTs changed %d chunks of the disk: too few to count", differ)
	}
	// A backup whose copy has another size is refused, saying why on
	// both sides, and the guest runs on alone.
	if _, err := RunBackup(ctx, BackupOptions{Common: common("other-size", netFor(false), bch, NewMetrics()), Join: joinLn.Addr().String()}); !errors.Is(err, vmm.ErrDiskSize) ||
		!strings.Contains(err.Error(), fmt.Sprintf("the sender's disk has %d bytes", diskSize)) {
		t.Fatalf("a joiner with a copy of another size: %v, want ErrDiskSize", err)
	}
	waitLog(fmt.Sprintf("the joining side's copy of the disk has %d bytes, this side's %d", diskSize+vmm.DiskBlock, diskSize))

	joinerDone := make(chan error, 1)
	var joined BackupOutcome
	go func() {
		out, err := RunBackup(ctx, BackupOptions{Common: common("backup-2", netFor(false), bch, jm), Join: joinLn.Addr().String()})
		joined = out
		joinerDone <- err
	}()
	waitLog("backup-1: primary: PROTECTED again")
	got, sent := metric(t, bm, "ftvm_transfer_disk_chunks_differed"), metric(t, bm, "ftvm_transfer_disk_bytes_sent")
	t.Logf("the join sent %d of %d chunks of the disk (%.0f bytes of %d): %d differed on the files; %.0f bytes of state and disk in all",
		int(sent)/chunk, diskSize/chunk, sent, diskSize, differ, metric(t, bm, "ftvm_transfer_bytes_sent"))
	if int(got) != differ || int(sent) != differ*chunk {
		t.Fatalf("the join found %v chunks different and sent %v bytes; the files differ in %d chunks (%d bytes)", got, sent, differ, differ*chunk)
	}

	put(puts / 3) // protected by the joined backup, which writes its copy
	if r := c.ask(fmt.Sprintf("1 %d GET key2", seq+1)); !strings.HasPrefix(r, "OK v") {
		t.Fatalf("GET: %q", r)
	}
	if err := <-backupDone; err != nil {
		t.Fatalf("backup-1, live to the end: %v", err)
	}
	if err := <-joinerDone; err != nil || !joined.Verified {
		t.Fatalf("backup-2, joined: %v (%+v)", err, joined)
	}
	for _, name := range []string{"backup-1", "backup-2"} {
		if err := disks[name].Sync(ctx); err != nil {
			t.Fatal(err)
		}
	}
	a, err1 := os.ReadFile(paths["backup-1"])
	j, err2 := os.ReadFile(paths["backup-2"])
	if err1 != nil || err2 != nil || !bytes.Equal(a, j) {
		t.Fatalf("the live side's copy and the joined backup's differ after the run (%v %v)", err1, err2)
	}
	if bytes.Equal(a, live) {
		t.Fatal("the PUTs after the join changed nothing on the disk")
	}
}
