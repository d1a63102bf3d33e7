package vnet

import (
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
)

// Helpers for tests that play the guest: build its frames with gopacket and
// check the frames it receives.

var (
	guestIP = netip.MustParseAddr("10.0.2.15")
	gwIP    = netip.MustParseAddr("10.0.2.2")
)

func ip4(a netip.Addr) net.IP { b := a.As4(); return b[:] }

// udpFrame builds an Ethernet/IPv4/UDP frame with correct lengths and checksums.
func udpFrame(t testing.TB, srcMAC, dstMAC net.HardwareAddr, src, dst netip.AddrPort, payload []byte) []byte {
	t.Helper()
	ip := &layers.IPv4{Version: 4, TTL: 64, Protocol: layers.IPProtocolUDP, SrcIP: ip4(src.Addr()), DstIP: ip4(dst.Addr())}
	udp := &layers.UDP{SrcPort: layers.UDPPort(src.Port()), DstPort: layers.UDPPort(dst.Port())}
	if err := udp.SetNetworkLayerForChecksum(ip); err != nil {
		t.Fatal(err)
	}
	f, err := serialize(&layers.Ethernet{SrcMAC: srcMAC, DstMAC: dstMAC, EthernetType: layers.EthernetTypeIPv4},
		ip, udp, gopacket.Payload(payload))
	if err != nil {
		t.Fatal(err)
	}
	return f
}

// arpFrame builds an ARP packet from (mac, ip) about target.
func arpFrame(t testing.TB, op uint16, srcMAC, dstMAC net.HardwareAddr, sender, target netip.Addr, targetMAC net.HardwareAddr) []byte {
	t.Helper()
	f, err := serialize(&layers.Ethernet{SrcMAC: srcMAC, DstMAC: dstMAC, EthernetType: layers.EthernetTypeARP},
		&layers.ARP{AddrType: layers.LinkTypeEthernet, Protocol: layers.EthernetTypeIPv4, HwAddressSize: 6, ProtAddressSize: 4,
			Operation: op, SourceHwAddress: srcMAC, SourceProtAddress: ip4(sender), DstHwAddress: targetMAC, DstProtAddress: ip4(target)})
	if err != nil {
		t.Fatal(err)
	}
	return f
}

// receiveFrame waits (bounded) on Pending for the next frame.
func receiveFrame(t testing.TB, b Backend, timeout time.Duration) []byte {
	t.Helper()
	buf := make([]byte, MaxFrame)
	deadline := time.After(timeout)
	for {
		if n, ok := b.Receive(buf); ok {
			return buf[:n]
		}
		select {
		case <-b.Pending():
		case <-deadline:
			t.Fatalf("no frame within %v", timeout)
		}
	}
}

// udpOf decodes a frame as Ethernet/IPv4/UDP, checking the checksums the
// sender filled in against gopacket's own computation.
func udpOf(t testing.TB, frame []byte) (*layers.Ethernet, *layers.IPv4, *layers.UDP) {
	t.Helper()
	p := gopacket.NewPacket(frame, layers.LayerTypeEthernet, gopacket.Default)
	eth, _ := p.Layer(layers.LayerTypeEthernet).(*layers.Ethernet)
	ip, _ := p.Layer(layers.LayerTypeIPv4).(*layers.IPv4)
	udp, _ := p.Layer(layers.LayerTypeUDP).(*layers.UDP)
	if eth == nil || ip == nil || udp == nil || p.ErrorLayer() != nil {
		t.Fatalf("frame is not Ethernet/IPv4/UDP: %v", p)
	}
	// Re-serialize copies with checksums computed by gopacket and compare.
	ipCopy, udpCopy := *ip, *udp
	if err := udpCopy.SetNetworkLayerForChecksum(&ipCopy); err != nil {
		t.Fatal(err)
	}
	if _, err := serialize(&layers.Ethernet{SrcMAC: eth.SrcMAC, DstMAC: eth.DstMAC, EthernetType: eth.EthernetType},
		&ipCopy, &udpCopy, gopacket.Payload(udp.Payload)); err != nil {
		t.Fatal(err)
	}
	if ipCopy.Checksum != ip.Checksum || udpCopy.Checksum != udp.Checksum {
		t.Fatalf("checksums IP %#x UDP %#x, want %#x %#x", ip.Checksum, udp.Checksum, ipCopy.Checksum, udpCopy.Checksum)
	}
	if int(ip.Length) != 20+8+len(udp.Payload) || int(udp.Length) != 8+len(udp.Payload) {
		t.Fatalf("lengths IP %d UDP %d for %d payload bytes", ip.Length, udp.Length, len(udp.Payload))
	}
	return eth, ip, udp
}

func arpOf(t testing.TB, frame []byte) (*layers.Ethernet, *layers.ARP) {
	t.Helper()
	p := gopacket.NewPacket(frame, layers.LayerTypeEthernet, gopacket.Default)
	eth, _ := p.Layer(layers.LayerTypeEthernet).(*layers.Ethernet)
	arp, _ := p.Layer(layers.LayerTypeARP).(*layers.ARP)
	if eth == nil || arp == nil {
		t.Fatalf("frame is not Ethernet/ARP: %v", p)
	}
	return eth, arp
}

func TestGratuitousARPFrame(t *testing.T) {
	mac := DefaultMAC("garp")
	ip := netip.MustParseAddr("10.99.0.2")
	f, err := GratuitousARP(ip, mac)
	if err != nil {
		t.Fatal(err)
	}
	eth, arp := arpOf(t, f)
	if eth.DstMAC.String() != "ff:ff:ff:ff:ff:ff" || eth.SrcMAC.String() != mac.String() ||
		arp.Operation != layers.ARPRequest || net.IP(arp.SourceProtAddress).String() != "10.99.0.2" ||
		net.IP(arp.DstProtAddress).String() != "10.99.0.2" || net.HardwareAddr(arp.SourceHwAddress).String() != mac.String() {
		t.Errorf("gratuitous ARP = %v %v", eth, arp)
	}
	if _, err := GratuitousARP(netip.MustParseAddr("::1"), mac); err == nil {
		t.Error("GratuitousARP accepted an IPv6 address")
	}
}
