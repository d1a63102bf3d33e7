package main

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"sync"
	"syscall"
	"time"
)

// cmdPair runs a primary and a backup as two processes of this binary on
// this machine, with a file arbiter in a directory of its own: the default
// protected VM. stdin feeds the live side's console, stdout shows the
// released console output, stderr says who is live and why, and the exit
// status is the guest's.
func cmdPair(args []string) int {
	fs := newFlagSet("pair", "[--backend auto|kvm|ptrace] [--mem SIZE] [--net SPEC] [--kill-primary-after D] GUEST.elf [ARGS...]")
	g := guestFlags{cmd: "pair"}
	g.register(fs)
	arbiter := fs.String("arbiter", "", "go-live arbiter URL (default: file:// in a new temporary directory)")
	killAfter := fs.Duration("kill-primary-after", 0, "kill -9 the primary after this long, to watch the backup take over")
	killBackupAfter := fs.Duration("kill-backup-after", 0, "kill -9 the backup after this long, to watch the primary carry on alone")
	stopAfter := fs.Duration("stop-primary-after", 0, "SIGSTOP the primary after this long (a hung host: no connection reset, only silence), kill it 30 s later")
	failover := fs.Duration("failover-timeout", 0, "passed to both sides (default: theirs)")
	metricsP := fs.String("metrics-primary", "", "the primary's --metrics ADDR")
	metricsB := fs.String("metrics-backup", "", "the backup's --metrics ADDR")
	if err := fs.Parse(args); err != nil {
		return exitUsage
	}
	if fs.NArg() < 1 {
		fs.Usage()
		return exitUsage
	}
	exe, err := os.Executable()
	if err != nil {
		fmt.Fprintf(os.Stderr, "ftvm pair: %v\n", err)
		return exitFailed
	}
	// Both members must run the same backend: resolve auto here, once.
	be, err := chooseBackend("pair", g.backend)
	if err != nil {
		fmt.Fprintf(os.Stderr, "ftvm pair: %v\n", err)
		return exitFailed
	}
	if *arbiter == "" {
		dir, err := os.MkdirTemp("", "ftvm-pair-arbiter-")
		if err != nil {
			fmt.Fprintf(os.Stderr, "ftvm pair: %v\n", err)
			return exitFailed
		}
		defer os.RemoveAll(dir)
		*arbiter = "file://" + dir
	}
	addr, err := freeTCPAddr()
	if err != nil {
		fmt.Fprintf(os.Stderr, "ftvm pair: %v\n", err)
		return exitFailed
	}
	common := []string{"--backend", be.Name(), "--vm-id", g.vmID, "--generation", strconv.FormatInt(time.Now().UnixNano(), 10),
		"--arbiter", *arbiter, "--mem", strconv.FormatUint(g.mem.v, 10)}
	if g.net != "" {
		common = append(common, "--net", g.net)
	}
	if *failover != 0 {
		common = append(common, "--failover-timeout", failover.String())
	}
	with := func(flag, v string, rest []string) []string {
		if v == "" {
			return rest
		}
		return append([]string{flag, v}, rest...)
	}
	out := &lockedWriter{w: os.Stdout}
	backup := pairMember(exe, "backup", append(append([]string{"backup", "--listen", addr}, with("--metrics", *metricsB, common)...), fs.Args()...), out)
	primaryArgs := append([]string{"primary", "--backup", addr}, with("--metrics", *metricsP, common)...)
	if g.pcap != "" {
		primaryArgs = append(primaryArgs, "--pcap", g.pcap)
	}
	primary := pairMember(exe, "primary", append(primaryArgs, fs.Args()...), out)
	console := &consoleSwitch{}

	if err := backup.start(nil); err != nil {
		fmt.Fprintf(os.Stderr, "ftvm pair: starting the backup: %v\n", err)
		return exitFailed
	}
	defer backup.kill()
	if err := primary.start(console); err != nil {
		fmt.Fprintf(os.Stderr, "ftvm pair: starting the primary: %v\n", err)
		return exitFailed
	}
	defer primary.kill()
	go console.pump(os.Stdin)
	pairLog("primary pid %d, backup pid %d, logging channel %s, arbiter %s", primary.cmd.Process.Pid, backup.cmd.Process.Pid, addr, *arbiter)
	if *killAfter > 0 {
		time.AfterFunc(*killAfter, func() {
			pairLog("killing the primary (kill -9) to show a failover")
			primary.cmd.Process.Kill()
		})
	}
	if *stopAfter > 0 {
		time.AfterFunc(*stopAfter, func() {
			pairLog("freezing the primary (SIGSTOP): the backup can only notice the silence")
			primary.cmd.Process.Signal(syscall.SIGSTOP)
			time.AfterFunc(30*time.Second, func() { primary.cmd.Process.Kill() })
		})
	}
	if *killBackupAfter > 0 {
		time.AfterFunc(*killBackupAfter, func() {
			pairLog("killing the backup (kill -9)")
			backup.cmd.Process.Kill()
		})
	}

	// Ctrl-C or SIGTERM stops both members cleanly.
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	defer signal.Stop(sigs)
	go func() {
		for sig := range sigs {
			pairLog("%v: stopping both members", sig)
			primary.signal(sig)
			primary.signal(syscall.SIGCONT) // a frozen primary must see it too
			backup.signal(sig)
		}
	}()

	pstatus := primary.wait()
	if pstatus < 0 {
		pairLog("the primary died; the backup takes over if the arbiter lets it; console input now goes to the backup")
		console.switchTo(backup.stdin)
		return backup.waitStatus()
	}
	bstatus := backup.wait()
	switch {
	case bstatus == exitDiverged:
		pairLog("the backup's replay DIVERGED from the primary")
		return exitDiverged
	case bstatus < 0:
		pairLog("the backup died; the primary carried on")
	}
	return pstatus
}

func pairLog(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "ftvm pair %s: %s\n", time.Now().Format("15:04:05.000"), fmt.Sprintf(format, args...))
}

func freeTCPAddr() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer ln.Close()
	return ln.Addr().String(), nil
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
func (m *member) start(console *consoleSwitch) error {
	m.cmd.Stderr = os.Stderr
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

func (m *member) waitStatus() int {
	if s := m.wait(); s >= 0 {
		return s
	}
	pairLog("the %s died too", m.name)
	return exitFailed
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
