package vnet

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ftvm/ftvm/bench/hosts"
	"github.com/google/gopacket/layers"
	"golang.org/x/sys/unix"
)

// The TAP tests build a small network inside namespaces they create and
// delete, and never touch the root namespace:
//
//	netns HOST:   bridge br0 ── tap (the backend; the test plays the guest 10.99.0.2)
//	                   └─ veth vh ══ vc (in netns CLIENT, 10.99.0.1/24)

var labSeq atomic.Int32

type lab struct {
	host, client string // namespace names
	tapName      string
}

// needNetns skips the test without what it needs, or fails it under CI,
// where the machine is meant to have it.
func needNetns(t *testing.T) {
	t.Helper()
	var missing []string
	if os.Geteuid() != 0 {
		missing = append(missing, "root")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		missing = append(missing, "the ip command (iproute2)")
	}
	if _, err := os.Stat("/dev/net/tun"); err != nil {
		missing = append(missing, "/dev/net/tun")
	}
	if len(missing) == 0 {
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatalf("TAP tests need %s (CI=true: failing rather than skipping)", strings.Join(missing, ", "))
	}
	t.Skipf("TAP tests need %s", strings.Join(missing, ", "))
}

func run(t *testing.T, args ...string) {
	t.Helper()
	if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

func newLab(t *testing.T) *lab {
	needNetns(t)
	id := fmt.Sprintf("%d-%d", os.Getpid(), labSeq.Add(1))
	l := &lab{host: "ftvm-vnet-host-" + id, client: "ftvm-vnet-client-" + id, tapName: fmt.Sprintf("vntap%d", os.Getpid())}
	for _, ns := range []string{l.host, l.client} {
		run(t, "ip", "netns", "add", ns)
		t.Cleanup(func() {
			// Deleting a namespace deletes its devices: the veth pair and the bridge go with it.
			if out, err := exec.Command("ip", "netns", "del", ns).CombinedOutput(); err != nil {
				t.Errorf("ip netns del %s: %v\n%s", ns, err, out)
			}
		})
	}
	// Every device is made with -n, inside a namespace: none ever exists in the root one.
	run(t, "ip", "-n", l.host, "link", "add", "br0", "type", "bridge")
	run(t, "ip", "-n", l.host, "link", "add", "vh", "type", "veth", "peer", "name", "vc", "netns", l.client)
	run(t, "ip", "-n", l.host, "link", "set", "vh", "master", "br0", "up")
	run(t, "ip", "-n", l.host, "link", "set", "br0", "up")
	run(t, "ip", "-n", l.client, "addr", "add", "10.99.0.1/24", "dev", "vc")
	run(t, "ip", "-n", l.client, "link", "set", "vc", "up")
	run(t, "ip", "-n", l.client, "link", "set", "lo", "up")
	return l
}

// inNetns runs fn on an OS thread moved into namespace ns (hosts.Do).
func inNetns(ns string, fn func() error) error { return hosts.Do(ns, fn) }

// newTap makes the TAP backend for the lab's device, unbound.
func (l *lab) newTap(t *testing.T) *Tap {
	t.Helper()
	spec, err := ParseSpec("tap,ifname="+l.tapName+",ip=10.99.0.2/24,gw=10.99.0.1", "tap-test")
	if err != nil {
		t.Fatal(err)
	}
	tap, err := NewTap(spec)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tap.Close() }) // runs before the namespaces are deleted
	return tap
}

// openTap makes the TAP backend inside the host namespace and plugs it
// into the bridge.
func (l *lab) openTap(t *testing.T) *Tap {
	t.Helper()
	tap := l.newTap(t)
	if err := inNetns(l.host, tap.Bind); err != nil {
		t.Fatal(err)
	}
	run(t, "ip", "-n", l.host, "link", "set", l.tapName, "master", "br0", "up")
	if exec.Command("ip", "link", "show", l.tapName).Run() == nil {
		t.Fatalf("TAP %s appeared in the root namespace", l.tapName)
	}
	return tap
}

