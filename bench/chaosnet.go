package bench

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"sync/atomic"
	"time"

	"github.com/ftvm/ftvm/bench/hosts"
	"github.com/ftvm/ftvm/bench/kv"
	"github.com/ftvm/ftvm/bench/netproxy"
	"github.com/ftvm/ftvm/vmm/vnet"
)

// chaosNet is where a trial's processes run and how faults reach the
// network between them. On hosts (network namespaces) the primary, the
// backup, the arbiter's storage and the clients each have a host:
//
//	clients 10.77.0.20 ─┐                 ┌─ primary: br0 10.77.0.11 ── tap0 (guest 10.77.0.100)
//	storage 10.77.0.13 ─┴─ lan bridge ────┤        ft0 10.78.0.1 ─┐ logging link
//	                                      └─ backup:  br0 10.77.0.12 ── tap0   ft0 10.78.0.2 ─┘
//
// The guest keeps its IP and MAC on either host; at go-live the backup's
// gratuitous ARP moves it on the LAN. The logging link is a veth pair of
// its own (as VM-FT's logging NIC) whose packets pass through this process
// (hosts.Wire), which cuts it, delays, loses or reorders them.
// Each VM host's TAP is captured, to check that the two sides never both
// put the guest's frames on the wire.
//
// On loopback (no namespaces here) everything runs on 127.0.0.1, the
// logging link passes through a proxy that can cut it, and clients reach
// the guest by user-mode networking's forwarded port.
type chaosNet struct {
	hosts *hosts.Net // nil: loopback
	proxy *netproxy.Proxy
	// guestNet is both sides' --net, clientAddr where clients send.
	guestNet, clientAddr string
	// backupListen is the backup's --listen, backupDial the primary's
	// --backup.
	backupListen, backupDial string
	// primaryJoin and backupJoin are each side's --join-listen.
	primaryJoin, backupJoin string
	mac                     net.HardwareAddr
	capPrimary, capBackup   *hosts.Capture
	// wire is the logging link on hosts.
	wire *hosts.Wire
}

var chaosNets atomic.Int64

// chaosNetPrefix starts the names of a campaign's namespaces, then its pid.
const chaosNetPrefix = "ftvmchaos"

const (
	chaosGuestIP   = "10.77.0.100"
	chaosClientsIP = "10.77.0.20"
	chaosStorageIP = "10.77.0.13"
)

// HostsOnlyFaults are the faults that only hosts can inject.
var HostsOnlyFaults = []string{FaultLinkDelay, FaultLinkLoss, FaultLinkReorder, FaultClientsCut, FaultJoinPartition}

func newChaosNet(onHosts bool, vmID string, seed uint64) (*chaosNet, error) {
	cn := &chaosNet{mac: vnet.DefaultMAC(vmID)}
	if !onHosts {
		_, addr, _, err := userNet(7000)
		if err != nil {
			return nil, err
		}
		cn.clientAddr, cn.guestNet = addr, "user,hostfwd=udp:"+addr+"-:7000"
		for _, a := range []*string{&cn.backupListen, &cn.primaryJoin, &cn.backupJoin} {
			if *a, err = freeLoopbackAddr(); err != nil {
				return nil, err
			}
		}
		return cn, nil
	}
	h := hosts.New(fmt.Sprintf("%s%d-%d", chaosNetPrefix, os.Getpid(), chaosNets.Add(1)))
	cn.hosts = h
	fail := func(err error) (*chaosNet, error) {
		cn.close()
		return nil, err
	}
	for _, name := range []string{"lan", "primary", "backup", "storage", "clients"} {
		if _, err := h.Add(name); err != nil {
			return fail(err)
		}
	}
	steps := [][]string{{"lan", "link", "add", "br0", "type", "bridge"}, {"lan", "link", "set", "br0", "up"}}
	for _, side := range []struct{ host, port, ip string }{{"primary", "vp", "10.77.0.11/24"}, {"backup", "vb", "10.77.0.12/24"}} {
		steps = append(steps,
			[]string{side.host, "link", "add", "br0", "type", "bridge"},
			[]string{side.host, "addr", "add", side.ip, "dev", "br0"},
			[]string{side.host, "link", "set", "br0", "up"},
			[]string{side.host, "tuntap", "add", "dev", "tap0", "mode", "tap"},
			[]string{side.host, "link", "set", "tap0", "master", "br0", "up"},
			[]string{side.host, "link", "set", "eth0", "master", "br0", "up"},
			[]string{"lan", "link", "set", side.port, "master", "br0", "up"})
	}
	for _, end := range []struct{ host, port, ip string }{{"storage", "vs", chaosStorageIP + "/24"}, {"clients", "vc", chaosClientsIP + "/24"}} {
		steps = append(steps,
			[]string{end.host, "addr", "add", end.ip, "dev", "eth0"},
			[]string{end.host, "link", "set", "eth0", "up"},
			[]string{"lan", "link", "set", end.port, "master", "br0", "up"})
	}
	for _, l := range [][4]string{{"primary", "eth0", "lan", "vp"}, {"backup", "eth0", "lan", "vb"}, {"storage", "eth0", "lan", "vs"},
		{"clients", "eth0", "lan", "vc"}} {
		if err := h.Link(l[0], l[1], l[2], l[3]); err != nil {
			return fail(err)
		}
	}
	for _, s := range steps {
		if err := h.IP(s[0], s[1:]...); err != nil {
			return fail(err)
		}
	}
	var err error
	if cn.wire, err = h.NewWire("primary", "10.78.0.1", "backup", "10.78.0.2", "ft0", seed); err != nil {
		return fail(err)
	}
	// What each VM host's VMM writes into its TAP, as it writes it: the
	// time a side released a frame, not when the LAN passed it on (a frame
	// can wait in a host's queues; one written before the fault reached
	// the LAN seconds later, after the backup's first, in 1 of 150
	// freeze-primary trials).
	if cn.capPrimary, err = h.CaptureFrom("primary", "tap0", cn.mac); err != nil {
		return fail(err)
	}
	if cn.capBackup, err = h.CaptureFrom("backup", "tap0", cn.mac); err != nil {
		return fail(err)
	}
	cn.guestNet = "tap,ifname=tap0,ip=" + chaosGuestIP + "/24,gw=" + chaosClientsIP
	cn.clientAddr = chaosGuestIP + ":7000"
	cn.backupListen, cn.backupDial = "10.78.0.2:7700", "10.78.0.2:7700"
	cn.primaryJoin, cn.backupJoin = "10.78.0.1:7701", "10.78.0.2:7701"
	return cn, nil
}

