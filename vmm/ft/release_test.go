package ft

import (
	"context"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/ftvm/ftvm/logchannel"
)

// metric reads one gauge or counter of m (0 if it is not registered yet).
func metric(t *testing.T, m *Metrics, name string) float64 {
	t.Helper()
	families, err := m.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() != name || len(f.Metric) == 0 {
			continue
		}
		if g := f.Metric[0].GetGauge(); g != nil {
			return g.GetValue()
		}
		if c := f.Metric[0].GetCounter(); c != nil {
			return c.GetValue()
		}
	}
	return 0
}

// TestGoLiveReleasesWhatThePrimaryHeld: the primary holds echo's first
// line because no ack reaches it (a proxy holds the backup's messages),
// and dies with it held. The backup, which replayed that output, goes live
// and releases it before anything else: the line appears once, on the
// backup. It once appeared nowhere (the backup dropped every replayed
// output, and the primary never released it).
func TestGoLiveReleasesWhatThePrimaryHeld(t *testing.T) {
	pout, bout := killPrimaryWithALine(t, false)
	if pout != "" {
		t.Fatalf("the primary released %q with no ack", pout)
	}
	if want := "echo: HELD LINE\necho: 1 lines\n"; bout != want {
		t.Fatalf("the new primary printed %q, want %q: the held line exactly once, then the rest", bout, want)
	}
}

// TestGoLiveReleasesNothingTwice: the same with acks flowing, so the
// primary releases the line and says so; the backup that goes live must
// not print it again.
func TestGoLiveReleasesNothingTwice(t *testing.T) {
	pout, bout := killPrimaryWithALine(t, true)
	if pout != "echo: HELD LINE\n" || bout != "echo: 1 lines\n" {
		t.Fatalf("the primary printed %q and the backup %q; want the line once, on the primary, and the rest on the backup", pout, bout)
	}
}

// killPrimaryWithALine runs echo under a pair, feeds the primary one line
// and no end of input, waits until the line's output is held on the
// primary (acks held back) or released and reported (acksFlow), with every
// entry at the backup, then kills the primary. The backup goes live, reads
// an empty input and ends. It returns what each side printed.
func killPrimaryWithALine(t *testing.T, acksFlow bool) (primaryOut, backupOut string) {
	b := requireBackend(t)
	img := loadImage(t, "echo")
	ln, err := logchannel.Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	arb, err := newTestArbiter(t, "test")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	// In clear: the gate reads the messages. A long failover timeout: the
	// primary must not give up on its silent backup first.
	chcfg := logchannel.Config{FailoverTimeout: 30 * time.Second, InsecureNoTLS: true}
	common := func(role string, in io.Reader, out io.Writer, m *Metrics) Common {
		return Common{Backend: b, Image: img, VMID: "test", Generation: 1, Arbiter: arb, Claimant: role,
			Stdin: in, Stdout: out, Channel: chcfg, Metrics: m, Logf: func(f string, a ...any) { t.Logf(role+": "+f, a...) }}
	}
	pm, bm := NewMetrics(), NewMetrics()
	var bout, pout syncBuffer
	type result struct {
		out BackupOutcome
		err error
	}
	backupDone := make(chan result, 1)
	go func() {
		out, err := RunBackup(ctx, BackupOptions{Common: common("backup", strings.NewReader(""), &bout, bm), Listener: ln})
		backupDone <- result{out, err}
	}()
	gate := &ackGate{opened: make(chan struct{})}
	if acksFlow {
		close(gate.opened)
	} else {
		t.Cleanup(func() { close(gate.opened) })
	}
	stdin, feed := io.Pipe() // never closed while the primary runs: echo keeps waiting
	defer feed.Close()
	go io.WriteString(feed, "held line\n")
	pctx, killPrimary := context.WithCancel(ctx)
	primaryDone := make(chan error, 1)
	go func() {
		_, err := RunPrimary(pctx, PrimaryOptions{Common: common("primary", stdin, &pout, pm), BackupAddr: gate.start(t, ln.Addr().String())})
		primaryDone <- err
	}()

	ready := func() bool {
		sent := metric(t, pm, "ftvm_log_entries_sent_total")
		if sent == 0 || metric(t, bm, "ftvm_log_entries_received_total") < sent {
			return false
		}
		if acksFlow {
			return pout.String() != "" && metric(t, bm, "ftvm_primary_released_seq") > 0
		}
		return metric(t, pm, "ftvm_held_outputs") >= 1
	}
	for deadline := time.Now().Add(time.Minute); !ready(); time.Sleep(5 * time.Millisecond) {
		select {
		case err := <-primaryDone:
			t.Fatalf("the primary ended early: %v", err)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("not ready to kill the primary: held %v, sent %v, received %v, released %v, primary printed %q",
				metric(t, pm, "ftvm_held_outputs"), metric(t, pm, "ftvm_log_entries_sent_total"),
				metric(t, bm, "ftvm_log_entries_received_total"), metric(t, bm, "ftvm_primary_released_seq"), pout.String())
		}
	}
	killPrimary()
	if err := <-primaryDone; err == nil {
		t.Fatal("the killed primary reported success")
	}
	r := <-backupDone
	if r.err != nil || !r.out.WentLive {
		t.Fatalf("backup: %v, %+v", r.err, r.out)
	}
	return pout.String(), bout.String()
}
