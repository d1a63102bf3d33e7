// Package hosts builds small networks of hosts for tests and the fault
// campaign: each host is a network namespace of its own, linked to the
// others by veth pairs and bridges the caller asks for. Nothing is made in
// the root namespace, and Close removes every namespace (and with them
// every link) it made.
package hosts

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strings"

	"golang.org/x/sys/unix"
)

// Available says why namespaces cannot be made here, or nil: they need
// root, iproute2's ip, and /dev/net/tun for TAP and TUN devices.
func Available() error {
	if os.Geteuid() != 0 {
		return errors.New("network namespaces need root")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		return errors.New("network namespaces need ip (iproute2)")
	}
	if _, err := os.Stat("/dev/net/tun"); err != nil {
		return errors.New("network namespaces need /dev/net/tun for TAP devices")
	}
	n := New(fmt.Sprintf("ftvmprobe%d", os.Getpid()))
	defer n.Close()
	if _, err := n.Add("x"); err != nil {
		return err
	}
	if err := n.IP("x", "link", "add", "br0", "type", "bridge"); err != nil {
		return err
	}
	return n.IP("x", "link", "add", "v0", "type", "veth", "peer", "name", "v1")
}

// Net is a set of hosts.
type Net struct {
	prefix string
	made   []string
}

// New returns an empty network whose namespaces are named prefix-HOST;
// prefix must be unique on the machine (a pid and a counter, say).
func New(prefix string) *Net { return &Net{prefix: prefix} }

// NS is the namespace of host.
func (n *Net) NS(host string) string { return n.prefix + "-" + host }

// Add makes host, with its loopback up, and returns its namespace.
func (n *Net) Add(host string) (string, error) {
	ns := n.NS(host)
	if out, err := exec.Command("ip", "netns", "add", ns).CombinedOutput(); err != nil {
		return "", fmt.Errorf("ip netns add %s: %v: %s", ns, err, strings.TrimSpace(string(out)))
	}
	n.made = append(n.made, ns)
	return ns, n.IP(host, "link", "set", "lo", "up")
}

// IP runs `ip ARGS` in host.
func (n *Net) IP(host string, args ...string) error {
	return n.Run(host, "ip", args...)
}

// Run runs a command in host and waits for it.
func (n *Net) Run(host, name string, args ...string) error {
	out, err := exec.Command("ip", append([]string{"netns", "exec", n.NS(host), name}, args...)...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s in %s: %s %s: %v: %s", name, host, name, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// Command is a command that runs in host: `ip netns exec` replaces itself
// with it, so the process started is the command itself and signals sent
// to it reach it.
func (n *Net) Command(host, name string, args ...string) *exec.Cmd {
	return exec.Command("ip", append([]string{"netns", "exec", n.NS(host), name}, args...)...)
}

// Link joins host a's interface ifa to host b's ifb by a veth pair.
func (n *Net) Link(a, ifa, b, ifb string) error {
	return n.IP(a, "link", "add", ifa, "type", "veth", "peer", "name", ifb, "netns", n.NS(b))
}

// Do runs fn on an OS thread moved into host's namespace. Sockets fn opens
// belong to that namespace for good and may be used from any goroutine
// afterwards. The thread is moved back; if that fails it stays locked and
// the runtime discards it when its goroutine ends.
func (n *Net) Do(host string, fn func() error) error {
	return Do(n.NS(host), fn)
}

// Do runs fn in the named namespace (see Net.Do).
func Do(ns string, fn func() error) error {
	done := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := os.Open("/proc/thread-self/ns/net")
		if err != nil {
			done <- err
			return
		}
		defer orig.Close()
		target, err := os.Open("/run/netns/" + ns)
		if err != nil {
			done <- err
			return
		}
		defer target.Close()
		if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
			done <- fmt.Errorf("setns %s: %w", ns, err)
			return
		}
		ferr := fn()
		if err := unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET); err != nil {
			done <- fmt.Errorf("setns back from %s: %w", ns, err)
			return
		}
		runtime.UnlockOSThread()
		done <- ferr
	}()
	return <-done
}

// Close removes every host made, and every link in them.
func (n *Net) Close() error {
	var errs []error
	for _, ns := range n.made {
		if out, err := exec.Command("ip", "netns", "del", ns).CombinedOutput(); err != nil {
			errs = append(errs, fmt.Errorf("ip netns del %s: %v: %s", ns, err, strings.TrimSpace(string(out))))
		}
	}
	n.made = nil
	return errors.Join(errs...)
}

// RemoveStale removes the namespaces named PREFIX<pid>-... whose process
// is gone: what a campaign killed with -9 left behind.
func RemoveStale(prefix string) {
	ents, _ := os.ReadDir("/run/netns")
	for _, e := range ents {
		rest, ok := strings.CutPrefix(e.Name(), prefix)
		if !ok {
			continue
		}
		pid, _, ok := strings.Cut(rest, "-")
		if !ok {
			continue
		}
		if _, err := os.Stat("/proc/" + pid); err == nil {
			continue
		}
		exec.Command("ip", "netns", "del", e.Name()).Run()
	}
}
