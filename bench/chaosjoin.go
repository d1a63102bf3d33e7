package bench

import (
	"fmt"
	"math/rand/v2"
	"strings"
	"syscall"
	"time"
)

// Faults during a re-protection: after a failover a new backup joins the
// side that went live (from the dead primary's host, as a restarted host
// would), and the fault hits while it receives the guest's state.
const (
	FaultJoinKillJoiner   = "join-kill-joiner"   // kill -9 of the joining backup
	FaultJoinFreezeJoiner = "join-freeze-joiner" // SIGSTOP of it as long as a freeze
	FaultJoinPartition    = "join-partition"     // the logging link silent both ways as long (hosts only)
	// kill -9 of the live side: a double failure. If the new backup had
	// not yet joined, nothing can run the guest and it must not try; if it
	// had, it takes over.
	FaultJoinKillLive = "join-kill-live"
)

// The lines of a re-protection in the live side's and the joiner's logs.
const (
	lineJoins     = "primary: a backup joins from"
	lineProtected = "primary: PROTECTED again"
	lineJoined    = "backup: joined at log seq"
)

// chaosJoinMem is the guest memory of join trials, and chaosJoinFill the
// kvstore argument that fills part of it, so that the state transfer
// lasts long enough (tenths of a second) to be hit.
const (
	chaosJoinMem  = "256M"
	chaosJoinFill = "fill=128"
)

// protectedNow says whether the live side's log says it has a backup: it
// was protected again after it last lost one or turned one away.
func protectedNow(live *chaosSide) bool {
	text := live.log.String()
	last := strings.LastIndex(text, lineProtected)
	return last >= 0 && last > strings.LastIndex(text, "primary: lost the backup") && last > strings.LastIndex(text, "did not make it")
}

// waitCount waits until the side's log has n lines with want, or it ends,
// or d passes.
func (s *chaosSide) waitCount(d time.Duration, want string, n int) bool {
	for deadline := time.Now().Add(d); ; time.Sleep(10 * time.Millisecond) {
		if strings.Count(s.log.String(), want) >= n {
			return true
		}
		if s.ended() || time.Now().After(deadline) {
			return false
		}
	}
}

