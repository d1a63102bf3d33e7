package vnet

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
)

const guestPort = 7000

// newUser opens a user backend with n hostfwds on free loopback ports and
// returns it with their addresses.
func newUser(t *testing.T, n int) (*User, []netip.AddrPort) {
	t.Helper()
	s := "user"
	for i := range n {
		s += fmt.Sprintf(",hostfwd=udp:127.0.0.1:0-:%d", guestPort+i)
	}
	spec, err := ParseSpec(s, t.Name())
	if err != nil {
		t.Fatal(err)
	}
	u, err := NewUser(spec)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { u.Close() })
	if err := u.Bind(); err != nil {
		t.Fatal(err)
	}
	return u, u.HostAddrs()
}

// newClient opens a UDP socket on loopback, closed at the end of the test.
func newClient(t *testing.T) *net.UDPConn {
	t.Helper()
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// clientRead reads one datagram or fails after timeout.
func clientRead(t *testing.T, c *net.UDPConn, timeout time.Duration) ([]byte, netip.AddrPort) {
	t.Helper()
	buf := make([]byte, 2048)
	c.SetReadDeadline(time.Now().Add(timeout))
	n, from, err := c.ReadFromUDPAddrPort(buf)
	if err != nil {
		t.Fatalf("client %s: %v", c.LocalAddr(), err)
	}
	return buf[:n], from
}

// guestReply builds the guest's answer to a frame it received.
func guestReply(t *testing.T, u *User, to *layers.UDP, payload []byte) []byte {
	return udpFrame(t, u.spec.MAC, GatewayMAC,
		netip.AddrPortFrom(guestIP, uint16(to.DstPort)), netip.AddrPortFrom(gwIP, uint16(to.SrcPort)), payload)
}

func TestUserClientToGuestAndBack(t *testing.T) {
	u, hosts := newUser(t, 1)
	c := newClient(t)
	if _, err := c.WriteToUDPAddrPort([]byte("hello guest"), hosts[0]); err != nil {
		t.Fatal(err)
	}

	eth, ip, udp := udpOf(t, receiveFrame(t, u, 5*time.Second))
	if eth.SrcMAC.String() != GatewayMAC.String() || eth.DstMAC.String() != u.spec.MAC.String() {
		t.Errorf("Ethernet %s -> %s, want %s -> %s", eth.SrcMAC, eth.DstMAC, GatewayMAC, u.spec.MAC)
	}
	if ip.SrcIP.String() != "10.0.2.2" || ip.DstIP.String() != "10.0.2.15" || ip.TTL == 0 || ip.Flags&layers.IPv4MoreFragments != 0 {
		t.Errorf("IPv4 %s -> %s ttl %d flags %v", ip.SrcIP, ip.DstIP, ip.TTL, ip.Flags)
	}
	if udp.DstPort != guestPort || udp.SrcPort < natFirstPort || udp.SrcPort >= natFirstPort+NATEntries {
		t.Errorf("UDP %d -> %d, want a NAT port -> %d", udp.SrcPort, udp.DstPort, guestPort)
	}
	if string(udp.Payload) != "hello guest" {
		t.Errorf("payload %q", udp.Payload)
	}

	reply := guestReply(t, u, udp, []byte("hello client"))
	if err := u.Send(reply); err != nil {
		t.Fatal(err)
	}
	got, from := clientRead(t, c, 5*time.Second)
	if string(got) != "hello client" || from != hosts[0] {
		t.Errorf("client got %q from %s, want %q from %s", got, from, "hello client", hosts[0])
	}
	st := u.Stats()
	if st.RxFrames != 1 || st.TxFrames != 1 || st.RxDropped != 0 || st.TxDropped != 0 || st.TxBytes != uint64(len(reply)) {
		t.Errorf("stats %+v", st)
	}
}

func TestUserTwoClientsGetTheirOwnReplies(t *testing.T) {
	u, hosts := newUser(t, 2)
	clients := []*net.UDPConn{newClient(t), newClient(t), newClient(t)}
	// Two clients on the first hostfwd, one on the second.
	targets := []netip.AddrPort{hosts[0], hosts[0], hosts[1]}
	for i, c := range clients {
		if _, err := c.WriteToUDPAddrPort([]byte{byte(i)}, targets[i]); err != nil {
			t.Fatal(err)
		}
	}
	seen := map[layers.UDPPort]bool{}
	for range clients {
		_, _, udp := udpOf(t, receiveFrame(t, u, 5*time.Second))
		i := int(udp.Payload[0])
		if want := layers.UDPPort(guestPort); i == 2 {
			want++
			if udp.DstPort != want {
				t.Errorf("client %d reached guest port %d, want %d", i, udp.DstPort, want)
			}
		}
		if seen[udp.SrcPort] {
			t.Errorf("two clients share gateway port %d", udp.SrcPort)
		}
		seen[udp.SrcPort] = true
		if err := u.Send(guestReply(t, u, udp, fmt.Appendf(nil, "for client %d", i))); err != nil {
			t.Fatal(err)
		}
	}
	for i, c := range clients {
		got, from := clientRead(t, c, 5*time.Second)
		if want := fmt.Sprintf("for client %d", i); string(got) != want || from != targets[i] {
			t.Errorf("client %d got %q from %s, want %q from %s", i, got, from, want, targets[i])
		}
	}
	if ms := u.NATMappings(); len(ms) != 3 {
		t.Errorf("NAT table %v, want 3 entries", ms)
	}
}

func TestUserAnswersARPForGateway(t *testing.T) {
	u, _ := newUser(t, 0)
	req := arpFrame(t, layers.ARPRequest, u.spec.MAC, broadcastMAC, guestIP, gwIP, make([]byte, 6))
	if err := u.Send(req); err != nil {
		t.Fatal(err)
	}
	eth, arp := arpOf(t, receiveFrame(t, u, time.Second))
	if eth.SrcMAC.String() != GatewayMAC.String() || eth.DstMAC.String() != u.spec.MAC.String() ||
		arp.Operation != layers.ARPReply ||
		net.HardwareAddr(arp.SourceHwAddress).String() != GatewayMAC.String() || net.IP(arp.SourceProtAddress).String() != "10.0.2.2" ||
		net.HardwareAddr(arp.DstHwAddress).String() != u.spec.MAC.String() || net.IP(arp.DstProtAddress).String() != "10.0.2.15" {
		t.Errorf("ARP reply %+v %+v", eth, arp)
	}
	// A unicast re-check (as a guest refreshing its cache sends) is answered too.
	if err := u.Send(arpFrame(t, layers.ARPRequest, u.spec.MAC, GatewayMAC, guestIP, gwIP, GatewayMAC)); err != nil {
		t.Fatal(err)
	}
	receiveFrame(t, u, time.Second)
}

// TestUserDropsWhatItMustNotRoute sends the guest's bad and unroutable
// frames: each is refused with ErrDropped and counted, nothing reaches the
// client or comes back to the guest, and nothing panics.
func TestUserDropsWhatItMustNotRoute(t *testing.T) {
	u, hosts := newUser(t, 1)
	c := newClient(t)
	if _, err := c.WriteToUDPAddrPort([]byte("map me"), hosts[0]); err != nil {
		t.Fatal(err)
	}
	_, _, in := udpOf(t, receiveFrame(t, u, 5*time.Second))
	mapped := uint16(in.SrcPort)
	mac := u.spec.MAC
	guest := netip.AddrPortFrom(guestIP, guestPort)
	toGW := netip.AddrPortFrom(gwIP, mapped)
	good := func() []byte { return udpFrame(t, mac, GatewayMAC, guest, toGW, []byte("must not arrive")) }
	mutate := func(f func([]byte) []byte) []byte { return f(good()) }

	ipProto := func(proto layers.IPProtocol) []byte {
		f, err := serialize(&layers.Ethernet{SrcMAC: mac, DstMAC: GatewayMAC, EthernetType: layers.EthernetTypeIPv4},
			&layers.IPv4{Version: 4, TTL: 64, Protocol: proto, SrcIP: ip4(guestIP), DstIP: ip4(gwIP)},
			gopacket.Payload(make([]byte, 20)))
		if err != nil {
			t.Fatal(err)
		}
		return f
	}
	fixIPChecksum := func(f []byte) []byte {
		binary.BigEndian.PutUint16(f[24:26], 0)
		var sum uint32 = onesSum(0, f[14:34])
		for sum > 0xffff {
			sum = sum>>16 + sum&0xffff
		}
		binary.BigEndian.PutUint16(f[24:26], ^uint16(sum))
		return f
	}
	cases := map[string][]byte{
		"UDP to another host":              udpFrame(t, mac, GatewayMAC, guest, netip.MustParseAddrPort("192.0.2.1:53"), []byte("x")),
		"UDP to an unmapped gateway port":  udpFrame(t, mac, GatewayMAC, guest, netip.AddrPortFrom(gwIP, mapped+1), []byte("x")),
		"UDP from another source":          udpFrame(t, mac, GatewayMAC, netip.MustParseAddrPort("10.0.2.99:7000"), toGW, []byte("x")),
		"UDP broadcast":                    udpFrame(t, mac, broadcastMAC, guest, netip.MustParseAddrPort("10.0.2.255:7000"), []byte("x")),
		"UDP to the gateway IP, other MAC": udpFrame(t, mac, net.HardwareAddr{0x52, 0x54, 0, 0, 0, 9}, guest, toGW, []byte("x")),
		"TCP to the gateway":               ipProto(layers.IPProtocolTCP),
		"ICMP to the gateway":              ipProto(layers.IPProtocolICMPv4),
		"ARP for another address":          arpFrame(t, layers.ARPRequest, mac, broadcastMAC, guestIP, netip.MustParseAddr("10.0.2.3"), make([]byte, 6)),
		"ARP reply to the gateway":         arpFrame(t, layers.ARPReply, mac, GatewayMAC, guestIP, gwIP, GatewayMAC),
		"ARP with huge address sizes": mutate(func([]byte) []byte {
			f := arpFrame(t, layers.ARPRequest, mac, broadcastMAC, guestIP, gwIP, make([]byte, 6))
			f[18] = 200
			return f
		}),
		"IPv6":                       mutate(func(f []byte) []byte { binary.BigEndian.PutUint16(f[12:14], 0x86dd); return f }),
		"bad IPv4 checksum":          mutate(func(f []byte) []byte { f[24] ^= 0xff; return f }),
		"bad UDP checksum":           mutate(func(f []byte) []byte { f[40] ^= 0xff; return f }),
		"IPv4 length past the frame": mutate(func(f []byte) []byte { binary.BigEndian.PutUint16(f[16:18], 1400); return fixIPChecksum(f) }),
		"UDP length too long":        mutate(func(f []byte) []byte { binary.BigEndian.PutUint16(f[38:40], 200); return f }),
		"UDP length too short":       mutate(func(f []byte) []byte { binary.BigEndian.PutUint16(f[38:40], 8); return f }),
		"IPv4 fragment":              mutate(func(f []byte) []byte { f[20] = 0x20; return fixIPChecksum(f) }),
		"IPv4 header length 3":       mutate(func(f []byte) []byte { f[14] = 0x43; return fixIPChecksum(f) }),
		"IP version 6 in IPv4":       mutate(func(f []byte) []byte { f[14] = 0x65; return fixIPChecksum(f) }),
		"truncated IPv4 header":      good()[:20],
		"Ethernet header only":       good()[:14],
		"shorter than Ethernet":      good()[:13],
		"empty":                      {},
		"longer than 1514":           udpFrame(t, mac, GatewayMAC, guest, toGW, make([]byte, maxUDPPayload+1)),
		"802.3 length frame":         mutate(func(f []byte) []byte { binary.BigEndian.PutUint16(f[12:14], 46); return f }),
		"VLAN tagged":                mutate(func(f []byte) []byte { binary.BigEndian.PutUint16(f[12:14], 0x8100); return f }),
	}
	for name, frame := range cases {
		before := u.Stats().TxDropped
		err := u.Send(frame)
		if !errors.Is(err, ErrDropped) {
			t.Errorf("%s: Send = %v, want ErrDropped", name, err)
		}
		t.Logf("%s: %v", name, err)
		if got := u.Stats().TxDropped; got != before+1 {
			t.Errorf("%s: TxDropped %d -> %d", name, before, got)
		}
	}
	// The checks let a correct frame through, so the ones above failed on
	// their defect; and only that one reaches the client.
	if err := u.Send(good()); err != nil {
		t.Fatalf("the unmutated frame: %v", err)
	}
	if got, _ := clientRead(t, c, 2*time.Second); string(got) != "must not arrive" {
		t.Errorf("client got %q first", got)
	}
	c.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
	if n, _, err := c.ReadFromUDPAddrPort(make([]byte, 2048)); err == nil {
		t.Errorf("client got a second datagram %d bytes", n)
	}
	if n, ok := u.Receive(make([]byte, MaxFrame)); ok {
		t.Errorf("dropped frames made the guest receive %d bytes", n)
	}
	if st := u.Stats(); st.TxFrames != 1 || st.TxDropped != uint64(len(cases)) {
		t.Errorf("stats %+v, want 1 carried and %d dropped", st, len(cases))
	}
}

func TestUserDropsOversizedDatagram(t *testing.T) {
	u, hosts := newUser(t, 1)
	c := newClient(t)
	c.WriteToUDPAddrPort(make([]byte, maxUDPPayload+1), hosts[0])
	c.WriteToUDPAddrPort(make([]byte, maxUDPPayload), hosts[0])
	if f := receiveFrame(t, u, 5*time.Second); len(f) != MaxFrame {
		t.Errorf("largest datagram made a %d-byte frame, want %d", len(f), MaxFrame)
	}
	if st := u.Stats(); st.RxDropped != 1 {
		t.Errorf("RxDropped %d, want 1 (the datagram too big for one frame)", st.RxDropped)
	}
}

// TestUserFlood floods a hostfwd with nobody receiving: the queue fills to
// its bound, the rest is dropped and counted, and what is kept is the
// oldest frames in order.
func TestUserFlood(t *testing.T) {
	u, hosts := newUser(t, 1)
	c := newClient(t)
	const sent = 10000
	for i := range sent {
		if _, err := c.WriteToUDPAddrPort(binary.BigEndian.AppendUint32(nil, uint32(i)), hosts[0]); err != nil {
			t.Fatal(err)
		}
	}
	// Wait until the reader has taken all the kernel kept (the count stops moving).
	deadline := time.Now().Add(10 * time.Second)
	last := uint64(0)
	for time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
		now := u.Stats().RxDropped + uint64(u.rx.len())
		if now == sent || (now == last && now > RxQueueFrames) {
			break
		}
		last = now
	}
	st := u.Stats()
	if q := u.rx.len(); q != RxQueueFrames {
		t.Fatalf("queue holds %d frames, want its bound %d", q, RxQueueFrames)
	}
	if st.RxDropped == 0 || st.RxDropped > sent-RxQueueFrames {
		t.Errorf("RxDropped %d, want 1..%d", st.RxDropped, sent-RxQueueFrames)
	}
	t.Logf("%d sent, %d queued, %d dropped by the backend, %d by the kernel", sent, RxQueueFrames, st.RxDropped, sent-RxQueueFrames-st.RxDropped)
	prev := -1
	for i := range RxQueueFrames {
		_, _, udp := udpOf(t, receiveFrame(t, u, time.Second))
		seq := int(binary.BigEndian.Uint32(udp.Payload))
		if seq <= prev {
			t.Fatalf("frame %d carries datagram %d after %d", i, seq, prev)
		}
		prev = seq
	}
	if _, ok := u.Receive(make([]byte, MaxFrame)); ok {
		t.Error("more frames than the queue holds")
	}
}

