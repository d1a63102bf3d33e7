package ft

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ftvm/ftvm/bench/netproxy"
	"github.com/ftvm/ftvm/logchannel"
	"github.com/ftvm/ftvm/replay"
	"github.com/ftvm/ftvm/splitbrain"
	"github.com/ftvm/ftvm/vmm"
)

// TestPartition cuts the logging channel while both sides stay alive: in
// every trial exactly one side goes live (or carries on) and the other
// halts.
func TestPartition(t *testing.T) {
	img := loadImage(t, "cpu")
	cfg := vmm.Config{Cmdline: "rounds=4000 work=100000"} // seconds on any backend: the freeze lands mid-run
	for trial := 0; trial < 4; trial++ {
		var proxy *netproxy.Proxy
		r := runPair(t, img, cfg, "", logchannel.Config{FailoverTimeout: 300 * time.Millisecond, HeartbeatInterval: 30 * time.Millisecond,
			HandshakeTimeout: time.Minute}, // TLS under emulation (CI's QEMU) is slow
			func(a string) string {
				var err error
				if proxy, err = netproxy.New(a); err != nil {
					t.Fatal(err)
				}
				// Past the handshakes (a few KiB with TLS) and into the log,
				// a little further each trial; counted in bytes, not time,
				// so that a slow handshake (emulation) is never cut.
				proxy.FreezeAfter(int64(8<<10 + 2<<10*trial))
				return proxy.Addr()
			}, nil)
		proxy.Close()
		primaryHalted := errors.Is(r.primaryErr, ErrLostArbitration)
		backupHalted := errors.Is(r.backupErr, ErrLostArbitration)
		primaryOn := r.primaryErr == nil
		backupOn := r.backupErr == nil && r.backup.WentLive
		if primaryOn == backupOn || primaryHalted == backupHalted || primaryOn == primaryHalted {
			t.Fatalf("trial %d: primary err %v, backup err %v live %v: want exactly one side live and the other halted",
				trial, r.primaryErr, r.backupErr, r.backup.WentLive)
		}
		winner := "primary"
		if backupOn {
			winner = "backup"
		}
		t.Logf("trial %d: the %s went on, the other halted", trial, winner)
	}
}

// flakyArbiter fails every call while down is set.
type flakyArbiter struct {
	splitbrain.Arbiter
	down     atomic.Bool
	attempts atomic.Int64
}

func (f *flakyArbiter) Claim(ctx context.Context, c splitbrain.Claim) (splitbrain.Decision, error) {
	f.attempts.Add(1)
	if f.down.Load() {
		return splitbrain.Decision{}, errors.New("storage unreachable (test)")
	}
	return f.Arbiter.Claim(ctx, c)
}

// waitUntil polls cond until it holds, failing the test after d.
func waitUntil(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(d); !cond(); time.Sleep(2 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
	}
}

