package ft

import (
	"fmt"
	"os"
	"os/signal"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
)

// Failpoints let a fault campaign make a process fail in ways no signal
// from outside can: FTVM_FAILPOINTS names the ones armed, comma-separated.
//
//	replay-stall  SIGUSR2 stops the backup's replay where it is (its
//	              channel, acknowledgements and heartbeats go on, as in a
//	              backup whose vCPU is starved or wedged); the next
//	              SIGUSR2 lets it go on.
//
// Nothing is armed unless the variable names it; an unknown name is an
// error, so a typo never leaves a campaign testing nothing.
const FailpointsEnv = "FTVM_FAILPOINTS"

var replayStall stallPoint

// ArmFailpoints arms the failpoints that spec names.
func ArmFailpoints(spec string) error {
	for _, name := range strings.Split(spec, ",") {
		switch strings.TrimSpace(name) {
		case "":
		case "replay-stall":
			replayStall.arm(syscall.SIGUSR2)
		default:
			return fmt.Errorf("%s: no failpoint %q (there is: replay-stall)", FailpointsEnv, name)
		}
	}
	return nil
}

// stallPoint blocks whoever passes it while stalled; a signal toggles it.
type stallPoint struct {
	armed   atomic.Bool
	mu      sync.Mutex
	stalled bool
	resume  chan struct{}
}

func (s *stallPoint) arm(sig os.Signal) {
	if s.armed.Swap(true) {
		return
	}
	ch := make(chan os.Signal, 1)
	signal.Notify(ch, sig)
	go func() {
		for range ch {
			s.toggle()
		}
	}()
}

func (s *stallPoint) toggle() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stalled {
		close(s.resume)
	} else {
		s.resume = make(chan struct{})
	}
	s.stalled = !s.stalled
}

// pass returns at once unless the point is stalled; then it waits until
// it is not, or done is closed.
func (s *stallPoint) pass(done <-chan struct{}) {
	if !s.armed.Load() {
		return
	}
	s.mu.Lock()
	stalled, resume := s.stalled, s.resume
	s.mu.Unlock()
	if stalled {
		select {
		case <-resume:
		case <-done:
		}
	}
}