func TestUserBindLater(t *testing.T) {
	spec, err := ParseSpec("user,hostfwd=udp:127.0.0.1:0-:7000", "bind-later")
	if err != nil {
		t.Fatal(err)
	}
	b, err := New(spec)
	if err != nil {
		t.Fatal(err)
	}
	u := b.(*User)
	defer u.Close()
	if u.HostAddrs() != nil {
		t.Fatal("an unbound backend has host addresses")
	}
	// Unbound, it still answers ARP (no host network needed) ...
	if err := u.Send(arpFrame(t, layers.ARPRequest, spec.MAC, broadcastMAC, guestIP, gwIP, make([]byte, 6))); err != nil {
		t.Fatal(err)
	}
	receiveFrame(t, u, time.Second)
	// ... and a NAT entry handed over from elsewhere is known but cannot be used yet.
	client := newClient(t)
	clientAddr := client.LocalAddr().(*net.UDPAddr).AddrPort()
	if err := u.RestoreNAT([]NATMapping{{GatewayPort: natFirstPort + 7, HostFwd: 0, Client: clientAddr}}); err != nil {
		t.Fatal(err)
	}
	reply := udpFrame(t, spec.MAC, GatewayMAC, netip.AddrPortFrom(guestIP, 7000), netip.AddrPortFrom(gwIP, natFirstPort+7), []byte("after go-live"))
	if err := u.Send(reply); !errors.Is(err, ErrDropped) {
		t.Fatalf("Send before Bind = %v, want ErrDropped", err)
	}
	if err := u.Bind(); err != nil {
		t.Fatal(err)
	}
	if err := u.Bind(); err != nil {
		t.Fatalf("second Bind: %v", err)
	}
	if err := u.Send(reply); err != nil {
		t.Fatal(err)
	}
	if got, from := clientRead(t, client, 5*time.Second); string(got) != "after go-live" || from != u.HostAddrs()[0] {
		t.Errorf("client got %q from %s", got, from)
	}
	if err := u.Announce(); err != nil {
		t.Errorf("Announce: %v", err)
	}
	if err := u.Close(); err != nil {
		t.Fatal(err)
	}
	if err := u.Send(reply); !errors.Is(err, ErrClosed) {
		t.Errorf("Send after Close = %v", err)
	}
	if err := u.Bind(); !errors.Is(err, ErrClosed) {
		t.Errorf("Bind after Close = %v", err)
	}
}

