package logchannel

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/ftvm/ftvm/replay"
)

// TestCleanSession: thousands of entries of every kind go through in
// order, every one is acknowledged, and both sides close cleanly.
func TestCleanSession(t *testing.T) {
	s, r := pair(t, fastConfig(), fastConfig())
	want := testEntries(20000)

	// The output releaser's view: the acks, as Acks delivers them.
	var lastAck uint64
	acksDone := make(chan struct{})
	go func() {
		defer close(acksDone)
		for lastAck < uint64(len(want)) {
			select {
			case seq := <-s.Acks():
				if seq <= lastAck {
					t.Errorf("Acks went from %d to %d", lastAck, seq)
				}
				lastAck = seq
			case <-time.After(10 * time.Second):
				t.Errorf("no ack after %d", lastAck)
				return
			}
		}
	}()

	got := make(chan []replay.Entry, 1)
	go func() {
		var es []replay.Entry
		for len(es) < len(want) {
			e, err := r.Next()
			if err != nil {
				t.Errorf("Next after %d entries: %v", len(es), err)
				break
			}
			es = append(es, e)
			if e.Exit != 0 {
				r.ReportReplayed(e.Exit)
			}
		}
		got <- es
	}()

	for i, e := range want {
		if err := s.Append(e); err != nil {
			t.Fatalf("append %d: %v", i, err)
		}
		// An output's entry is flushed at once, as the recorder's caller
		// does, to start its ack without waiting for the flusher.
		if e.Kind == replay.KindOutput && i%64 == 1 {
			if err := s.Flush(); err != nil {
				t.Fatal(err)
			}
		}
	}
	// No final Flush: the flusher must send the last frame by itself.
	if err := s.WaitAcked(testContext(t, 10*time.Second), uint64(len(want))); err != nil {
		t.Fatal(err)
	}
	<-acksDone
	es := <-got
	if len(es) != len(want) {
		t.Fatalf("received %d entries, sent %d", len(es), len(want))
	}
	samePrefix(t, es, want)
	if s.Acked() != uint64(len(want)) {
		t.Fatalf("Acked() = %d, want %d", s.Acked(), len(want))
	}

	waitFor(t, 5*time.Second, "the replay progress to reach the primary", func() bool { return s.Lag() == (Lag{}) })
	ss, rs := s.Stats(), r.Stats()
	t.Logf("sender: %+v", ss)
	t.Logf("receiver: %+v", rs)
	if ss.Entries != uint64(len(want)) || rs.Entries != uint64(len(want)) || ss.LastSeq != rs.LastSeq {
		t.Errorf("entries: sent %d (last %d), received %d (last %d)", ss.Entries, ss.LastSeq, rs.Entries, rs.LastSeq)
	}
	if ss.Frames == 0 || ss.Frames != rs.Frames || ss.LogBytes != rs.LogBytes {
		t.Errorf("frames/bytes: sent %d/%d, received %d/%d", ss.Frames, ss.LogBytes, rs.Frames, rs.LogBytes)
	}
	if ss.AckedSeq != uint64(len(want)) || rs.AckedSeq != uint64(len(want)) || ss.Acks == 0 || rs.Acks < ss.Acks {
		t.Errorf("acks: sender saw %d up to %d, receiver sent %d up to %d", ss.Acks, ss.AckedSeq, rs.Acks, rs.AckedSeq)
	}
	if ss.Unacked != 0 || rs.QueuedEntries != 0 || rs.QueuedBytes != 0 {
		t.Errorf("left over: %d bytes unacked, %d entries (%d bytes) queued", ss.Unacked, rs.QueuedEntries, rs.QueuedBytes)
	}
	if ss.ReplayedExit != want[len(want)-1].Exit {
		t.Errorf("sender saw the replay at exit %d, want %d", ss.ReplayedExit, want[len(want)-1].Exit)
	}

	// The primary ends the session; the backup sees its primary gone
	// after the last entry.
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Append(replay.Entry{Seq: uint64(len(want) + 1), Kind: replay.KindTSC, Exit: 1 << 40, Value: 1}); !errors.Is(err, ErrClosed) {
		t.Fatalf("Append after Close: %v, want ErrClosed", err)
	}
	select {
	case <-s.PeerLost():
		t.Fatal("Close closed PeerLost")
	default:
	}
	// (A FIN or, if acks were in flight when the primary closed, a RST.)
	_, err := r.Next()
	if !errors.Is(err, ErrPeerLost) {
		t.Fatalf("Next after the primary closed: %v", err)
	}
	r.Close()
	if _, err := r.Next(); !errors.Is(err, ErrClosed) {
		t.Fatalf("Next after Close: %v, want ErrClosed", err)
	}
}

