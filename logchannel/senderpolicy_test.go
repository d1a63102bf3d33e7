package logchannel

import (
	"errors"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cockroachdb/datadriven"
)

// TestSenderPolicyTranscripts runs testdata/senderpolicy/*.txt against the
// Sender's policy core. Regenerate the expected output with -rewrite and
// read the diff. Times are Go durations since the start (at=5ms).
// Commands:
//
//	new max-unacked=B max-frames=N heartbeat=D failover=D
//	                             a fresh policy started at 0 (the default one:
//	                             16384 bytes, 4 frames, 100ms, 1s)
//	send seq=N bytes=B exit=E at=D
//	                             a log frame ending at entry N, with the primary
//	                             at exit E: sent if flow control lets it, else
//	                             "blocked"
//	may-send bytes=B             would a frame of B bytes go now?
//	append exit=E                the primary reaches exit E in an entry still
//	                             buffered (counts for the lag, not sent)
//	ack seq=N exit=E at=D        an ack from the backup: received up to N,
//	                             replayed to exit E
//	heartbeat stamp=D at=D       a heartbeat from the backup
//	echo stamp=D at=D            the backup echoes our heartbeat stamped D
//	released seq=N               Released(N)
//	tick at=D                    what the Sender's loops do at D: report the
//	                             released seq, echo, send a heartbeat (each
//	                             printed and recorded as sent at D), and
//	                             check whether the backup is lost
//	stats at=D                   the counters
//
// Every command but new, may-send and stats ends with the state: frames and
// bytes unacked, sent and acked seqs, replayed exit, lag.
func TestSenderPolicyTranscripts(t *testing.T) {
	paths, err := filepath.Glob("testdata/senderpolicy/*.txt")
	if err != nil || len(paths) == 0 {
		t.Fatalf("no transcripts: %v", err)
	}
	for _, path := range paths {
		t.Run(strings.TrimSuffix(filepath.Base(path), ".txt"), func(t *testing.T) {
			h := newPolicyHarness(senderLimits{maxUnacked: 16384, maxFrames: 4, heartbeatInterval: 100 * time.Millisecond, failoverTimeout: time.Second})
			datadriven.RunTest(t, path, func(t *testing.T, d *datadriven.TestData) string {
				return h.run(t, d)
			})
		})
	}
}

type policyHarness struct {
	p      *senderPolicy
	now    time.Duration
	latest uint64 // the primary's latest exit, sent or buffered
}

func newPolicyHarness(l senderLimits) *policyHarness {
	return &policyHarness{p: newSenderPolicy(l, "the backup", 0)}
}