func TestUserBindFailureLeavesNothingBound(t *testing.T) {
	taken := newClient(t)
	spec, _ := ParseSpec("user,hostfwd=udp:127.0.0.1:0-:1,hostfwd=udp:"+taken.LocalAddr().String()+"-:2", "busy")
	u, err := NewUser(spec)
	if err != nil {
		t.Fatal(err)
	}
	defer u.Close()
	if err := u.Bind(); err == nil || !bytes.Contains([]byte(err.Error()), []byte("hostfwd udp:"+taken.LocalAddr().String())) {
		t.Fatalf("Bind on a busy port = %v, want an error naming the hostfwd", err)
	}
	if u.HostAddrs() != nil {
		t.Error("a failed Bind left sockets bound")
	}
}

// FuzzUserSend feeds the guest's side arbitrary frames: never a panic, and
// every frame is either carried or dropped and counted.
func FuzzUserSend(f *testing.F) {
	mac := DefaultMAC("fuzz")
	f.Add(udpFrame(f, mac, GatewayMAC, netip.AddrPortFrom(guestIP, 7000), netip.AddrPortFrom(gwIP, natFirstPort), []byte("x")))
	f.Add(arpFrame(f, layers.ARPRequest, mac, broadcastMAC, guestIP, gwIP, make([]byte, 6)))
	f.Add([]byte{})
	spec, _ := ParseSpec("user,hostfwd=udp:127.0.0.1:0-:7000", "fuzz")
	u, err := NewUser(spec)
	if err != nil {
		f.Fatal(err)
	}
	u.RestoreNAT([]NATMapping{{GatewayPort: natFirstPort, Client: netip.MustParseAddrPort("127.0.0.1:9")}})
	f.Fuzz(func(t *testing.T, frame []byte) {
		before := u.Stats()
		err := u.Send(frame)
		after := u.Stats()
		if err != nil && (!errors.Is(err, ErrDropped) || after.TxDropped != before.TxDropped+1) {
			t.Fatalf("Send = %v, stats %+v -> %+v", err, before, after)
		}
		if err == nil && after.TxFrames != before.TxFrames+1 {
			t.Fatalf("carried frame not counted: %+v -> %+v", before, after)
		}
		u.Receive(make([]byte, MaxFrame))
	})
}