// TestInvalidEntryRefused: the encoder's checks reach the caller and the
// Sender carries on.
func TestInvalidEntryRefused(t *testing.T) {
	s, r := pair(t, fastConfig(), fastConfig())
	es := testEntries(10)
	for _, e := range es[:5] {
		if err := s.Append(e); err != nil {
			t.Fatal(err)
		}
	}
	gap := es[6] // seq 7 after seq 5
	if err := s.Append(gap); !errors.Is(err, replay.ErrInvalidEntry) || !strings.HasPrefix(err.Error(), "logchannel: ") {
		t.Fatalf("append with a seq gap: %v", err)
	}
	for _, e := range es[5:] {
		if err := s.Append(e); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Flush(); err != nil {
		t.Fatal(err)
	}
	var got []replay.Entry
	for range es {
		e, err := r.Next()
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, e)
	}
	samePrefix(t, got, es)
}

// TestIdleSessionStaysAlive: with nothing to log, heartbeats keep both
// sides from declaring the other lost, for many failover timeouts, and
// measure the round trip.
func TestIdleSessionStaysAlive(t *testing.T) {
	cfg := withTLS(Config{HeartbeatInterval: 10 * time.Millisecond, FailoverTimeout: 250 * time.Millisecond})
	s, r := pair(t, cfg, cfg)
	time.Sleep(4 * cfg.FailoverTimeout)
	if err := s.Err(); err != nil {
		t.Fatalf("sender: %v", err)
	}
	if err := r.Err(); err != nil {
		t.Fatalf("receiver: %v", err)
	}
	ss, rs := s.Stats(), r.Stats()
	t.Logf("sender: %d heartbeats sent, %d received, rtt %v (avg %v over %d)", ss.HeartbeatsSent, ss.HeartbeatsReceived, ss.RTT, ss.RTTAvg, ss.RTTSamples)
	t.Logf("receiver: %d heartbeats sent, %d received, rtt %v (avg %v over %d)", rs.HeartbeatsSent, rs.HeartbeatsReceived, rs.RTT, rs.RTTAvg, rs.RTTSamples)
	if ss.HeartbeatsSent == 0 || rs.HeartbeatsSent == 0 || ss.RTTSamples == 0 || rs.RTTSamples == 0 {
		t.Fatal("no heartbeats or no round trips measured")
	}
	if ss.RTT <= 0 || ss.RTT > time.Second {
		t.Fatalf("heartbeat rtt %v", ss.RTT)
	}
	// And the session still works.
	e := testEntries(1)[0]
	if err := s.Append(e); err != nil {
		t.Fatal(err)
	}
	got, err := r.Next()
	if err != nil || !got.Equal(&e) {
		t.Fatalf("after idling: %v, %v", got, err)
	}
}