// TestArbiterUnreachable: the primary dies while the arbiter cannot be
// reached. The backup keeps asking and does not go live until the arbiter
// answers again; then it goes live and finishes the guest.
func TestArbiterUnreachable(t *testing.T) {
	requireBackend(t)
	img := loadImage(t, "cpu")
	cfg := vmm.Config{Cmdline: "rounds=3000 work=20000"}
	inner, err := newTestArbiter(t, "flaky")
	if err != nil {
		t.Fatal(err)
	}
	arb := &flakyArbiter{Arbiter: inner}
	arb.down.Store(true)
	ln, err := logchannel.Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var mu sync.Mutex
	var events []string
	note := func(s string) { mu.Lock(); events = append(events, s); mu.Unlock() }
	pch, bch := channels(t, "flaky", logchannel.Config{FailoverTimeout: 300 * time.Millisecond})
	common := func(role string) Common {
		ch := pch
		if role == "backup" {
			ch = bch
		}
		return Common{Backend: requireBackend(t), Image: img, Config: cfg, VMID: "flaky", Generation: 1, Arbiter: arb, Claimant: role,
			Stdin: strings.NewReader(""), Stdout: io.Discard, Channel: ch,
			Logf: func(f string, a ...any) {
				if strings.Contains(f, "LIVE") {
					note("backup live")
				}
			}}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var out BackupOutcome
	var berr error
	done := make(chan struct{})
	bm := NewMetrics()
	go func() {
		defer close(done)
		c := common("backup")
		c.Metrics = bm
		out, berr = RunBackup(ctx, BackupOptions{Common: c, Listener: ln})
	}()
	pctx, kill := context.WithCancel(ctx)
	primaryDone := make(chan struct{})
	go func() {
		defer close(primaryDone)
		RunPrimary(pctx, PrimaryOptions{Common: common("primary"), BackupAddr: ln.Addr().String()})
	}()
	// The primary dies once the backup is replaying its log.
	waitUntil(t, time.Minute, "the backup replaying", func() bool { return metric(t, bm, "ftvm_replayed_exit") > 0 })
	kill()
	<-primaryDone
	// The arbiter stays down while the backup asks it again and again.
	waitUntil(t, time.Minute, "the backup asking the down arbiter twice", func() bool { return arb.attempts.Load() >= 2 })
	note("arbiter back")
	arb.down.Store(false)
	<-done
	if berr != nil || !out.WentLive || out.Result.Status != 0 {
		t.Fatalf("backup: %v, outcome %+v", berr, out)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(events) != 2 || events[0] != "arbiter back" || events[1] != "backup live" {
		t.Fatalf("events %q: the backup must go live only after the arbiter is back", events)
	}
}

// TestDivergedBackupNeverGoesLive: a divergence is returned as it is; the
// go-live decision is never even asked for, whatever else is wrong.
func TestDivergedBackupNeverGoesLive(t *testing.T) {
	asked := false
	f := &failoverWorld{lost: logchannel.ErrPeerLost, goLive: func(error) error { asked = true; return nil }, live: vmm.NewLiveWorld(context.Background(), nil, io.Discard),
		progress: func(uint64) {}}
	div := fmt.Errorf("replay: %w; and then %w", &replay.DivergenceError{Exit: 7, Mismatch: replay.MismatchRIP}, logchannel.ErrPeerLost)
	live, err := f.next(replay.ExecPoint{Exit: 7}, div)
	if live || err == nil || asked {
		t.Fatalf("live %v err %v asked %v", live, err, asked)
	}
	// A lost primary with no divergence does ask.
	if _, err := f.next(replay.ExecPoint{Exit: 8}, fmt.Errorf("x: %w", logchannel.ErrPeerLost)); !asked {
		t.Fatalf("a lost primary did not lead to the arbiter (%v)", err)
	}
}

// startGate is a TCP proxy between primary and backup that lets the
// handshake through (each side's preamble, hello and verdict) and then
// goes silent both ways without closing anything: a link frozen before the
// backup read the start entry.
func startGate(t *testing.T, backupAddr string) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	// pass copies the preamble and msgs messages from src to dst, then
	// reads and drops everything until src closes.
	pass := func(dst, src net.Conn, msgs int) {
		pre := make([]byte, len(logchannel.Magic)+2)
		if _, err := io.ReadFull(src, pre); err != nil {
			return
		}
		dst.Write(pre)
		for i := 0; i < msgs; i++ {
			hdr := make([]byte, 5)
			if _, err := io.ReadFull(src, hdr); err != nil {
				return
			}
			body := make([]byte, binary.LittleEndian.Uint32(hdr[1:]))
			if _, err := io.ReadFull(src, body); err != nil {
				return
			}
			dst.Write(append(hdr, body...))
		}
		io.Copy(io.Discard, src)
	}
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		b, err := net.Dial("tcp", backupAddr)
		if err != nil {
			c.Close()
			return
		}
		t.Cleanup(func() { c.Close(); b.Close() })
		go pass(b, c, 2) // the primary's hello and verdict
		pass(c, b, 2)    // the backup's hello and verdict
	}()
	return ln.Addr().String()
}

// TestPartitionBeforeTheStartEntry: the logging link freezes after the
// handshake, before the backup has read the log's first entry. The backup
// has acknowledged nothing, so the primary released nothing: exactly one
// side goes on (the backup from the guest's first instruction if it wins)
// and the other halts.
func TestPartitionBeforeTheStartEntry(t *testing.T) {
	img := loadImage(t, "cpu")
	cfg := vmm.Config{Cmdline: "rounds=2000 work=20000"}
	// In clear: the gate reads the channel's messages.
	r := runPair(t, img, cfg, "", logchannel.Config{FailoverTimeout: 300 * time.Millisecond, HeartbeatInterval: 30 * time.Millisecond, InsecureNoTLS: true},
		func(a string) string { return startGate(t, a) }, nil)
	primaryHalted := errors.Is(r.primaryErr, ErrLostArbitration)
	backupHalted := errors.Is(r.backupErr, ErrLostArbitration)
	primaryOn := r.primaryErr == nil
	backupOn := r.backupErr == nil && r.backup.WentLive
	if primaryOn == backupOn || primaryHalted == backupHalted || primaryOn == primaryHalted {
		t.Fatalf("primary err %v, backup err %v live %v: want exactly one side on and the other halted", r.primaryErr, r.backupErr, r.backup.WentLive)
	}
	if backupOn && (r.backup.LiveAt != 0 || !strings.Contains(r.backupOut, "cpu: rounds=2000 work=2000")) {
		t.Fatalf("the backup went live at exit %d and printed %q; want the whole run from the start", r.backup.LiveAt, r.backupOut)
	}
}
