package logchannel

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/ftvm/ftvm/replay"
)

// appendAll appends es, flushing every per entries so that frames (and
// log messages) have a known shape. It stops at the first error.
func appendAll(s *Sender, es []replay.Entry, per int) error {
	for i, e := range es {
		if err := s.Append(e); err != nil {
			return err
		}
		if (i+1)%per == 0 {
			if err := s.Flush(); err != nil {
				return err
			}
		}
	}
	return s.Flush()
}

// TestCorruptFrame: a byte flipped in the middle of a log frame on the
// wire. The backup names the checksum and the frame, keeps every entry
// received before it, and drops the connection; the primary sees its
// backup lost. Nothing unreceived was ever acknowledged.
func TestCorruptFrame(t *testing.T) {
	ln := listen(t)
	p := newProxy(t, ln.Addr().String())
	p.onLog = func(n int, body []byte) ([]byte, int) {
		if n == 5 { // the stream header is message 1
			body[len(body)/2] ^= 0x10
		}
		return body, -1
	}
	// No background flushes: the test decides where frames end. In clear:
	// the proxy edits messages (over TLS, a flipped byte fails TLS's MAC).
	cfg := inClear(fastConfig())
	cfg.FlushInterval = time.Hour
	s, r := connect(t, ln, p.addr(), cfg, inClear(fastConfig()))
	es := bigEntries(200, 1000)
	go appendAll(s, es, 20) // fails once the backup drops the connection

	got, err := drain(t, r, 10*time.Second)
	t.Logf("backup: %d entries, then %v", len(got), err)
	if !errors.Is(err, ErrPeerLost) || !errors.Is(err, replay.ErrChecksum) {
		t.Fatalf("error %v, want ErrPeerLost and replay.ErrChecksum", err)
	}
	for _, want := range []string{"checksum mismatch", "frame 4", "bad log from the primary"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not say %q", err, want)
		}
	}
	intact := p.intactEntries()
	if len(got) != len(intact) || len(got) != 60 {
		t.Fatalf("backup kept %d entries; the %d before the bad frame were 60", len(got), len(intact))
	}
	samePrefix(t, got, es)

	waitClosed(t, s.PeerLost(), 5*time.Second, "the primary noticing the backup is gone")
	t.Logf("primary: %v", s.Err())
	if acked := s.Acked(); acked > uint64(len(got)) {
		t.Fatalf("primary holds acks up to %d, the backup has only %d entries", acked, len(got))
	}
	if err := s.Append(es[0]); !errors.Is(err, ErrPeerLost) {
		t.Fatalf("Append after peer loss: %v", err)
	}
}

