package logchannel

import (
	"errors"
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ftvm/ftvm/replay"
)

const (
	flowEntrySize = 64 << 10
	flowTotal     = 200 << 20 // what the primary tries to log
)

// heapWatch samples the heap while a test runs.
type heapWatch struct {
	base uint64
	peak atomic.Uint64
	stop chan struct{}
	done chan struct{}
}

func watchHeap() *heapWatch {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	h := &heapWatch{base: m.HeapAlloc, stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(h.done)
		for {
			select {
			case <-h.stop:
				return
			case <-time.After(10 * time.Millisecond):
			}
			runtime.ReadMemStats(&m)
			if m.HeapAlloc > h.peak.Load() {
				h.peak.Store(m.HeapAlloc)
			}
		}
	}()
	return h
}

// live returns the heap growth after a GC, and the peak growth seen
// (garbage included).
func (h *heapWatch) finish() (live, peak int64) {
	close(h.stop)
	<-h.done
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return int64(m.HeapAlloc) - int64(h.base), int64(h.peak.Load()) - int64(h.base)
}

// appendForever appends flowTotal bytes of disk-read entries in a
// goroutine, counting the entries appended; the error of the first failed
// call (or nil after them all) goes on the returned channel.
func appendForever(s *Sender, count *atomic.Int64) <-chan error {
	done := make(chan error, 1)
	data := make([]byte, flowEntrySize)
	go func() {
		for i := uint64(1); i <= flowTotal/flowEntrySize; i++ {
			e := replay.Entry{Seq: i, Kind: replay.KindDiskRead, Exit: i, RIP: 0x100000, Data: data}
			if err := s.Append(e); err != nil {
				done <- err
				return
			}
			count.Add(1)
		}
		done <- s.Flush()
	}()
	return done
}

// waitStuck waits until count stops moving for a while and returns it.
func waitStuck(t *testing.T, count *atomic.Int64, done <-chan error) int64 {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	prev := int64(-1)
	for time.Now().Before(deadline) {
		select {
		case err := <-done:
			t.Fatalf("the primary appended all %d MiB (%d entries) instead of blocking: %v", flowTotal>>20, count.Load(), err)
		case <-time.After(300 * time.Millisecond):
		}
		if n := count.Load(); n == prev && n > 0 {
			return n
		} else {
			prev = n
		}
	}
	t.Fatal("Append never settled")
	return 0
}

