package ft

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ftvm/ftvm/logchannel"
	"github.com/ftvm/ftvm/splitbrain"
	"github.com/ftvm/ftvm/vmm"
	"github.com/ftvm/ftvm/vmm/backend"
	"github.com/ftvm/ftvm/vmm/backends"
	"github.com/ftvm/ftvm/vmm/vmmtest"
)

func TestMain(m *testing.M) {
	vmmtest.BuildGuests("../../guests")
	os.Exit(m.Run())
}

func requireBackend(t testing.TB) backend.Backend { t.Helper(); return vmmtest.Backend(t) }

func loadImage(t testing.TB, name string) *vmm.Image {
	t.Helper()
	file, err := os.ReadFile("../../guests/build/" + name + ".elf")
	if err != nil {
		t.Fatal(err)
	}
	img, err := vmm.LoadELF(file)
	if err != nil {
		t.Fatal(err)
	}
	return img
}

// syncBuffer is a bytes.Buffer safe for the writers of two goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
	// onWrite, if set, is called under the lock before each write.
	onWrite func(p []byte)
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.onWrite != nil {
		s.onWrite(p)
	}
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// plainRun runs a guest without FT and returns its console output.
func plainRun(t *testing.T, img *vmm.Image, cfg vmm.Config, input string) (string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var out bytes.Buffer
	m, err := vmm.New(requireBackend(t), img, cfg, vmm.NewLiveWorld(ctx, strings.NewReader(input), &out))
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	res, err := m.Run(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return out.String(), res.Status
}

// channels gives cfg to the primary and the backup of the VM vmID, each
// with credentials from a throwaway CA for it, unless cfg runs in clear.
func channels(t testing.TB, vmID string, cfg logchannel.Config) (primary, backup logchannel.Config) {
	t.Helper()
	if cfg.InsecureNoTLS || cfg.TLS != nil {
		return cfg, cfg
	}
	pc, bc, err := logchannel.NewPairCredentials(vmID)
	if err != nil {
		t.Fatal(err)
	}
	primary, backup = cfg, cfg
	primary.TLS, backup.TLS = pc, bc
	return primary, backup
}

// pairRun is the outcome of a primary and a backup run together.
type pairRun struct {
	primaryOut, backupOut string
	res                   vmm.Result
	primaryErr, backupErr error
	backup                BackupOutcome
}

// runPair runs img as primary and backup in this process, connected over
// loopback, optionally through proxy (which gets the backup's address and
// returns the one the primary should dial).
func runPair(t *testing.T, img *vmm.Image, cfg vmm.Config, input string, chcfg logchannel.Config, proxy func(backupAddr string) string, primaryOut io.Writer) pairRun {
	t.Helper()
	b := requireBackend(t)
	return runPairOn(t, b, b, img, cfg, input, chcfg, proxy, primaryOut)
}

// pairSetup is what an in-process pair starts from: the backup's listener
// (closed when the test ends), a file arbiter initialised with VM "test"
// at epoch 1, and a context that bounds the test.
func pairSetup(t *testing.T) (*logchannel.Listener, splitbrain.Arbiter, context.Context) {
	t.Helper()
	ln, err := logchannel.Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	arb, err := newTestArbiter(t, "test")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ln, arb, ctx
}

// runPairOn is runPair with the primary on backend pb and the backup on bb.
func runPairOn(t *testing.T, pb, bb backend.Backend, img *vmm.Image, cfg vmm.Config, input string, chcfg logchannel.Config, proxy func(backupAddr string) string, primaryOut io.Writer) pairRun {
	t.Helper()
	ln, arb, ctx := pairSetup(t)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	pch, bch := channels(t, "test", chcfg)
	common := func(role string, in io.Reader, out io.Writer) Common {
		b, ch := pb, pch
		if role == "backup" {
			b, ch = bb, bch
		}
		return Common{Backend: b, Image: img, Config: cfg, VMID: "test", Generation: 1, Arbiter: arb, Claimant: role,
			Stdin: in, Stdout: out, Channel: ch, Logf: func(f string, a ...any) { t.Logf(role+": "+f, a...) }}
	}
	var bout syncBuffer
	var r pairRun
	done := make(chan struct{})
	go func() {
		defer close(done)
		r.backup, r.backupErr = RunBackup(ctx, BackupOptions{Common: common("backup", strings.NewReader(""), &bout), Listener: ln})
	}()
	addr := ln.Addr().String()
	if proxy != nil {
		addr = proxy(addr)
	}
	var pout syncBuffer
	if primaryOut == nil {
		primaryOut = &pout
	}
	r.res, r.primaryErr = RunPrimary(ctx, PrimaryOptions{Common: common("primary", strings.NewReader(input), primaryOut), BackupAddr: addr})
	<-done
	r.primaryOut, r.backupOut = pout.String(), bout.String()
	return r
}

// TestPairMatchesPlainRun: under a pair, cpu and echo print on the primary
// exactly what a plain run prints, and the backup verifies its replay to the
// primary's last exit, dropping its own outputs.
func TestPairMatchesPlainRun(t *testing.T) {
	var lines strings.Builder
	for i := 0; i < 200; i++ {
		fmt.Fprintf(&lines, "line %d\n", i)
	}
	cases := []struct {
		guest, input string
		cfg          vmm.Config
	}{
		{"cpu", "", vmm.Config{Cmdline: "rounds=3000 work=2000"}},
		{"echo", lines.String(), vmm.Config{}},
		{"exit3", "", vmm.Config{}},
	}
	for _, c := range cases {
		t.Run(c.guest, func(t *testing.T) {
			img := loadImage(t, c.guest)
			r := runPair(t, img, c.cfg, c.input, logchannel.Config{}, nil, nil)
			if r.primaryErr != nil || r.backupErr != nil {
				t.Fatalf("primary: %v; backup: %v", r.primaryErr, r.backupErr)
			}
			if !r.backup.Verified || r.backup.WentLive {
				t.Fatalf("backup outcome %+v", r.backup)
			}
			if r.backupOut != "" {
				t.Fatalf("the backup printed %q; its outputs must be dropped", r.backupOut)
			}
			if r.backup.Summary.DroppedOutputs == 0 {
				t.Fatal("the backup dropped no outputs: it did not replay any")
			}
			if c.guest == "cpu" {
				// cpu's output depends on the TSC: compare with the pair's own
				// structure instead of a plain run's values.
				if !strings.Contains(r.primaryOut, "cpu: rounds=3000 work=2000 rdtsc_reads=3001") {
					t.Fatalf("primary printed %q", r.primaryOut)
				}
				return
			}
			want, status := plainRun(t, img, c.cfg, c.input)
			if r.primaryOut != want || r.res.Status != status {
				t.Fatalf("primary printed %q (status %d); a plain run prints %q (status %d)", r.primaryOut, r.res.Status, want, status)
			}
		})
	}
}

// TestStrayConnectionsDoNotKillTheBackup: a bare connect-and-close and an
// HTTP request reach the backup before its primary does; the backup
// refuses them and then serves the real primary to a verified end.
func TestStrayConnectionsDoNotKillTheBackup(t *testing.T) {
	img := loadImage(t, "exit3")
	r := runPair(t, img, vmm.Config{}, "", logchannel.Config{}, func(addr string) string {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		c.Close()
		c, err = net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		c.SetDeadline(time.Now().Add(20 * time.Second)) // a backup that no longer listens must not hang the test
		io.WriteString(c, "GET / HTTP/1.0\r\n\r\n")
		io.Copy(io.Discard, c) // until the backup hangs up on it
		c.Close()
		return addr
	}, nil)
	if r.primaryErr != nil || r.backupErr != nil || !r.backup.Verified || r.res.Status != 3 {
		t.Fatalf("primary: %v (status %d); backup: %v, %+v", r.primaryErr, r.res.Status, r.backupErr, r.backup)
	}
}

// TestPairAcrossBackends: a primary on one backend and a backup on another
// (both ways) agree at the handshake, and the backup verifies its replay to
// the primary's last exit: the guest sees one machine on both.
func TestPairAcrossBackends(t *testing.T) {
	bs := backends.UsableBackends()
	if len(bs) < 2 {
		t.Skipf("only %v usable here: a pair across backends needs two (.ci/run runs the KVM tests under emulation on such hosts)", backends.Usable())
	}
	var lines strings.Builder
	for i := 0; i < 100; i++ {
		fmt.Fprintf(&lines, "line %d\n", i)
	}
	img := loadImage(t, "echo")
	want, status := plainRun(t, img, vmm.Config{}, lines.String())
	for _, pb := range bs {
		for _, bb := range bs {
			if pb == bb {
				continue
			}
			t.Run(pb.Name()+"-primary-"+bb.Name()+"-backup", func(t *testing.T) {
				r := runPairOn(t, pb, bb, img, vmm.Config{}, lines.String(), logchannel.Config{}, nil, nil)
				if r.primaryErr != nil || r.backupErr != nil {
					t.Fatalf("primary: %v; backup: %v", r.primaryErr, r.backupErr)
				}
				if !r.backup.Verified || r.primaryOut != want || r.res.Status != status {
					t.Fatalf("backup %+v; primary printed %q (status %d), a plain run %q (status %d)", r.backup, r.primaryOut, r.res.Status, want, status)
				}
			})
		}
	}
}

// ackGate is a TCP proxy between primary and backup. It forwards the
// primary's traffic at once; of the backup's it passes the handshake (its
// hello and verdict) and holds every later message (acks, heartbeats)
// until opened is closed. It counts the primary's bytes that crossed while
// the acks were held.
type ackGate struct {
	opened       chan struct{}
	heldSince    time.Time
	logWhileHeld int64
	mu           sync.Mutex
}

func (g *ackGate) start(t *testing.T, backupAddr string) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
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
		g.mu.Lock()
		g.heldSince = time.Now().Add(time.Hour) // set when the handshake is through
		g.mu.Unlock()
		go func() {
			buf := make([]byte, 64<<10)
			for {
				n, err := c.Read(buf)
				if n > 0 {
					g.mu.Lock()
					if time.Now().After(g.heldSince) {
						select {
						case <-g.opened:
						default:
							g.logWhileHeld += int64(n)
						}
					}
					g.mu.Unlock()
					b.Write(buf[:n])
				}
				if err != nil {
					b.Close()
					return
				}
			}
		}()
		// The backup's side: the preamble and its first two messages (hello
		// and verdict) pass; every later message (acks, heartbeats) waits.
		defer c.Close()
		pre := make([]byte, len(logchannel.Magic)+2)
		if _, err := io.ReadFull(b, pre); err != nil {
			return
		}
		c.Write(pre)
		for msgs := 0; ; msgs++ {
			hdr := make([]byte, 5)
			if _, err := io.ReadFull(b, hdr); err != nil {
				return
			}
			body := make([]byte, binary.LittleEndian.Uint32(hdr[1:]))
			if _, err := io.ReadFull(b, body); err != nil {
				return
			}
			if msgs == 2 {
				g.mu.Lock()
				g.heldSince = time.Now()
				g.mu.Unlock()
			}
			if msgs >= 2 {
				<-g.opened
			}
			c.Write(append(hdr, body...))
		}
	}()
	return ln.Addr().String()
}

// TestOutputRule holds the backup's acks back: no console byte may reach
// the primary's stdout before the acks are released, and the primary must
// have shipped its log meanwhile (so the test cannot pass by stalling the
// pair altogether). The assertion is on the order of events.
func TestOutputRule(t *testing.T) {
	img := loadImage(t, "echo")
	var mu sync.Mutex
	var events []string
	gate := &ackGate{opened: make(chan struct{})}
	out := &syncBuffer{onWrite: func(p []byte) {
		mu.Lock()
		events = append(events, fmt.Sprintf("output %q", p))
		mu.Unlock()
	}}
	go func() {
		time.Sleep(time.Second) // ample time for echo to have printed, were nothing held
		mu.Lock()
		events = append(events, "acks released")
		mu.Unlock()
		close(gate.opened)
	}()
	// In clear: the gate reads the channel's messages.
	r := runPair(t, img, vmm.Config{}, "held line\n", logchannel.Config{FailoverTimeout: 20 * time.Second, InsecureNoTLS: true}, func(a string) string { return gate.start(t, a) }, out)
	if r.primaryErr != nil || r.backupErr != nil {
		t.Fatalf("primary: %v; backup: %v", r.primaryErr, r.backupErr)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(events) < 2 || events[0] != "acks released" {
		t.Fatalf("events in order: %q; every output must come after the acks", events)
	}
	if gate.logWhileHeld == 0 {
		t.Fatal("the primary sent no log while acks were held: the test proved nothing")
	}
	if out.String() != "echo: HELD LINE\necho: 1 lines\n" {
		t.Fatalf("primary printed %q", out.String())
	}
}

// TestBackupLostWhileDraining: the guest has stopped and its last outputs
// wait for acks that never come (a proxy holds them). The primary must
// notice the backup is gone during that final drain and ask the arbiter
// (it once stopped watching when the guest stopped, and hung); the side
// that wins releases the outputs, once.
func TestBackupLostWhileDraining(t *testing.T) {
	img := loadImage(t, "echo")
	gate := &ackGate{opened: make(chan struct{})}
	t.Cleanup(func() { close(gate.opened) })
	var out syncBuffer
	r := runPair(t, img, vmm.Config{}, "last words\n", logchannel.Config{FailoverTimeout: 300 * time.Millisecond, HeartbeatInterval: 50 * time.Millisecond, InsecureNoTLS: true},
		func(a string) string { return gate.start(t, a) }, &out)
	// Each side has lost the other; whichever wins the arbiter releases
	// the last outputs, once: the primary, which holds them, or the
	// backup, which replayed them and has not heard that they left.
	const want = "echo: LAST WORDS\necho: 1 lines\n"
	switch {
	case r.primaryErr == nil:
		if out.String() != want || r.backupOut != "" {
			t.Fatalf("the primary won and printed %q; the backup printed %q", out.String(), r.backupOut)
		}
	case errors.Is(r.primaryErr, ErrLostArbitration):
		if out.String() != "" || r.backupOut != want || !r.backup.WentLive {
			t.Fatalf("the backup won (%+v) and printed %q; the primary printed %q", r.backup, r.backupOut, out.String())
		}
	default:
		t.Fatalf("primary: %v", r.primaryErr)
	}
}