func (h *policyHarness) run(t *testing.T, d *datadriven.TestData) string {
	switch d.Cmd {
	case "new":
		var l senderLimits
		var maxUnacked int
		d.ScanArgs(t, "max-unacked", &maxUnacked)
		d.ScanArgs(t, "max-frames", &l.maxFrames)
		l.maxUnacked = int64(maxUnacked)
		l.heartbeatInterval = scanDuration(t, d, "heartbeat")
		l.failoverTimeout = scanDuration(t, d, "failover")
		*h = *newPolicyHarness(l)
		return "ok"
	case "send":
		var seq, exit uint64
		var size int
		d.ScanArgs(t, "seq", &seq)
		d.ScanArgs(t, "bytes", &size)
		d.ScanArgs(t, "exit", &exit)
		h.at(t, d)
		if !h.p.maySend(int64(size)) {
			return fmt.Sprintf("blocked: %d bytes would make %d unacked (max %d), %d frames in flight (max %d)\n",
				size, h.p.unacked+int64(size), h.p.limits.maxUnacked, h.p.inflightFrames(), h.p.limits.maxFrames) + h.state()
		}
		h.p.sent(seq, exit, int64(size), h.now)
		h.p.wrote(h.now)
		h.latest = max(h.latest, exit)
		return "sent\n" + h.state()
	case "may-send":
		var size int
		d.ScanArgs(t, "bytes", &size)
		if h.p.maySend(int64(size)) {
			return "yes"
		}
		return "no"
	case "append":
		var exit uint64
		d.ScanArgs(t, "exit", &exit)
		h.latest = max(h.latest, exit)
		return h.state()
	case "ack":
		var seq, exit uint64
		d.ScanArgs(t, "seq", &seq)
		d.ScanArgs(t, "exit", &exit)
		h.at(t, d)
		grew, err := h.p.ack(seq, exit, h.now)
		switch {
		case errors.Is(err, ErrProtocol):
			return fmt.Sprintf("protocol error: %v\n", err) + h.state()
		case err != nil:
			d.Fatalf(t, "ack returned %v, which does not wrap ErrProtocol", err)
		case grew:
			return fmt.Sprintf("acked up to seq %d, ack delay %v\n", seq, h.p.ackDelay.last) + h.state()
		}
		return "no new seq acked\n" + h.state()
	case "heartbeat":
		stamp := scanDuration(t, d, "stamp")
		h.at(t, d)
		h.p.heartbeat(int64(stamp), h.now)
		return h.state()
	case "echo":
		stamp := scanDuration(t, d, "stamp")
		h.at(t, d)
		h.p.echo(int64(stamp), h.now)
		return fmt.Sprintf("rtt %v\n", h.p.rtt.last) + h.state()
	case "released":
		var seq uint64
		d.ScanArgs(t, "seq", &seq)
		h.p.setReleased(seq)
		return h.state()
	case "tick":
		h.at(t, d)
		return h.tick() + h.state()
	case "stats":
		h.at(t, d)
		var st Stats
		h.p.fillStats(&st, h.latest, h.now)
		return fmt.Sprintf("frames %d, acks %d, ack delay %v (avg %v), heartbeats sent %d received %d, rtt %v (avg %v, %d samples)",
			st.Frames, st.Acks, st.AckDelay, st.AckDelayAvg, st.HeartbeatsSent, st.HeartbeatsReceived, st.RTT, st.RTTAvg, st.RTTSamples)
	}
	d.Fatalf(t, "unknown command %q", d.Cmd)
	return ""
}

// tick does what heartbeatLoop and watchdog do, in their order.
func (h *policyHarness) tick() string {
	var b strings.Builder
	if r, ok := h.p.releaseDue(); ok {
		fmt.Fprintf(&b, "send released seq=%d\n", r)
		h.p.wrote(h.now)
		h.p.releaseReported(r)
	}
	if stamp, ok := h.p.echoDue(); ok {
		fmt.Fprintf(&b, "send echo stamp=%v\n", time.Duration(stamp))
		h.p.wrote(h.now)
	}
	if h.p.heartbeatDue(h.now) {
		b.WriteString("send heartbeat\n")
		h.p.wrote(h.now)
		h.p.heartbeatSent()
	}
	if err := h.p.lost(h.now); err != nil {
		fmt.Fprintf(&b, "lost: %v\n", err)
	} else {
		b.WriteString("backup alive\n")
	}
	return b.String()
}

func (h *policyHarness) at(t *testing.T, d *datadriven.TestData) {
	at := scanDuration(t, d, "at")
	if at < h.now {
		d.Fatalf(t, "at=%v is before the previous command's %v", at, h.now)
	}
	h.now = at
}

func (h *policyHarness) state() string {
	p := h.p
	lag := p.lagAt(h.latest, h.now)
	return fmt.Sprintf("unacked: %d frames, %d bytes; sent seq %d, acked seq %d; replayed exit %d of %d; lag %d exits, %v",
		p.inflightFrames(), p.unacked, p.highSent, p.acked, p.replayed, h.latest, lag.Exits, lag.Time)
}

func scanDuration(t *testing.T, d *datadriven.TestData, key string) time.Duration {
	var s string
	d.ScanArgs(t, key, &s)
	v, err := time.ParseDuration(s)
	if err != nil {
		d.Fatalf(t, "%s=%s: %v", key, s, err)
	}
	return v
}

