package logchannel

import (
	"strings"
	"testing"
	"time"
)

// TestHungBackupIsLost: a backup whose replay hangs (Next is never called)
// stops acking once its queue is full, while its heartbeats keep coming.
// The primary must declare it lost after the failover timeout, as it does
// a silent one; it used to wait forever with its outputs held.
func TestHungBackupIsLost(t *testing.T) {
	rc := fastConfig()
	rc.MaxQueued = 64 << 10
	s, r := pair(t, fastConfig(), rc)
	defer r.Close()
	defer s.Close()
	go func() {
		for _, e := range bigEntries(4096, 4096) { // 16 MiB: far more than the queue and TCP hold
			if s.Append(e) != nil {
				return
			}
		}
		s.Flush()
	}()
	lostAfter := waitClosed(t, s.PeerLost(), 30*time.Second, "the primary declaring its hung backup lost")
	if err := s.Err(); err == nil || !strings.Contains(err.Error(), "acknowledged nothing and replayed nothing") {
		t.Fatalf("lost with %v; want the stalled-ack reason", err)
	}
	if hb := s.Stats().HeartbeatsReceived; hb == 0 {
		t.Fatal("no heartbeat arrived from the backup: the test did not show a backup that is alive")
	}
	t.Logf("lost %v after the log started; failover timeout %v: %v", lostAfter, rc.FailoverTimeout, s.Err())
}