// TestStalledBackupBlocksPrimary: a backup whose replay stops (Next is not
// called) fills its bounded queue and stops reading; the primary blocks
// on flow control instead of buffering, the backup does not mistake the
// silence it causes itself for a lost primary, replay resumes the flow,
// and Close frees a blocked Append. (A stall longer than the primary's
// failover timeout is a lost backup: TestHungBackupIsLost.)
func TestStalledBackupBlocksPrimary(t *testing.T) {
	sc, rc := fastConfig(), fastConfig()
	sc.MaxUnacked = 2 << 20
	rc.MaxQueued = 1 << 20
	sc.FailoverTimeout, rc.FailoverTimeout = 30*time.Second, 400*time.Millisecond
	s, r := pair(t, sc, rc)

	heap := watchHeap()
	var count atomic.Int64
	done := appendForever(s, &count)
	stuck := waitStuck(t, &count, done)
	// Stalled for several of the backup's failover timeouts: it keeps
	// sending heartbeats and does not count its own read pause as silence.
	time.Sleep(3 * rc.FailoverTimeout)
	if n := count.Load(); n != stuck {
		t.Fatalf("appended %d more entries while the backup was stalled", n-stuck)
	}
	if s.Err() != nil || r.Err() != nil {
		t.Fatalf("the stall was taken for a failure: sender %v, receiver %v", s.Err(), r.Err())
	}
	live, peak := heap.finish()
	ss, rs := s.Stats(), r.Stats()
	t.Logf("stuck after %d entries (%d MiB of %d MiB); heap growth %d KiB live, %d KiB peak", stuck, stuck*flowEntrySize>>20, flowTotal>>20, live>>10, peak>>10)
	t.Logf("sender: unacked %d KiB, blocked %d times (%v); receiver: queue %d KiB, paused %d times (%v)",
		ss.Unacked>>10, ss.FlowBlocked, ss.FlowBlockedTime, rs.QueuedBytes>>10, rs.ReadPaused, rs.ReadPausedTime)
	if stuck*flowEntrySize > 32<<20 {
		t.Fatalf("the primary got %d MiB out before blocking", stuck*flowEntrySize>>20)
	}
	if live > 16<<20 || peak > 64<<20 {
		t.Fatalf("heap grew by %d MiB (peak %d MiB) while blocked", live>>20, peak>>20)
	}
	if rs.QueuedBytes > 2*int64(rc.MaxQueued) || rs.ReadPaused == 0 {
		t.Fatalf("receiver queue %d bytes, paused %d times", rs.QueuedBytes, rs.ReadPaused)
	}
	if ss.Unacked > int64(sc.MaxUnacked) || ss.FlowBlocked == 0 {
		t.Fatalf("sender: %d bytes unacked, blocked %d times", ss.Unacked, ss.FlowBlocked)
	}

	// Replay resumes: the primary moves on.
	for i := 0; i < 200; i++ {
		if _, err := r.Next(); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, 5*time.Second, "the primary to move on", func() bool { return count.Load() > stuck+100 })

	// Stalled again, then Close ends the blocked Append.
	waitStuck(t, &count, done)
	s.Close()
	select {
	case err := <-done:
		if !errors.Is(err, ErrClosed) {
			t.Fatalf("blocked Append after Close: %v", err)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("Close did not free the blocked Append")
	}
}

// TestBackupThatNeverReads: a peer that completes the handshake and then
// neither reads nor says anything: TCP fills up and Append blocks (the
// failover timeout is long here, to see flow control alone), memory stays
// bounded, and Close frees the Append.
func TestBackupThatNeverReads(t *testing.T) {
	addr, peers := rawBackup(t)
	cfg := fastConfig()
	cfg.MaxUnacked = 4 << 20
	cfg.FailoverTimeout = time.Minute
	s, err := Dial(testContext(t, 5*time.Second), addr, testHello, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	<-peers

	heap := watchHeap()
	var count atomic.Int64
	done := appendForever(s, &count)
	stuck := waitStuck(t, &count, done)
	live, peak := heap.finish()
	t.Logf("stuck after %d entries (%d MiB); heap growth %d KiB live, %d KiB peak; %+v", stuck, stuck*flowEntrySize>>20, live>>10, peak>>10, s.Stats())
	if stuck*flowEntrySize > 32<<20 {
		t.Fatalf("the primary got %d MiB out to a peer that reads nothing", stuck*flowEntrySize>>20)
	}
	if live > 16<<20 || peak > 64<<20 {
		t.Fatalf("heap grew by %d MiB (peak %d MiB) while blocked", live>>20, peak>>20)
	}
	start := time.Now()
	s.Close()
	select {
	case err := <-done:
		if !errors.Is(err, ErrClosed) {
			t.Fatalf("blocked Append after Close: %v", err)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("Close did not free the blocked Append")
	}
	t.Logf("Close freed Append in %v", time.Since(start))
}

// TestSilentBackupIsLost: the same peer with the normal failover timeout:
// Append blocks, then fails when the silence turns into peer loss.
func TestSilentBackupIsLost(t *testing.T) {
	addr, peers := rawBackup(t)
	cfg := fastConfig()
	cfg.MaxUnacked = 1 << 20
	cfg.FailoverTimeout = 300 * time.Millisecond
	s, err := Dial(testContext(t, 5*time.Second), addr, testHello, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	<-peers
	var count atomic.Int64
	done := appendForever(s, &count)
	select {
	case err := <-done:
		if !errors.Is(err, ErrPeerLost) {
			t.Fatalf("Append: %v", err)
		}
		t.Logf("Append failed after %d entries: %v", count.Load(), err)
	case <-time.After(5 * time.Second):
		t.Fatal("Append blocked past the failover timeout")
	}
	start := time.Now()
	if err := s.Append(replay.Entry{Seq: 1 << 30, Kind: replay.KindTSC, Exit: 1 << 30, Value: 1}); !errors.Is(err, ErrPeerLost) {
		t.Fatalf("Append after the loss: %v", err)
	}
	if err := s.Flush(); !errors.Is(err, ErrPeerLost) {
		t.Fatalf("Flush after the loss: %v", err)
	}
	if d := time.Since(start); d > 100*time.Millisecond {
		t.Fatalf("calls after the loss took %v", d)
	}
}

// TestQueueBoundWithinAFrame: one frame of 200,000 one-byte entries is
// 200 KB on the wire and some 80 MB as entries. The Receiver does not
// decode it all into memory: it stops at twice MaxQueued until Next makes
// room, and acknowledges the frame only once all of it is queued.
func TestQueueBoundWithinAFrame(t *testing.T) {
	rc := fastConfig()
	rc.MaxQueued = 1 << 20
	p, r := rawPrimary(t, rc)
	const n = 200000
	var w chunkWriter
	enc := replay.NewEncoderSize(&w, replay.MaxFrameLen/2)
	for i := uint64(1); i <= n; i++ {
		if err := enc.Append(replay.Entry{Seq: i, Kind: replay.KindTSC, Exit: i, RIP: 0x1000, Value: i * 1000}); err != nil {
			t.Fatal(err)
		}
	}
	if err := enc.Flush(); err != nil || len(w.chunks) != 1 {
		t.Fatalf("encoding: %v, %d chunks", err, len(w.chunks))
	}
	t.Logf("one frame of %d entries, %d bytes", n, len(w.chunks[0]))
	p.sendLog(t, w.chunks[0])

	waitFor(t, 5*time.Second, "the receiver to stop for room", func() bool { return r.Stats().ReadPaused > 0 })
	time.Sleep(50 * time.Millisecond)
	st := r.Stats()
	t.Logf("paused with %d entries (%d KiB) queued", st.QueuedEntries, st.QueuedBytes>>10)
	if st.QueuedBytes > 2*int64(rc.MaxQueued) || st.Entries >= n {
		t.Fatalf("queued %d bytes (%d entries) of a %d-byte bound", st.QueuedBytes, st.Entries, 2*rc.MaxQueued)
	}
	if st.AckedSeq != 0 {
		t.Fatalf("acknowledged seq %d of a frame not yet queued whole", st.AckedSeq)
	}
	for i := uint64(1); i <= n; i++ {
		e, err := r.Next()
		if err != nil || e.Seq != i || e.Value != i*1000 {
			t.Fatalf("entry %d: %v, %v", i, e, err)
		}
	}
	waitFor(t, 5*time.Second, "the ack of the whole frame", func() bool { return r.Stats().AckedSeq == n })
}

// TestCloseUnblocks: the backup's Close ends a blocked Next at once, and
// the primary, waiting for an ack, sees its backup lost.
func TestCloseUnblocks(t *testing.T) {
	s, r := pair(t, fastConfig(), fastConfig())
	nextErr := make(chan error, 1)
	go func() {
		_, err := r.Next()
		nextErr <- err
	}()
	ackErr := make(chan error, 1)
	go func() { ackErr <- s.WaitAcked(testContext(t, 10*time.Second), 1) }()
	time.Sleep(50 * time.Millisecond)
	r.Close()
	for _, c := range []struct {
		name string
		ch   chan error
		want error
	}{{"Next", nextErr, ErrClosed}, {"WaitAcked", ackErr, ErrPeerLost}} {
		select {
		case err := <-c.ch:
			if !errors.Is(err, c.want) {
				t.Errorf("%s after the backup's Close: %v, want %v", c.name, err, c.want)
			}
		case <-time.After(2 * time.Second):
			t.Errorf("%s still blocked after the backup's Close", c.name)
		}
	}
}