// TestSenderPolicyIsPure keeps the Sender's policy a pure core: no I/O
// imports, no goroutines, no reading of the clock.
func TestSenderPolicyIsPure(t *testing.T) {
	allowed := map[string]bool{"fmt": true, "time": true}
	forbidden := map[string]bool{"Now": true, "Since": true, "Until": true, "Sleep": true, "After": true, "AfterFunc": true, "NewTimer": true, "NewTicker": true, "Tick": true}
	const name = "senderpolicy.go"
	f, err := parser.ParseFile(token.NewFileSet(), name, nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	for _, imp := range f.Imports {
		path, _ := strconv.Unquote(imp.Path.Value)
		if !allowed[path] {
			t.Errorf("%s imports %q: the sender's policy must stay pure", name, path)
		}
	}
	ast.Inspect(f, func(n ast.Node) bool {
		switch n := n.(type) {
		case *ast.SelectorExpr:
			if id, ok := n.X.(*ast.Ident); ok && id.Name == "time" && forbidden[n.Sel.Name] {
				t.Errorf("%s uses time.%s: the Sender gives the time", name, n.Sel.Name)
			}
		case *ast.GoStmt:
			t.Errorf("%s starts a goroutine", name)
		case *ast.SendStmt:
			t.Errorf("%s sends on a channel", name)
		}
		return true
	})
}

// TestReplayStuck: a backup that replayed and then stopped, while the
// primary waited on its lag, is lost after the failover timeout; one that
// has not replayed anything yet (a joined backup taking in its state) is
// not.
func TestReplayStuck(t *testing.T) {
	ms := time.Millisecond
	p := newSenderPolicy(senderLimits{failoverTimeout: 500 * ms}, "the backup", 0)
	if err := p.replayStuck(5000*ms, 0); err != nil {
		t.Fatalf("a backup that never reported a replayed exit: %v", err)
	}
	if _, err := p.ack(0, 7, 100*ms); err != nil {
		t.Fatal(err)
	}
	if err := p.replayStuck(700*ms, 300*ms); err != nil {
		t.Fatalf("waiting 400ms: %v", err)
	}
	if err := p.replayStuck(801*ms, 300*ms); err == nil || !strings.Contains(err.Error(), "replayed nothing for 501ms") {
		t.Fatalf("waiting 501ms: %v", err)
	}
	// Progress during the wait counts from itself.
	if _, err := p.ack(0, 9, 800*ms); err != nil {
		t.Fatal(err)
	}
	if err := p.replayStuck(1200*ms, 300*ms); err != nil {
		t.Fatalf("400ms after progress: %v", err)
	}
}

// TestLeaseExpired: acks let outputs leave until the newest acknowledged
// frame's send time plus the failover timeout, less an eighth; an ack
// read late (this side was paused) renews nothing beyond its frame's
// send time.
func TestLeaseExpired(t *testing.T) {
	ms := time.Millisecond
	p := newSenderPolicy(senderLimits{failoverTimeout: 800 * ms, maxUnacked: 1 << 20, maxFrames: 16}, "the backup", 0)
	if err := p.leaseExpired(699 * ms); err != nil {
		t.Fatalf("from the handshake, 699ms: %v", err)
	}
	if err := p.leaseExpired(700 * ms); err == nil {
		t.Fatal("from the handshake, 700ms: the lease still held")
	}
	p.sent(1, 100, 10, 1000*ms)
	// Paused for three seconds: the ack is read at 4000ms.
	if _, err := p.ack(1, 10, 4000*ms); err != nil {
		t.Fatal(err)
	}
	if err := p.leaseExpired(4000 * ms); err == nil || !strings.Contains(err.Error(), "sent 3s ago") {
		t.Fatalf("an ack read 3s after its frame was sent: %v", err)
	}
	p.sent(2, 100, 11, 4001*ms)
	if _, err := p.ack(2, 11, 4002*ms); err != nil {
		t.Fatal(err)
	}
	if err := p.leaseExpired(4100 * ms); err != nil {
		t.Fatalf("an ack 1ms after its frame: %v", err)
	}
}
