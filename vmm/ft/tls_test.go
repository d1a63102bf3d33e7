package ft

import (
	"bytes"
	"errors"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ftvm/ftvm/logchannel"
	"github.com/ftvm/ftvm/vmm"
)

// wireTap is a TCP proxy that keeps a copy of every byte of the logging
// channel, both ways.
type wireTap struct {
	ln  net.Listener
	mu  sync.Mutex
	all bytes.Buffer
}

func startWireTap(t *testing.T, target string) *wireTap {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	w := &wireTap{ln: ln}
	t.Cleanup(func() { ln.Close() })
	go func() {
		down, err := ln.Accept()
		if err != nil {
			return
		}
		up, err := net.Dial("tcp", target)
		if err != nil {
			down.Close()
			return
		}
		t.Cleanup(func() { down.Close(); up.Close() })
		go w.pipe(up, down)
		w.pipe(down, up)
	}()
	return w
}

func (w *wireTap) pipe(dst, src net.Conn) {
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			w.mu.Lock()
			w.all.Write(buf[:n])
			w.mu.Unlock()
			if _, err := dst.Write(buf[:n]); err != nil {
				return
			}
		}
		if err != nil {
			dst.Close()
			return
		}
	}
}

func (w *wireTap) captured() []byte {
	w.mu.Lock()
	defer w.mu.Unlock()
	return bytes.Clone(w.all.Bytes())
}

// TestLoggingChannelCarriesNoGuestInputInClear: a capture of the logging
// channel, both ways, while the echo guest reads a known console line, does
// not hold that line with TLS (the default); in clear (--insecure-no-tls),
// the control, it does.
func TestLoggingChannelCarriesNoGuestInputInClear(t *testing.T) {
	img := loadImage(t, "echo")
	const secret = "my password is hunter2-swordfish"
	for _, mode := range []string{"tls", "clear"} {
		t.Run(mode, func(t *testing.T) {
			var tap *wireTap
			r := runPair(t, img, vmm.Config{}, secret+"\n", logchannel.Config{InsecureNoTLS: mode == "clear"},
				func(a string) string { tap = startWireTap(t, a); return tap.ln.Addr().String() }, nil)
			if r.primaryErr != nil || r.backupErr != nil || !r.backup.Verified {
				t.Fatalf("primary: %v; backup: %v, %+v", r.primaryErr, r.backupErr, r.backup)
			}
			if want := "echo: " + strings.ToUpper(secret) + "\n"; !strings.HasPrefix(r.primaryOut, want) {
				t.Fatalf("primary printed %q, want %q first", r.primaryOut, want)
			}
			wire := tap.captured()
			in := bytes.Contains(wire, []byte(secret))
			t.Logf("%s: %d bytes on the wire; the console line in them: %v", mode, len(wire), in)
			if len(wire) < 200 {
				t.Fatalf("only %d bytes captured: the tap saw no session", len(wire))
			}
			if mode == "tls" && in {
				t.Fatal("the guest's console input crossed the logging channel in clear")
			}
			if mode == "clear" && !in {
				t.Fatal("control: in clear the console input should be on the wire, and it is not: the capture proves nothing")
			}
		})
	}
}

