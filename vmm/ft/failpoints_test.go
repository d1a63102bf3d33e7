package ft

import (
	"strings"
	"testing"
	"time"
)

func TestArmFailpointsRefusesUnknownNames(t *testing.T) {
	err := ArmFailpoints("replay-stal")
	if err == nil || !strings.Contains(err.Error(), `no failpoint "replay-stal"`) {
		t.Fatalf("ArmFailpoints(typo) = %v", err)
	}
	if err := ArmFailpoints(""); err != nil {
		t.Fatal(err)
	}
}

// TestStallPoint: an armed point blocks while stalled, lets go when
// toggled back, and gives up when done closes; unarmed, it never blocks.
func TestStallPoint(t *testing.T) {
	var s stallPoint
	s.toggle()
	s.pass(nil) // not armed: returns although stalled
	s.armed.Store(true)
	passed := make(chan struct{})
	go func() { s.pass(nil); close(passed) }()
	select {
	case <-passed:
		t.Fatal("passed a stalled point")
	case <-time.After(50 * time.Millisecond): // a negative check: nothing to wait for but time
	}
	s.toggle()
	<-passed
	s.toggle()
	done := make(chan struct{})
	close(done)
	s.pass(done)
}