// TestLag: the backup reports replay progress; Lag follows it and WaitLag
// holds the primary while the backup is too far behind.
func TestLag(t *testing.T) {
	s, r := pair(t, fastConfig(), fastConfig())
	es := testEntries(1001) // exits 1..1000
	go func() {
		// Receive everything but replay nothing yet.
		for range es {
			if _, err := r.Next(); err != nil {
				return
			}
		}
	}()
	half := 501 // the entries up to exit 500
	for _, e := range es[:half] {
		if err := s.Append(e); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Flush(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond)
	secondBatch := time.Now()
	for _, e := range es[half:] {
		if err := s.Append(e); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Flush(); err != nil {
		t.Fatal(err)
	}

	lag := s.Lag()
	t.Logf("nothing replayed: %+v", lag)
	if lag.Exits != 1000 || lag.Time < 300*time.Millisecond || lag.Time > 5*time.Second {
		t.Fatalf("lag with nothing replayed: %+v, want 1000 exits and about 300ms or more", lag)
	}

	waited := make(chan error, 1)
	go func() { waited <- s.WaitLag(testContext(t, 10*time.Second), 100*time.Millisecond) }()
	select {
	case err := <-waited:
		t.Fatalf("WaitLag returned while the backup lags %v: %v", s.Lag().Time, err)
	case <-time.After(100 * time.Millisecond):
	}

	// Halfway: the primary left exit 250 before the pause.
	r.ReportReplayed(250)
	waitFor(t, 5*time.Second, "the report of exit 250", func() bool { return s.Stats().ReplayedExit == 250 })
	if lag := s.Lag(); lag.Exits != 750 || lag.Time < 300*time.Millisecond {
		t.Fatalf("lag at exit 250: %+v, want 750 exits and 300ms or more", lag)
	}
	// At exit 500 the backup is behind by the second batch only, which
	// was sent moments ago.
	r.ReportReplayed(500)
	waitFor(t, 5*time.Second, "the report of exit 500", func() bool { return s.Stats().ReplayedExit == 500 })
	if lag := s.Lag(); lag.Exits != 500 || lag.Time > time.Since(secondBatch) {
		t.Fatalf("lag at exit 500: %+v, the second batch went %v ago", lag, time.Since(secondBatch))
	}
	select {
	case err := <-waited:
		// Allowed: the lag may already be under 100ms.
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(200 * time.Millisecond):
		// Now the second batch is over 100ms old: still waiting.
		r.ReportReplayed(1000)
		select {
		case err := <-waited:
			if err != nil {
				t.Fatal(err)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("WaitLag did not return when the backup caught up")
		}
	}
	r.ReportReplayed(1000)
	waitFor(t, 5*time.Second, "the lag to vanish", func() bool { return s.Lag() == (Lag{}) })
	if err := s.WaitLag(testContext(t, time.Second), 0); err != nil {
		t.Fatalf("WaitLag when caught up: %v", err)
	}
	if st := s.Stats(); st.LagWaits != 1 || st.LagWaitTime < 100*time.Millisecond {
		t.Fatalf("lag waits %d, %v", st.LagWaits, st.LagWaitTime)
	}

	// WaitLag gives up with its context, and ends with the Sender.
	ctx := testContext(t, 50*time.Millisecond)
	next := testEntries(1002)[1001]
	if err := s.Append(next); err != nil {
		t.Fatal(err)
	}
	s.Flush()
	time.Sleep(20 * time.Millisecond)
	if err := s.WaitLag(ctx, time.Millisecond); err == nil {
		t.Fatal("WaitLag with a lagging backup and an expiring context returned nil")
	}
	go func() {
		time.Sleep(20 * time.Millisecond)
		s.Close()
	}()
	if err := s.WaitLag(testContext(t, 5*time.Second), time.Millisecond); !errors.Is(err, ErrClosed) {
		t.Fatalf("WaitLag across Close: %v", err)
	}
}

// TestBackupThatStopsReplayingIsLost: a backup whose receiver acks every
// entry and sends heartbeats but whose replay reports nothing holds the
// primary in WaitLag; after the failover timeout it is lost, not waited
// for forever.
func TestBackupThatStopsReplayingIsLost(t *testing.T) {
	cfg := fastConfig()
	cfg.FailoverTimeout = 300 * time.Millisecond
	s, r := pair(t, cfg, cfg)
	es := testEntries(101)
	go func() {
		for range es {
			if _, err := r.Next(); err != nil {
				return
			}
		}
	}()
	for _, e := range es {
		if err := s.Append(e); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Flush(); err != nil {
		t.Fatal(err)
	}
	r.ReportReplayed(10) // it replayed a little, then stopped
	waitFor(t, 5*time.Second, "the report of exit 10", func() bool { return s.Stats().ReplayedExit == 10 && s.Lag().Time > time.Millisecond })
	began := time.Now()
	err := s.WaitLag(testContext(t, 10*time.Second), time.Millisecond)
	if !errors.Is(err, ErrPeerLost) || !strings.Contains(err.Error(), "replayed nothing") {
		t.Fatalf("WaitLag on a backup that stopped replaying: %v", err)
	}
	if waited := time.Since(began); waited < cfg.FailoverTimeout {
		t.Fatalf("lost after %v, before the failover timeout %v", waited, cfg.FailoverTimeout)
	}
	if st := s.Stats(); st.AckedSeq != uint64(len(es)) {
		t.Fatalf("acked seq %d of %d: the test meant a backup that acks everything", st.AckedSeq, len(es))
	}
	t.Logf("%v", err)
}

// TestMayRelease: right after an ack outputs may leave; once the newest
// acknowledged frame is older than the failover timeout (less its margin)
// they may not, and the backup is lost so that the arbiter decides.
func TestMayRelease(t *testing.T) {
	cfg := fastConfig()
	cfg.FailoverTimeout = 400 * time.Millisecond
	s, r := pair(t, cfg, cfg)
	go func() {
		for {
			if _, err := r.Next(); err != nil {
				return
			}
		}
	}()
	es := testEntries(2)
	if err := s.Append(es[0]); err != nil {
		t.Fatal(err)
	}
	if err := s.Flush(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "the ack", func() bool { return s.Acked() == 1 })
	sentBy := time.Now()
	if err := s.MayRelease(); err != nil && time.Since(sentBy) < cfg.FailoverTimeout/2 {
		t.Fatalf("just after the ack: %v", err)
	}
	// Heartbeats go on both ways, but no frame is acked: the lease runs out.
	waitFor(t, 5*time.Second, "the lease to run out", func() bool { return s.MayRelease() != nil })
	if since := time.Since(sentBy); since < cfg.FailoverTimeout*7/8-50*time.Millisecond {
		t.Fatalf("the lease ran out %v after the ack", since)
	}
	select {
	case <-s.PeerLost():
	case <-time.After(5 * time.Second):
		t.Fatal("a run-out lease did not lose the backup")
	}
	if err := s.Err(); !errors.Is(err, ErrPeerLost) || !strings.Contains(err.Error(), "may have gone live") {
		t.Fatalf("Err = %v", err)
	}
}

func TestLagRing(t *testing.T) {
	r := lagRing{buf: make([]lagSample, 4)}
	ms := time.Millisecond
	r.add(10, 0)
	r.add(20, ms/2) // merged into the first: exit 20 credited to time 0
	r.add(20, 5*ms) // no progress: ignored
	r.add(30, 10*ms)
	r.add(40, 20*ms)
	r.add(50, 30*ms)
	r.add(60, 40*ms) // the ring is full: exit 20's sample goes
	if at, _ := r.oldest(); at != 10*ms || r.size != 4 {
		t.Fatalf("oldest %v, size %d", at, r.size)
	}
	r.prune(45)
	if at, _ := r.oldest(); at != 30*ms || r.size != 2 {
		t.Fatalf("after prune: oldest %v, size %d", at, r.size)
	}
	r.prune(60)
	if _, ok := r.oldest(); ok {
		t.Fatal("samples left after replaying past all")
	}
}