// chaosJoinFault runs a join fault on a pair that is up with clients
// running, and ends the trial with finish.
func chaosJoinFault(o ChaosOptions, tr *ChaosTrial, rng *rand.Rand, cn *chaosNet, env []string, common func(string) []string, guest []string,
	primary, backup *chaosSide, sides *[]*chaosSide, finish func(*chaosSide, []string, bool) error) error {
	// The failover the re-protection follows.
	primary.signal(syscall.SIGKILL)
	<-primary.done
	if backup.waitLine(time.Minute, lineLive) == "" {
		return fmt.Errorf("the backup did not go live when the primary was killed:\n%s", backup.log.String())
	}
	live := backup
	startJoiner := func(name string) (*chaosSide, error) {
		j := &chaosSide{name: name}
		args := append(append([]string{"backup", "--join", cn.backupJoin}, common("primary")...), guest...)
		if err := j.start(cn.command("primary", o.FTVM, args...), env); err != nil {
			return nil, err
		}
		*sides = append(*sides, j)
		return j, nil
	}
	joiner, err := startJoiner("joiner")
	if err != nil {
		return err
	}
	if !live.waitCount(time.Minute, lineJoins, 1) {
		return fmt.Errorf("no backup came to join the live side within a minute:\n%s\n%s", live.log.String(), joiner.log.String())
	}
	time.Sleep(time.Duration(rng.IntN(1000)) * time.Millisecond) // during the transfer mostly, after it sometimes
	tr.DuringTransfer = !strings.Contains(live.log.String(), lineProtected)
	freeze := chaosFreeze(o)
	switch tr.Fault {
	case FaultJoinKillLive:
		live.signal(syscall.SIGKILL)
		<-live.done
		// The joiner goes live if it had joined, and must not if not.
		for deadline := time.Now().Add(time.Minute); !joiner.ended() && !strings.Contains(joiner.log.String(), lineLive); time.Sleep(10 * time.Millisecond) {
			if time.Now().After(deadline) {
				return fmt.Errorf("the joiner neither went live nor stopped a minute after the live side died:\n%s", joiner.log.String())
			}
		}
		joined := strings.Contains(joiner.log.String(), lineJoined)
		wentLive := strings.Contains(joiner.log.String(), lineLive)
		switch {
		case wentLive && !joined:
			tr.SplitBrain = true
			return fmt.Errorf("the joiner went live without having joined (with part of the state):\n%s", joiner.log.String())
		case joined && !wentLive:
			return fmt.Errorf("the joiner had joined but did not take over when the live side died (status %d):\n%s", joiner.status(), joiner.log.String())
		case wentLive:
			tr.Live = joiner.name
			return finish(joiner, []string{"primary", "backup", "primary"}, false)
		}
		if joiner.status() == 0 {
			return fmt.Errorf("the joiner, which never joined, exited 0 when the live side died:\n%s", joiner.log.String())
		}
		tr.Live = "none (as it must: the new backup had not joined)"
		return finish(nil, []string{"primary", "backup"}, true)
	case FaultJoinKillJoiner:
		joiner.signal(syscall.SIGKILL)
	case FaultJoinFreezeJoiner:
		joiner.signal(syscall.SIGSTOP)
		time.Sleep(freeze)
		joiner.signal(syscall.SIGCONT)
	case FaultJoinPartition:
		if err := cn.partition(true, true); err != nil {
			return err
		}
		time.Sleep(freeze)
		cn.heal()
	}
	// Either the live side carries on through the fault, or (the joiner
	// had joined, and the fault cut them apart) the joiner won the arbiter
	// and the live side halted. The joiner either made it or ends without
	// ever going live; then another joins.
	time.Sleep(3 * o.FailoverTimeout)
	if live.ended() {
		if live.status() != chaosHalted || !strings.Contains(joiner.log.String(), lineLive) {
			return fmt.Errorf("the live side ended (status %d) after a fault of its joining backup, which did not take over:\n%s\n%s", live.status(), live.log.String(), joiner.log.String())
		}
		tr.Live = joiner.name
		return finish(joiner, []string{"primary", "backup", "primary"}, false)
	}
	// Still trying, or joined but dropped by the live side: wait for it to
	// give up (or halt), or for the pair to be whole.
	for deadline := time.Now().Add(time.Minute); !joiner.ended() && !(strings.Contains(joiner.log.String(), lineJoined) && protectedNow(live)); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			return fmt.Errorf("the joiner neither joined nor stopped a minute after the fault:\n%s\n%s", joiner.log.String(), live.log.String())
		}
	}
	if joiner.ended() {
		if strings.Contains(joiner.log.String(), lineLive) {
			tr.SplitBrain = true
			return fmt.Errorf("the faulted joiner went live while the live side ran on:\n%s", joiner.log.String())
		}
		next, err := startJoiner("second joiner")
		if err != nil {
			return err
		}
		joiner = next
	}
	for deadline := time.Now().Add(time.Minute); !(strings.Contains(joiner.log.String(), lineJoined) && protectedNow(live)); time.Sleep(10 * time.Millisecond) {
		if joiner.ended() || time.Now().After(deadline) {
			return fmt.Errorf("the %s did not join within a minute:\n%s\n%s", joiner.name, joiner.log.String(), live.log.String())
		}
	}
	// Protected again: the live side dies, and the new backup takes over.
	live.signal(syscall.SIGKILL)
	<-live.done
	if joiner.waitLine(time.Minute, lineLive) == "" {
		return fmt.Errorf("the %s did not go live when the live side was killed:\n%s", joiner.name, joiner.log.String())
	}
	tr.Live = joiner.name
	return finish(joiner, []string{"primary", "backup", "primary"}, false)
}