// TestUnauthenticatedPeersAreRefused: a primary without this pair's
// certificate (another CA's, or one for another VM) reaches the backup
// first and then hangs up. The backup refuses it, counts it, does not go
// live for it, and serves the real primary to a verified end. A primary
// that reaches a backup without the pair's certificate refuses it at once.
func TestUnauthenticatedPeersAreRefused(t *testing.T) {
	img := loadImage(t, "exit3")
	ca, err := logchannel.NewCA("the pair's CA")
	if err != nil {
		t.Fatal(err)
	}
	creds := func(ca *logchannel.CA, vmID, host string) *logchannel.Credentials {
		c, err := ca.Credentials(vmID, host)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	pch := logchannel.Config{FailoverTimeout: 300 * time.Millisecond, HeartbeatInterval: 30 * time.Millisecond}
	bch := pch
	pch.TLS, bch.TLS = creds(ca, "test", "primary"), creds(ca, "test", "backup")
	stranger, err := logchannel.NewCA("someone else's CA")
	if err != nil {
		t.Fatal(err)
	}
	otherCA := creds(stranger, "test", "intruder")
	otherCA.CA = pch.TLS.CA // trusts the pair's CA; only its own certificate is wrong
	otherVM := creds(ca, "another-vm", "intruder")

	// An initialised arbiter: against a bare directory every claim would
	// wait for a cluster marker, and a primary that took the backup's end
	// for a loss would wait with it.
	ln, arb, ctx := pairSetup(t)
	metrics := NewMetrics()
	var logged syncBuffer
	common := func(role string, ch logchannel.Config) Common {
		return Common{Backend: requireBackend(t), Image: img, Config: vmm.Config{}, VMID: "test", Generation: 1, Arbiter: arb, Claimant: role,
			Stdin: strings.NewReader(""), Stdout: io.Discard, Channel: ch, Logf: func(f string, a ...any) {
				t.Logf(role+": "+f, a...)
				if role == "backup" {
					io.WriteString(&logged, f+"\n")
				}
			}}
	}
	backupCommon := common("backup", bch)
	backupCommon.Metrics = metrics
	var out BackupOutcome
	var berr error
	done := make(chan struct{})
	go func() {
		defer close(done)
		out, berr = RunBackup(ctx, BackupOptions{Common: backupCommon, Listener: ln})
	}()

	hello := logchannel.Hello{VMID: "test", Generation: 1, ImageSHA256: img.Hash, ConfigDigest: vmm.ConfigDigest(vmm.Config{})}
	for _, stranger := range []struct {
		name  string
		creds *logchannel.Credentials
	}{{"another CA", otherCA}, {"another VM", otherVM}} {
		cfg := pch
		cfg.TLS = stranger.creds
		s, err := logchannel.Dial(ctx, ln.Addr().String(), hello, cfg)
		if s != nil {
			s.Close()
			t.Fatalf("%s: the backup accepted a primary without the pair's certificate", stranger.name)
		}
		if !errors.Is(err, logchannel.ErrUnauthenticated) {
			t.Fatalf("%s: the stranger got %v, want an authentication error", stranger.name, err)
		}
	}
	// Both were counted before the real primary comes.
	deadline := time.Now().Add(10 * time.Second)
	for refusedCount(t, metrics, "unauthenticated") < 2 {
		if time.Now().After(deadline) {
			t.Fatalf("refused connections counted: %v, want 2", refusedCount(t, metrics, "unauthenticated"))
		}
		time.Sleep(5 * time.Millisecond)
	}

	res, perr := RunPrimary(ctx, PrimaryOptions{Common: common("primary", pch), BackupAddr: ln.Addr().String()})
	<-done
	if perr != nil || berr != nil || !out.Verified || out.WentLive || res.Status != 3 {
		t.Fatalf("primary: %v (status %d); backup: %v, %+v", perr, res.Status, berr, out)
	}
	if !strings.Contains(logged.String(), "refused a connection") {
		t.Fatalf("the backup did not log the refusals: %q", logged.String())
	}

	// The other way round: a backup without the pair's certificate.
	fake, err := logchannel.Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer fake.Close()
	fakeCfg := bch
	fakeCfg.TLS = otherCA
	go fake.Accept(ctx, hello, fakeCfg)
	start := time.Now()
	_, perr = RunPrimary(ctx, PrimaryOptions{Common: common("primary", pch), BackupAddr: fake.Addr().String()})
	if !errors.Is(perr, logchannel.ErrUnauthenticated) {
		t.Fatalf("primary against a fake backup: %v, want an authentication error", perr)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("the primary took %v to give up on a fake backup: it must not retry a refusal", d)
	}
}

// refusedCount reads ftvm_logchannel_refused_connections_total{reason}.
func refusedCount(t *testing.T, m *Metrics, reason string) float64 {
	t.Helper()
	families, err := m.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() != "ftvm_logchannel_refused_connections_total" {
			continue
		}
		for _, metric := range f.Metric {
			for _, l := range metric.Label {
				if l.GetName() == "reason" && l.GetValue() == reason {
					return metric.Counter.GetValue()
				}
			}
		}
	}
	return 0
}
