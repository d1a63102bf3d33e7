package ft

import (
	"context"
	"fmt"
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
	pout, bout, _ := killPrimaryWithALine(t, false, false)
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
	pout, bout, _ := killPrimaryWithALine(t, true, false)
	if pout != "echo: HELD LINE\n" || bout != "echo: 1 lines\n" {
		t.Fatalf("the primary printed %q and the backup %q; want the line once, on the primary, and the rest on the backup", pout, bout)
	}
}

// TestGuestEndedButOutputsHeld: the guest has ended on the primary, whose
// last two lines wait for acks that never reach it; the backup has the
// whole log, end entry included, and verifies it. Then the primary dies.
// The backup must not end quietly as "verified": it takes over and
// releases both lines. (They were lost: the backup dropped them, and the
// primary died holding them.)
func TestGuestEndedButOutputsHeld(t *testing.T) {
	pout, bout, out := killPrimaryWithALine(t, false, true)
	if want := "echo: HELD LINE\necho: 1 lines\n"; pout != "" || bout != want {
		t.Fatalf("the primary printed %q and the backup %q; want all of %q on the backup", pout, bout, want)
	}
	if !out.Verified {
		t.Fatalf("the backup had the whole log but did not verify it: %+v", out)
	}
}

// killPrimaryWithALine runs echo under a pair, feeds the primary one line
// (and then the end of its input if endOfInput: echo ends), waits until
// the output is held on the primary (acks held back) or released and
// reported (acksFlow), with every entry at the backup, then kills the
// primary. The backup goes live and, reading an empty input, ends. It
// returns what each side printed and the backup's outcome.
func killPrimaryWithALine(t *testing.T, acksFlow, endOfInput bool) (primaryOut, backupOut string, backup BackupOutcome) {
	b := requireBackend(t)
	img := loadImage(t, "echo")
	ln, arb, ctx := pairSetup(t)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	// In clear: the gate reads the messages. A long failover timeout: the
	// primary must not give up on its silent backup first.
	chcfg := logchannel.Config{FailoverTimeout: 30 * time.Second, InsecureNoTLS: true}
	var backupLog syncBuffer
	common := func(role string, in io.Reader, out io.Writer, m *Metrics) Common {
		return Common{Backend: b, Image: img, VMID: "test", Generation: 1, Arbiter: arb, Claimant: role,
			Stdin: in, Stdout: out, Channel: chcfg, Metrics: m, Logf: func(f string, a ...any) {
				t.Logf(role+": "+f, a...)
				if role == "backup" {
					fmt.Fprintf(&backupLog, f+"\n", a...)
				}
			}}
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
	go func() {
		io.WriteString(feed, "held line\n")
		if endOfInput {
			feed.Close()
		}
	}()
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
		if endOfInput && !strings.Contains(backupLog.String(), "backup: verified") {
			// The primary must have logged the whole run, down to its end
			// entry, before it dies: the backup verified it.
			return false
		}
		if acksFlow {
			return pout.String() != "" && metric(t, bm, "ftvm_primary_released_seq") > 0
		}
		if endOfInput {
			return metric(t, pm, "ftvm_held_outputs") >= 2
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
	return pout.String(), bout.String(), r.out
}