// TestTapCarriesFramesBothWays: a client in its namespace sends UDP to the
// guest behind the TAP; the test, as the guest, answers the client's ARP
// and the datagram, and the client gets the answer.
func TestTapCarriesFramesBothWays(t *testing.T) {
	l := newLab(t)
	tap := l.openTap(t)
	guestMAC := tap.spec.MAC
	guest := netip.MustParseAddrPort("10.99.0.2:7000")

	var client *net.UDPConn
	if err := inNetns(l.client, func() (err error) {
		client, err = net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(10, 99, 0, 1)})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer client.Close()

	// The client retries: its first datagram may wait on ARP or on the
	// bridge learning the new port.
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		for i := 0; i < 50; i++ {
			client.WriteToUDPAddrPort([]byte("ping"), guest)
			select {
			case <-stop:
				return
			case <-time.After(100 * time.Millisecond):
			}
		}
	}()

	// Play the guest until the datagram arrives (bounded).
	buf := make([]byte, MaxFrame)
	deadline := time.After(10 * time.Second)
	answeredARP := false
	for gotUDP := false; !gotUDP; {
		n, ok := tap.Receive(buf)
		if !ok {
			select {
			case <-tap.Pending():
			case <-deadline:
				t.Fatalf("no datagram reached the guest (answered ARP: %v); stats %+v", answeredARP, tap.Stats())
			}
			continue
		}
		frame := buf[:n]
		switch layers.EthernetType(uint16(frame[12])<<8 | uint16(frame[13])) {
		case layers.EthernetTypeARP:
			eth, arp := arpOf(t, frame)
			if arp.Operation != layers.ARPRequest || net.IP(arp.DstProtAddress).String() != "10.99.0.2" {
				continue
			}
			reply := arpFrame(t, layers.ARPReply, guestMAC, eth.SrcMAC, guest.Addr(),
				netip.AddrFrom4([4]byte(arp.SourceProtAddress)), net.HardwareAddr(arp.SourceHwAddress))
			if err := tap.Send(reply); err != nil {
				t.Fatal(err)
			}
			answeredARP = true
		case layers.EthernetTypeIPv4:
			if len(frame) < 34 || layers.IPProtocol(frame[23]) != layers.IPProtocolUDP {
				continue // IGMP reports and the like
			}
			eth, ip, udp := udpOf(t, frame)
			if ip.DstIP.String() != "10.99.0.2" || udp.DstPort != 7000 {
				continue
			}
			if string(udp.Payload) != "ping" || ip.SrcIP.String() != "10.99.0.1" {
				t.Fatalf("guest got %q from %s", udp.Payload, ip.SrcIP)
			}
			from := netip.AddrPortFrom(netip.AddrFrom4([4]byte(ip.SrcIP.To4())), uint16(udp.SrcPort))
			if err := tap.Send(udpFrame(t, guestMAC, eth.SrcMAC, guest, from, []byte("pong"))); err != nil {
				t.Fatal(err)
			}
			gotUDP = true
		} // anything else (IPv6 neighbour discovery and the like) is noise here
	}
	if !answeredARP {
		t.Error("the client never asked ARP for the guest")
	}
	client.SetReadDeadline(time.Now().Add(5 * time.Second))
	rb := make([]byte, 100)
	n, from, err := client.ReadFromUDPAddrPort(rb)
	if err != nil || string(rb[:n]) != "pong" || from != guest {
		t.Fatalf("client got %q from %s, %v; want pong from %s", rb[:n], from, err, guest)
	}
	st := tap.Stats()
	if st.TxFrames < 2 || st.RxFrames < 2 || st.TxDropped != 0 {
		t.Errorf("stats %+v", st)
	}
	if err := tap.Send(make([]byte, MaxFrame+1)); !errors.Is(err, ErrDropped) {
		t.Errorf("oversized Send = %v, want ErrDropped", err)
	}
	if err := tap.Close(); err != nil {
		t.Fatal(err)
	}
	if err := tap.Send(make([]byte, 60)); !errors.Is(err, ErrClosed) {
		t.Errorf("Send after Close = %v", err)
	}
}

// TestTapGratuitousARPReachesTheWire: a backup that goes live announces the
// guest; a packet capture in the client namespace must see the announcement.
func TestTapGratuitousARPReachesTheWire(t *testing.T) {
	l := newLab(t)
	// As on a backup's host: the device is made and wired beforehand, and
	// the backup opens it only when it goes live.
	run(t, "ip", "-n", l.host, "tuntap", "add", "dev", l.tapName, "mode", "tap")
	run(t, "ip", "-n", l.host, "link", "set", l.tapName, "master", "br0", "up")

	// A raw AF_PACKET socket for ARP on the client's interface.
	var fd int
	if err := inNetns(l.client, func() error {
		ifi, err := net.InterfaceByName("vc")
		if err != nil {
			return err
		}
		proto := int(htons(unix.ETH_P_ARP))
		if fd, err = unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, proto); err != nil {
			return err
		}
		return unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ARP), Ifindex: ifi.Index})
	}); err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	tv := unix.NsecToTimeval((100 * time.Millisecond).Nanoseconds())
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		t.Fatal(err)
	}

	buf := make([]byte, 2048)
	// Bind then one Announce at once, as at go-live: the first frame
	// crosses the bridge before its port forwards (the carrier has just
	// come up) and is lost, so Announce must repeat it by itself.
	tap := l.newTap(t)
	if err := inNetns(l.host, tap.Bind); err != nil {
		t.Fatal(err)
	}
	if err := tap.Announce(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		n, _, err := unix.Recvfrom(fd, buf, 0)
		if err != nil {
			continue // the receive timeout
		}
		_, arp := arpOf(t, buf[:n])
		if net.IP(arp.SourceProtAddress).String() == "10.99.0.2" &&
			net.HardwareAddr(arp.SourceHwAddress).String() == tap.spec.MAC.String() &&
			net.IP(arp.DstProtAddress).String() == "10.99.0.2" {
			if st := tap.Stats(); st.TxFrames != 0 {
				t.Errorf("the backend's own frame counted as the guest's: %+v", st)
			}
			return
		}
	}
	t.Fatal("the client namespace never saw the gratuitous ARP")
}

func TestTapUnbound(t *testing.T) {
	spec, err := ParseSpec("tap,ifname=vnnever0", "unbound")
	if err != nil {
		t.Fatal(err)
	}
	b, err := New(spec) // touches nothing: no device is created
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if err := b.Send(make([]byte, 60)); !errors.Is(err, ErrDropped) {
		t.Errorf("Send before Bind = %v, want ErrDropped", err)
	}
	if err := b.Announce(); !errors.Is(err, ErrDropped) {
		t.Errorf("Announce before Bind = %v", err)
	}
	if _, ok := b.Receive(make([]byte, MaxFrame)); ok {
		t.Error("an unbound TAP received a frame")
	}
	if st := b.Stats(); st.TxDropped != 1 {
		t.Errorf("stats %+v", st)
	}
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }
