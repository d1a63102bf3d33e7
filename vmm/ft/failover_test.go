package ft

import (
	"context"
	"errors"
	"io"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ftvm/ftvm/logchannel"
	"github.com/ftvm/ftvm/splitbrain"
	"github.com/ftvm/ftvm/vmm"
)

// freezeProxy forwards a connection both ways until freeze is closed, then
// stops forwarding anything while keeping both connections open: a
// partition of the logging channel with both sides alive.
func freezeProxy(t *testing.T, backupAddr string, freeze <-chan struct{}) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var conns []net.Conn
	var mu sync.Mutex
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
	})
	pipe := func(dst, src net.Conn) {
		buf := make([]byte, 32<<10)
		for {
			n, err := src.Read(buf)
			select {
			case <-freeze:
				// Partitioned: swallow everything from now on.
				io.Copy(io.Discard, src)
				return
			default:
			}
			if n > 0 {
				dst.Write(buf[:n])
			}
			if err != nil {
				return
			}
		}
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
		mu.Lock()
		conns = append(conns, c, b)
		mu.Unlock()
		go pipe(b, c)
		go pipe(c, b)
	}()
	return ln.Addr().String()
}

// TestPartition cuts the logging channel while both sides stay alive: in
// every trial exactly one side goes live (or carries on) and the other
// halts.
func TestPartition(t *testing.T) {
	img := loadImage(t, "cpu")
	cfg := vmm.Config{Cmdline: "rounds=4000 work=20000"}
	for trial := 0; trial < 4; trial++ {
		freeze := make(chan struct{})
		time.AfterFunc(time.Duration(200+100*trial)*time.Millisecond, func() { close(freeze) })
		r := runPair(t, img, cfg, "", logchannel.Config{FailoverTimeout: 300 * time.Millisecond, HeartbeatInterval: 30 * time.Millisecond},
			func(a string) string { return freezeProxy(t, a, freeze) }, nil)
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

// TestArbiterUnreachable: the primary dies while the arbiter cannot be
// reached. The backup keeps asking and does not go live until the arbiter
// answers again; then it goes live and finishes the guest.
func TestArbiterUnreachable(t *testing.T) {
	requireKVM(t)
	img := loadImage(t, "cpu")
	cfg := vmm.Config{Cmdline: "rounds=3000 work=20000"}
	inner, err := splitbrain.Open("file://" + t.TempDir())
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
	common := func(role string) Common {
		return Common{Image: img, Config: cfg, VMID: "flaky", Generation: 1, Arbiter: arb, Claimant: role,
			Stdin: strings.NewReader(""), Stdout: io.Discard, Channel: logchannel.Config{FailoverTimeout: 300 * time.Millisecond},
			Logf: func(f string, a ...any) {
				if strings.Contains(f, "LIVE") {
					note("backup live")
				}
			}}
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var out BackupOutcome
	var berr error
	done := make(chan struct{})
	go func() {
		defer close(done)
		out, berr = RunBackup(ctx, BackupOptions{Common: common("backup"), Listener: ln})
	}()
	pctx, kill := context.WithCancel(ctx)
	time.AfterFunc(300*time.Millisecond, kill) // the primary dies
	RunPrimary(pctx, PrimaryOptions{Common: common("primary"), BackupAddr: ln.Addr().String()})
	time.Sleep(1500 * time.Millisecond) // the arbiter stays down for a while
	if n := arb.attempts.Load(); n < 2 {
		t.Fatalf("the backup asked the arbiter %d times while it was down; it must keep asking", n)
	}
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
