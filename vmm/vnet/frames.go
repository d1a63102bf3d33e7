package vnet

import (
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
)

// maxUDPPayload is the most a datagram can carry in one unfragmented frame:
// MTU 1500 less the IPv4 (20) and UDP (8) headers. Larger datagrams are
// dropped: the backend does not fragment.
const maxUDPPayload = 1500 - 20 - 8

var (
	broadcastMAC  = net.HardwareAddr{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}
	serializeOpts = gopacket.SerializeOptions{ComputeChecksums: true, FixLengths: true}
)

// GratuitousARP builds the frame that announces that ip is at mac: a
// broadcast ARP request whose sender and target address are both ip, the
// form Linux sends (arping -U) and that every neighbour cache accepts.
func GratuitousARP(ip netip.Addr, mac net.HardwareAddr) ([]byte, error) {
	if !ip.Is4() || len(mac) != 6 {
		return nil, fmt.Errorf("vnet: gratuitous ARP needs an IPv4 address and a 6-byte MAC, got %s and %q", ip, mac)
	}
	ip4 := ip.As4()
	return serialize(
		&layers.Ethernet{SrcMAC: mac, DstMAC: broadcastMAC, EthernetType: layers.EthernetTypeARP},
		&layers.ARP{
			AddrType:          layers.LinkTypeEthernet,
			Protocol:          layers.EthernetTypeIPv4,
			HwAddressSize:     6,
			ProtAddressSize:   4,
			Operation:         layers.ARPRequest,
			SourceHwAddress:   mac,
			SourceProtAddress: ip4[:],
			DstHwAddress:      make([]byte, 6),
			DstProtAddress:    ip4[:],
		})
}

// serialize builds a frame from layers, filling in lengths and checksums
// (and padding to the 60-byte Ethernet minimum).
func serialize(ls ...gopacket.SerializableLayer) ([]byte, error) {
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, serializeOpts, ls...); err != nil {
		return nil, fmt.Errorf("vnet: building a frame: %w", err)
	}
	return buf.Bytes(), nil
}

// onesSum adds b as big-endian 16-bit words into an RFC 1071 running sum.
func onesSum(sum uint32, b []byte) uint32 {
	for len(b) >= 2 {
		sum += uint32(binary.BigEndian.Uint16(b))
		b = b[2:]
	}
	if len(b) == 1 {
		sum += uint32(b[0]) << 8
	}
	return sum
}

// foldsToAllOnes reports whether a ones'-complement sum that includes its
// checksum field verifies: the folded sum of correct data is 0xffff.
func foldsToAllOnes(sum uint32) bool {
	for sum > 0xffff {
		sum = sum>>16 + sum&0xffff
	}
	return sum == 0xffff
}

// ipv4HeaderOK verifies an IPv4 header's checksum.
func ipv4HeaderOK(header []byte) bool {
	return foldsToAllOnes(onesSum(0, header))
}

// udpChecksumOK verifies a UDP checksum over the IPv4 pseudo-header. Zero
// means the sender computed none, which IPv4 allows.
func udpChecksumOK(src, dst netip.Addr, udp []byte) bool {
	if binary.BigEndian.Uint16(udp[6:8]) == 0 {
		return true
	}
	s, d := src.As4(), dst.As4()
	sum := onesSum(0, s[:])
	sum = onesSum(sum, d[:])
	sum += uint32(layers.IPProtocolUDP) + uint32(len(udp))
	return foldsToAllOnes(onesSum(sum, udp))
}
