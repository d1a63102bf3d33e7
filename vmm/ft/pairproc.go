package ft

import (
	"bufio"
	"bytes"
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
// watch a failover. It is what `ftvm pair` is, below the CLI.
type PairSupervisor struct {
	Exe string
	// PrimaryArgs and BackupArgs are each member's whole command line
	// after Exe (command, flags, guest and its arguments).
	PrimaryArgs, BackupArgs []string
	Stdin                   io.Reader
	Stdout, Stderr          io.Writer // Stdout: the released console output
	// KillPrimaryAfter, KillBackupAfter: kill -9 that member this long
	// after the pair is up (the primary has connected to its backup and
	// records); StopPrimaryAfter: SIGSTOP the primary (a hung host:
	// silence, no connection reset) as long after, then kill it 30 s
	// later. 0: never. Counting from the start instead would, on a slow
	// machine, kill a primary that never had a backup, which no backup
	// can take over from.
	KillPrimaryAfter, KillBackupAfter, StopPrimaryAfter time.Duration
	// Signals, if not nil, are passed on to both members (Ctrl-C stops
	// both cleanly).
	Signals <-chan os.Signal
	// Logf reports what the supervisor does.
	Logf func(format string, args ...any)
	// Started, if set, is called with both members' pids once they run.
	Started func(primaryPid, backupPid int)
}

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
	backup := pairMember(s.Exe, "backup", s.BackupArgs, out)
	primary := pairMember(s.Exe, "primary", s.PrimaryArgs, out)
	console := &consoleSwitch{}
	if err := backup.start(nil, s.Stderr); err != nil {
		logf("starting the backup: %v", err)
		return StatusFailed
	}
	defer backup.kill()
	up := make(chan struct{})
	if err := primary.start(console, io.MultiWriter(s.Stderr, &lineWatch{want: "primary: connected to the backup", seen: up})); err != nil {
		logf("starting the primary: %v", err)
		return StatusFailed
	}
	defer primary.kill()
	if s.Stdin != nil {
		go console.pump(s.Stdin)
	}
	if s.Started != nil {
		s.Started(primary.cmd.Process.Pid, backup.cmd.Process.Pid)
	}
	after := func(d time.Duration, f func()) {
		if d <= 0 {
			return
		}
		go func() {
			select {
			case <-up:
			case <-primary.done: // never up: nothing to fail over
				return
			}
			select {
			case <-time.After(d):
				f()
			case <-primary.done:
			}
		}()
	}
	after(s.KillPrimaryAfter, func() {
		logf("killing the primary (kill -9) to show a failover")
		primary.kill()
	})
	after(s.StopPrimaryAfter, func() {
		logf("freezing the primary (SIGSTOP): the backup can only notice the silence")
		primary.signal(syscall.SIGSTOP)
		time.AfterFunc(30*time.Second, primary.kill)
	})
	after(s.KillBackupAfter, func() {
		logf("killing the backup (kill -9)")
		backup.kill()
	})
	if s.Signals != nil {
		go func() {
			for sig := range s.Signals {
				logf("%v: stopping both members", sig)
				primary.signal(sig)
				primary.signal(syscall.SIGCONT) // a frozen primary must see it too
				backup.signal(sig)
			}
		}()
	}

	pstatus := primary.wait()
	if pstatus < 0 {
		logf("the primary died; the backup takes over if the arbiter lets it; console input now goes to the backup")
		console.switchTo(backup.stdin)
		return backup.waitStatus(logf)
	}
	bstatus := backup.wait()
	switch {
	case bstatus == StatusDiverged:
		logf("the backup's replay DIVERGED from the primary")
		return StatusDiverged
	case bstatus < 0:
		logf("the backup died; the primary carried on")
	}
	return pstatus
}

// member is one process of a pair.
type member struct {
	name  string
	cmd   *exec.Cmd
	stdin io.WriteCloser
	done  chan struct{}
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

// lineWatch closes seen the first time a line written through it
// contains want.
type lineWatch struct {
	want string
	seen chan struct{}
	buf  []byte
	done bool
}

func (w *lineWatch) Write(p []byte) (int, error) {
	if w.done {
		return len(p), nil
	}
	w.buf = append(w.buf, p...)
	for {
		i := bytes.IndexByte(w.buf, '\n')
		if i < 0 {
			break
		}
		if bytes.Contains(w.buf[:i], []byte(w.want)) {
			w.done = true
			close(w.seen)
			w.buf = nil
			break
		}
		w.buf = w.buf[i+1:]
	}
	return len(p), nil
}
