package ft

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"os"
	"os/exec"
	"sync"
	"syscall"
	"time"
)

// Exit statuses of the ftvm processes a PairSupervisor watches, besides
// the guest's own (they are ftvm's: see README.md).
const (
	StatusDiverged = 123 // the backup's replay diverged
	StatusFailed   = 125 // ftvm failed
)

// PairSupervisor runs a primary and a backup as two processes on this
// machine (`ftvm primary` and `ftvm backup` of Exe), forwards console input
// to whichever side is live, and injects the failures a user asks for to
// watch a failover. With JoinerArgs it restores redundancy after every
// failover: once the backup went live it starts a new backup process that
// joins it (`ftvm backup --join`), and so on. It is what `ftvm pair` is,
// below the CLI.
type PairSupervisor struct {
	Exe string
	// PrimaryArgs and BackupArgs are each member's whole command line
	// after Exe (command, flags, guest and its arguments).
	PrimaryArgs, BackupArgs []string
	// JoinerArgs, if set, gives the command line of the n-th backup that
	// joins a live side (n from 2), which takes new backups at joinAddr;
	// joinListen is where the new backup itself will take them once it
	// goes live. replaces names the member that died, whose place it
	// takes ("primary", "backup", "backup-2", ...): its files are free.
	// PrimaryJoinListen and BackupJoinListen are the first two members'
	// (their --join-listen).
	JoinerArgs                          func(n int, joinAddr, replaces string) (args []string, joinListen string)
	PrimaryJoinListen, BackupJoinListen string
	Stdin                               io.Reader
	Stdout, Stderr                      io.Writer // Stdout: the released console output
	// KillPrimaryAfter, KillBackupAfter: kill -9 that member this long
	// after the pair is up (the primary has connected to its backup and
	// records); StopPrimaryAfter: SIGSTOP the primary (a hung host:
	// silence, no connection reset) as long after, then kill it 30 s
	// later, or as soon as the backup wins the arbiter (fencing, as after
	// any takeover). 0: never. Counting from the start instead would, on a slow
	// machine, kill a primary that never had a backup, which no backup
	// can take over from.
	KillPrimaryAfter, KillBackupAfter, StopPrimaryAfter time.Duration
	// Failovers: with KillPrimaryAfter and JoinerArgs, kill the live side
	// this many times in all, each KillPrimaryAfter after it was protected
	// again (0: once).
	Failovers int
	// Signals, if not nil, are passed on to both members (Ctrl-C stops
	// both cleanly).
	Signals <-chan os.Signal
	// Logf reports what the supervisor does.
	Logf func(format string, args ...any)
	// Started, if set, is called with both members' pids once they run.
	Started func(primaryPid, backupPid int)
}

// Lines of a member's log the supervisor watches for.
const (
	linePaired    = "primary: connected to the backup"
	lineProtected = "primary: PROTECTED again"
	lineWentLive  = "backup: LIVE since"
	lineAlone     = "carrying on alone"
	// lineWonArbiter: a backup won the go-live test-and-set; the side it
	// took over from lost, and may be fenced.
	lineWonArbiter = "backup: won the arbiter"
)

// Run starts the backup, then the primary, and returns the pair's exit
// status: the guest's, from whichever side ran it to the end;
// StatusDiverged if the backup diverged; StatusFailed if a member could not
// start or both died.
func (s *PairSupervisor) Run() int {
	logf := s.Logf
	if logf == nil {
		logf = func(string, ...any) {}
	}
	out := &lockedWriter{w: s.Stdout}
	console := &consoleSwitch{}
	var members membersInPlay
	defer members.killAll()
	start := func(name string, args []string, joinListen string, feed bool) (*member, error) {
		m := pairMember(s.Exe, name, args, out)
		m.joinListen = joinListen
		m.up, m.live, m.won, m.alone = make(chan struct{}), make(chan struct{}), make(chan struct{}), make(chan struct{}, 1)
		var c *consoleSwitch
		if feed {
			c = console
		}
		up := closer(m.up)
		stderr := io.MultiWriter(s.Stderr, &lineWatch{want: linePaired, on: up}, &lineWatch{want: lineProtected, on: up},
			&lineWatch{want: lineWentLive, on: closer(m.live)}, &lineWatch{want: lineWonArbiter, on: closer(m.won)},
			&lineWatch{want: lineAlone, on: token(m.alone)})
		if err := m.start(c, stderr); err != nil {
			return nil, err
		}
		members.add(m)
		return m, nil
	}
	backup, err := start("backup", s.BackupArgs, s.BackupJoinListen, false)
	if err != nil {
		logf("starting the backup: %v", err)
		return StatusFailed
	}
	primary, err := start("primary", s.PrimaryArgs, s.PrimaryJoinListen, true)
	if err != nil {
		logf("starting the primary: %v", err)
		return StatusFailed
	}
	if s.Stdin != nil {
		go console.pump(s.Stdin)
	}
	if s.Started != nil {
		s.Started(primary.cmd.Process.Pid, backup.cmd.Process.Pid)
	}
	if s.Signals != nil {
		go func() {
			for sig := range s.Signals {
				logf("%v: stopping every member", sig)
				members.signal(sig)
				members.signal(syscall.SIGCONT) // a frozen primary must see it too
			}
		}()
	}
	// fence kills the side a backup takes over from once that backup has
	// won the arbiter (STONITH): it lost, and whatever it still holds on
	// this machine, a frozen primary its TAP device say, the backup needs
	// to go live. Dead or halted already, it is left alone.
	fence := func(old, backup *member) {
		go func() {
			select {
			case <-backup.won:
			case <-backup.done:
				return
			}
			select {
			case <-old.done:
			default:
				logf("the %s won the arbiter: fencing the %s (kill -9), which lost and may still hold the guest's network", backup.name, old.name)
				old.kill()
			}
		}()
	}
	fence(primary, backup)
	// after runs f d after live is up (protected), unless it ends first.
	after := func(live *member, d time.Duration, f func()) {
		if d <= 0 {
			return
		}
		go func() {
			select {
			case <-live.up:
			case <-live.done: // never up: nothing to fail over
				return
			}
			select {
			case <-time.After(d):
				f()
			case <-live.done:
			}
		}()
	}
	after(primary, s.StopPrimaryAfter, func() {
		logf("freezing the primary (SIGSTOP): the backup can only notice the silence")
		primary.signal(syscall.SIGSTOP)
		time.AfterFunc(30*time.Second, primary.kill)
	})
	after(primary, s.KillBackupAfter, func() {
		logf("killing the backup (kill -9)")
		backup.kill()
	})
	kills := max(s.Failovers, 1)
	live, standby := primary, backup
	next := 2 // the number of the next backup that joins
	for round := 1; ; round++ {
		if round <= kills {
			victim := live
			after(live, s.KillPrimaryAfter, func() {
				logf("killing the live side, the %s (kill -9), to show a failover", victim.name)
				victim.kill()
			})
		}
		// Wait for the live side to end; while it runs, a backup that dies
		// is replaced by one that joins it.
		standbyDone := standby.done
		for s.JoinerArgs != nil && standbyDone != nil {
			select {
			case <-live.done:
			case <-standbyDone:
				if st := standby.wait(); st >= 0 {
					standbyDone = nil // ended with the guest, or diverged: see below
					continue
				}
				logf("the %s died; the %s asks the arbiter, carries on alone, and a new backup joins it", standby.name, live.name)
				select {
				case <-live.alone:
				case <-live.done:
					standbyDone = nil
					continue
				}
				args, joinListen := s.JoinerArgs(next, live.joinListen, standby.name)
				logf("starting backup-%d to protect the %s again (it joins at %s)", next, live.name, live.joinListen)
				joiner, err := start(fmt.Sprintf("backup-%d", next), args, joinListen, false)
				if err != nil {
					logf("starting backup-%d: %v; the guest runs unprotected", next, err)
					return live.waitStatus(logf)
				}
				next++
				fence(live, joiner)
				standby, standbyDone = joiner, joiner.done
				continue
			}
			break
		}
		lstatus := live.wait()
		if lstatus >= 0 {
			sstatus := standby.wait()
			switch {
			case sstatus == StatusDiverged:
				logf("the %s's replay DIVERGED from the live side", standby.name)
				return StatusDiverged
			case sstatus < 0:
				logf("the %s died; the %s carried on", standby.name, live.name)
			}
			return lstatus
		}
		logf("the %s died; the %s takes over if the arbiter lets it; console input now goes to it", live.name, standby.name)
		console.switchTo(standby.stdin)
		if s.JoinerArgs == nil {
			return standby.waitStatus(logf)
		}
		select {
		case <-standby.live:
		case <-standby.done:
			return standby.waitStatus(logf)
		}
		args, joinListen := s.JoinerArgs(next, standby.joinListen, live.name)
		logf("the %s is live; starting backup-%d to protect it again (it joins at %s)", standby.name, next, standby.joinListen)
		joiner, err := start(fmt.Sprintf("backup-%d", next), args, joinListen, false)
		if err != nil {
			logf("starting backup-%d: %v; the guest runs unprotected", next, err)
			return standby.waitStatus(logf)
		}
		next++
		fence(standby, joiner)
		live, standby = standby, joiner
	}
}