// TestResetMidFrame: the connection is reset in the middle of a large
// frame. The backup returns every complete entry, then ErrPeerLost; the
// primary notices.
func TestResetMidFrame(t *testing.T) {
	ln := listen(t)
	p := newProxy(t, ln.Addr().String())
	p.onLog = func(n int, body []byte) ([]byte, int) {
		if n == 4 {
			return body, len(body) / 2
		}
		return body, -1
	}
	cfg := inClear(fastConfig()) // the proxy cuts inside a message
	cfg.FlushInterval = time.Hour
	cfg.FrameSize = 1 << 20
	s, r := connect(t, ln, p.addr(), cfg, inClear(fastConfig()))
	es := bigEntries(100, 64<<10) // frames of 10 entries, 640 KiB
	appendDone := make(chan error, 1)
	go func() { appendDone <- appendAll(s, es, 10) }()

	got, err := drain(t, r, 10*time.Second)
	t.Logf("backup: %d entries, then %v", len(got), err)
	if !errors.Is(err, ErrPeerLost) {
		t.Fatalf("error %v, want ErrPeerLost", err)
	}
	if intact := p.intactEntries(); len(got) != len(intact) || len(got) != 20 {
		t.Fatalf("backup got %d entries; the %d before the cut frame were 20", len(got), len(intact))
	}
	samePrefix(t, got, es)

	waitClosed(t, s.PeerLost(), 5*time.Second, "the primary noticing the reset")
	t.Logf("primary: %v", s.Err())
	// The appends may all have fitted in the socket buffers before the
	// reset; either way they end, and later calls fail at once.
	select {
	case err := <-appendDone:
		if err != nil && !errors.Is(err, ErrPeerLost) {
			t.Fatalf("appending across the reset: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Append still blocked after the peer was lost")
	}
	next := replay.Entry{Seq: 101, Kind: replay.KindTSC, Exit: 101, RIP: 0x100000, Value: 1}
	if err := s.Append(next); !errors.Is(err, ErrPeerLost) {
		t.Fatalf("Append after the reset: %v", err)
	}
}

// TestSilenceIsPeerLoss: a network that stops carrying anything, both
// ways, without closing the connection: both sides declare the other lost
// within the failover timeout plus a margin, and not before the timeout.
func TestSilenceIsPeerLoss(t *testing.T) {
	ln := listen(t)
	p := newProxy(t, ln.Addr().String())
	cfg := withTLS(Config{HeartbeatInterval: 10 * time.Millisecond, FailoverTimeout: 300 * time.Millisecond})
	s, r := connect(t, ln, p.addr(), cfg, cfg)
	es := testEntries(100)
	if err := appendAll(s, es, 10); err != nil {
		t.Fatal(err)
	}
	if err := s.WaitAcked(testContext(t, 5*time.Second), 100); err != nil {
		t.Fatal(err)
	}

	p.frozen.Store(true)
	frozeAt := time.Now()
	lost := waitClosed(t, s.PeerLost(), 3*time.Second, "the primary declaring the backup lost")
	waitClosed(t, r.Done(), 3*time.Second, "the backup declaring the primary lost")
	backupLost := time.Since(frozeAt)
	t.Logf("primary lost the backup after %v: %v", lost, s.Err())
	t.Logf("backup lost the primary after %v: %v", backupLost, r.Err())
	const margin = 500 * time.Millisecond
	if lost < cfg.FailoverTimeout-50*time.Millisecond || lost > cfg.FailoverTimeout+margin || backupLost > cfg.FailoverTimeout+margin {
		t.Fatalf("lost after %v and %v, want about %v", lost, backupLost, cfg.FailoverTimeout)
	}
	for _, err := range []error{s.Err(), r.Err()} {
		if !errors.Is(err, ErrPeerLost) || !strings.Contains(err.Error(), "nothing heard from") {
			t.Fatalf("error %v", err)
		}
	}
	// The backup still replays everything it received.
	got, err := drain(t, r, 5*time.Second)
	if len(got) != len(es) || !errors.Is(err, ErrPeerLost) {
		t.Fatalf("backup: %d entries, then %v", len(got), err)
	}
	samePrefix(t, got, es)
}

// TestAckBeyondSentIsRefused: a backup that acknowledges entries it
// cannot have would let outputs out under a broken Output Rule; the
// primary drops it.
func TestAckBeyondSentIsRefused(t *testing.T) {
	addr, peers := rawBackup(t)
	s, err := Dial(testContext(t, 5*time.Second), addr, testHello, fastConfig())
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	peer := <-peers
	for _, e := range testEntries(5) {
		if err := s.Append(e); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Flush(); err != nil {
		t.Fatal(err)
	}
	if _, err := peer.conn.Write(appendAck(nil, 6, 0)); err != nil {
		t.Fatal(err)
	}
	waitClosed(t, s.PeerLost(), 5*time.Second, "the primary dropping the lying backup")
	err = s.Err()
	if !errors.Is(err, ErrProtocol) || !strings.Contains(err.Error(), "acknowledged seq 6 but only seq 5 was sent") {
		t.Fatalf("error %v", err)
	}
	if s.Acked() != 0 {
		t.Fatalf("Acked() = %d after a bogus ack", s.Acked())
	}
}

// TestBadMessagesFromPrimary: whatever malformed message the primary
// sends, the backup keeps what it had, names the problem, and stops.
func TestBadMessagesFromPrimary(t *testing.T) {
	es := testEntries(30)
	tests := []struct {
		name string
		bad  func(t *testing.T, log [][]byte) []byte // what to send after the good part
		want []string
		is   error
	}{
		{
			name: "unknown message type",
			bad:  func(*testing.T, [][]byte) []byte { return appendControl(nil, 'Q', []byte("hello")) },
			want: []string{"unexpected type 0x51 'Q' message"},
			is:   ErrProtocol,
		},
		{
			name: "an ack from the primary",
			bad:  func(*testing.T, [][]byte) []byte { return appendAck(nil, 3, 0) },
			want: []string{"unexpected ack message"},
			is:   ErrProtocol,
		},
		{
			name: "oversized length",
			bad:  func(*testing.T, [][]byte) []byte { return appendHeader(nil, msgLog, MaxMessageLen+1) },
			want: []string{"log message of 17825793 bytes, over the limit of 17825792"},
			is:   ErrProtocol,
		},
		{
			name: "heartbeat with a bad checksum",
			bad: func(*testing.T, [][]byte) []byte {
				b := appendStamp(nil, msgHeartbeat, 12345)
				b[6] ^= 1
				return b
			},
			want: []string{"heartbeat message checksum mismatch"},
			is:   ErrProtocol,
		},
		{
			name: "heartbeat of the wrong size",
			bad:  func(*testing.T, [][]byte) []byte { return appendControl(nil, msgHeartbeat, make([]byte, 100)) },
			want: []string{"heartbeat message of 104 bytes, expected 12"},
			is:   ErrProtocol,
		},
		{
			name: "a frame repeated",
			bad: func(t *testing.T, log [][]byte) []byte {
				return append(appendHeader(nil, msgLog, len(log[2])), log[2]...)
			},
			want: []string{"a frame is missing or repeated"},
			is:   replay.ErrCorrupt,
		},
	}
	for _, tt := range tests {
		t.Run(strings.ReplaceAll(tt.name, " ", "_"), func(t *testing.T) {
			p, r := rawPrimary(t, fastConfig())
			log := encodeLog(t, es, 10) // header+frame, frame, frame
			for _, chunk := range log {
				p.sendLog(t, chunk)
			}
			if _, err := p.conn.Write(tt.bad(t, log)); err != nil {
				t.Fatal(err)
			}
			got, err := drain(t, r, 5*time.Second)
			t.Logf("%d entries, then %v", len(got), err)
			if len(got) != len(es) {
				t.Fatalf("backup kept %d of the %d good entries", len(got), len(es))
			}
			samePrefix(t, got, es)
			if !errors.Is(err, ErrPeerLost) || !errors.Is(err, tt.is) {
				t.Fatalf("error %v, want ErrPeerLost and %v", err, tt.is)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not say %q", err, w)
				}
			}
		})
	}
}

// TestAcksOnReceipt: the backup acknowledges entries it has received even
// though nobody replays them, and acknowledges nothing of a frame it has
// only partly received.
func TestAcksOnReceipt(t *testing.T) {
	p, r := rawPrimary(t, fastConfig())
	es := testEntries(25)
	log := encodeLog(t, es, 10) // entries 1-10, 11-20, 21-25
	p.sendLog(t, log[0])
	p.sendLog(t, log[1])
	ackOf := func() uint64 {
		t.Helper()
		p.conn.SetReadDeadline(time.Now().Add(5 * time.Second))
		for {
			typ, size, err := p.mr.readHeader(msgAck, msgHeartbeat, msgEcho)
			if err != nil {
				t.Fatalf("waiting for an ack: %v", err)
			}
			f, err := p.mr.readControl(typ, size, ackLen, false)
			if err != nil {
				t.Fatal(err)
			}
			if typ == msgAck {
				return leUint64(f)
			}
		}
	}
	for seq := ackOf(); seq != 20; seq = ackOf() {
		if seq > 20 || seq != 10 {
			t.Fatalf("ack %d, want 10 then 20", seq)
		}
	}
	// Half of the last frame: no ack for any of it.
	last := log[2]
	if _, err := p.conn.Write(append(appendHeader(nil, msgLog, len(last)), last[:len(last)/2]...)); err != nil {
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond)
	if st := r.Stats(); st.AckedSeq != 20 || st.Entries != 20 {
		t.Fatalf("after half a frame: acked %d, received %d", st.AckedSeq, st.Entries)
	}
	if _, err := p.conn.Write(last[len(last)/2:]); err != nil {
		t.Fatal(err)
	}
	if seq := ackOf(); seq != 25 {
		t.Fatalf("ack %d after the whole frame, want 25", seq)
	}
	if st := r.Stats(); st.QueuedEntries != 25 {
		t.Fatalf("%d entries queued, want 25 (none replayed)", st.QueuedEntries)
	}
}