// linkAddr is where the primary dials the backup: the proxy on loopback
// (which must have been made by then), the backup's logging link on hosts.
func (cn *chaosNet) startLink() error {
	if cn.hosts != nil {
		return nil
	}
	p, err := netproxy.New(cn.backupListen)
	if err != nil {
		return err
	}
	cn.proxy, cn.backupDial = p, p.Addr()
	return nil
}

// command is an ftvm process on role's host.
func (cn *chaosNet) command(role, bin string, args ...string) *exec.Cmd {
	if cn.hosts == nil {
		return exec.Command(bin, args...)
	}
	return cn.hosts.Command(role, bin, args...)
}

// dialClient makes a kvstore client where the clients are.
func (cn *chaosNet) dialClient(addr string) (*kv.Client, error) {
	if cn.hosts == nil {
		return kv.Dial(addr)
	}
	var c *kv.Client
	err := cn.hosts.Do("clients", func() (err error) {
		c, err = kv.Dial(addr)
		return err
	})
	return c, err
}

// partition silences the logging link from the primary to the backup,
// from the backup to the primary, or both: no FIN, no reset.
func (cn *chaosNet) partition(toBackup, toPrimary bool) error {
	if cn.hosts == nil {
		switch {
		case toBackup && toPrimary:
			cn.proxy.Freeze()
		case toBackup:
			cn.proxy.FreezeForward()
		case toPrimary:
			cn.proxy.FreezeBackward()
		}
		return nil
	}
	cn.wire.Set(true, hosts.Impair{Cut: toBackup})
	cn.wire.Set(false, hosts.Impair{Cut: toPrimary})
	return nil
}

// degrade impairs the logging link both ways.
func (cn *chaosNet) degrade(p hosts.Impair) {
	cn.wire.Set(true, p)
	cn.wire.Set(false, p)
}

// heal takes the impairment away.
func (cn *chaosNet) heal() { cn.degrade(hosts.Impair{}) }

// cutClients takes the primary's host off the LAN (its bridge port), or
// puts it back; its logging link stays.
func (cn *chaosNet) cutClients(cut bool) error {
	state := "up"
	if cut {
		state = "down"
	}
	return cn.hosts.IP("lan", "link", "set", "vp", state)
}

// captured returns the guest's frames the VMMs on the primary's and the
// backup's host wrote into their TAPs, and ends the captures (nil, nil on
// loopback).
func (cn *chaosNet) captured() (fromPrimary, fromBackup []hosts.Frame, err error) {
	if cn.hosts == nil {
		return nil, nil, nil
	}
	fromPrimary, e1 := cn.capPrimary.Stop()
	fromBackup, e2 := cn.capBackup.Stop()
	return fromPrimary, fromBackup, errors.Join(e1, e2)
}

// captureQuality describes how well the captures timed their frames.
func (cn *chaosNet) captureQuality() string {
	u1, l1 := cn.capPrimary.Quality()
	u2, l2 := cn.capBackup.Quality()
	return fmt.Sprintf("the captures: %d frames without a kernel timestamp, reads up to %v behind the arrivals", u1+u2, max(l1, l2).Round(time.Microsecond))
}

func (cn *chaosNet) close() {
	if cn.proxy != nil {
		cn.proxy.Close()
	}
	if cn.hosts != nil {
		if cn.wire != nil {
			cn.wire.Close()
		}
		for _, c := range []*hosts.Capture{cn.capPrimary, cn.capBackup} {
			if c != nil {
				c.Stop()
			}
		}
		cn.hosts.Close()
	}
}