// membersInPlay are the processes started, for signals and the final kill.
type membersInPlay struct {
	mu sync.Mutex
	ms []*member
}

func (p *membersInPlay) add(m *member) {
	p.mu.Lock()
	p.ms = append(p.ms, m)
	p.mu.Unlock()
}

func (p *membersInPlay) signal(sig os.Signal) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, m := range p.ms {
		m.signal(sig)
	}
}

func (p *membersInPlay) killAll() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, m := range p.ms {
		m.kill()
	}
}

// member is one process of a pair.
type member struct {
	name  string
	cmd   *exec.Cmd
	stdin io.WriteCloser
	done  chan struct{}
	// joinListen is where it takes joining backups once live; up closes
	// when it is protected (paired, or a backup joined it), live when it
	// went live as a backup.
	joinListen string
	up, live   chan struct{}
	won        chan struct{} // closed when it won the arbiter as a backup
	alone      chan struct{} // a token each time it lost its backup and carries on alone
}

func pairMember(exe, name string, args []string, out io.Writer) *member {
	cmd := exec.Command(exe, args...)
	cmd.Stdout = out
	return &member{name: name, cmd: cmd, done: make(chan struct{})}
}

// start starts the process; its stderr lines reach ours as they are (they
// carry their role), its stdin is a pipe the console switch may write to.
func (m *member) start(console *consoleSwitch, stderr io.Writer) error {
	m.cmd.Stderr = stderr
	w, err := m.cmd.StdinPipe()
	if err != nil {
		return err
	}
	m.stdin = w
	if console != nil {
		console.switchTo(w)
	}
	if err := m.cmd.Start(); err != nil {
		return err
	}
	go func() { m.cmd.Wait(); close(m.done) }()
	return nil
}

// wait returns the exit status, or -1 if a signal killed the process.
func (m *member) wait() int {
	<-m.done
	return m.cmd.ProcessState.ExitCode()
}

func (m *member) waitStatus(logf func(string, ...any)) int {
	if s := m.wait(); s >= 0 {
		return s
	}
	logf("the %s died too", m.name)
	return StatusFailed
}

func (m *member) signal(sig os.Signal) {
	if m.cmd.Process != nil {
		m.cmd.Process.Signal(sig)
	}
}

func (m *member) kill() {
	if m.cmd.Process != nil {
		m.cmd.Process.Kill()
	}
}

// consoleSwitch forwards console input to whichever side is live.
type consoleSwitch struct {
	mu sync.Mutex
	to io.WriteCloser
}

func (c *consoleSwitch) switchTo(w io.WriteCloser) {
	c.mu.Lock()
	c.to = w
	c.mu.Unlock()
}

func (c *consoleSwitch) pump(r io.Reader) {
	br := bufio.NewReader(r)
	buf := make([]byte, 32<<10)
	for {
		n, err := br.Read(buf)
		c.mu.Lock()
		to := c.to
		c.mu.Unlock()
		if n > 0 && to != nil {
			to.Write(buf[:n]) // lost if that side just died, like a packet in flight
		}
		if err != nil {
			c.mu.Lock()
			if c.to != nil {
				c.to.Close()
			}
			c.mu.Unlock()
			return
		}
	}
}

// lockedWriter serialises writes from both members' output.
type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// lineWatch calls on for every line written through it that contains
// want.
type lineWatch struct {
	want string
	on   func()
	buf  []byte
}

func (w *lineWatch) Write(p []byte) (int, error) {
	w.buf = append(w.buf, p...)
	for {
		i := bytes.IndexByte(w.buf, '\n')
		if i < 0 {
			break
		}
		if bytes.Contains(w.buf[:i], []byte(w.want)) {
			w.on()
		}
		w.buf = w.buf[i+1:]
	}
	return len(p), nil
}

// closer returns a func that closes ch the first time it is called.
func closer(ch chan struct{}) func() {
	var once sync.Once
	return func() { once.Do(func() { close(ch) }) }
}

// token returns a func that puts a token in ch if it has room.
func token(ch chan struct{}) func() {
	return func() {
		select {
		case ch <- struct{}{}:
		default:
		}
	}
}
