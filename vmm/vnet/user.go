package vnet

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
)

// GatewayMAC is the MAC address of the user backend's gateway 10.0.2.2.
var GatewayMAC = net.HardwareAddr{0x52, 0x55, 0x0a, 0x00, 0x02, 0x02}

// hostSocketBuffer is the receive buffer asked for each hostfwd socket, so a
// burst waits in the kernel rather than being lost before the reader runs.
const hostSocketBuffer = 1 << 20

// User is user-mode networking: the guest sits behind a gateway that the
// backend plays. The gateway answers ARP for itself and carries UDP between
// the hostfwd sockets and the guest through a NAT; it routes nothing else,
// so a guest can never reach an address the host did not forward.
type User struct {
	spec  Spec
	rx    *rxQueue
	tx    txCounters
	guest netip.Addr

	mu  sync.Mutex
	nat *natTable
	// onNewNAT is told of each mapping made (OnNewNATMapping).
	onNewNAT func(NATMapping)
	conns    []*net.UDPConn // one per HostFwds entry; nil until Bind
	closed   bool
	readers  sync.WaitGroup
}

// NewUser creates a user backend for spec (KindUser) with its sockets not
// yet bound: call Bind.
func NewUser(spec Spec) (*User, error) {
	if err := spec.Validate(); err != nil {
		return nil, err
	}
	if spec.Kind != KindUser {
		return nil, fmt.Errorf("vnet: NewUser given a %s spec", spec.Kind)
	}
	return &User{spec: spec, rx: newRxQueue(RxQueueFrames), guest: spec.Addr.Addr(), nat: newNATTable(NATEntries)}, nil
}

// Bind binds every hostfwd socket and starts reading them. If one fails,
// none stays bound.
func (u *User) Bind() error {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.closed {
		return ErrClosed
	}
	if u.conns != nil {
		return nil
	}
	conns := make([]*net.UDPConn, len(u.spec.HostFwds))
	for i, fwd := range u.spec.HostFwds {
		network := "udp4"
		if fwd.Host.Addr().Is6() {
			network = "udp6"
		}
		c, err := net.ListenUDP(network, net.UDPAddrFromAddrPort(fwd.Host))
		if err != nil {
			for _, c := range conns[:i] {
				c.Close()
			}
			return fmt.Errorf("vnet: hostfwd %s: %w", fwd, err)
		}
		_ = c.SetReadBuffer(hostSocketBuffer) // best effort: a smaller buffer only loses more of a burst
		conns[i] = c
	}
	u.conns = conns
	for i, c := range conns {
		u.readers.Add(1)
		go u.readHost(i, c)
	}
	return nil
}

// HostAddrs returns the address each hostfwd socket is bound to (the port
// the kernel picked where the spec said 0), or nil before Bind.
func (u *User) HostAddrs() []netip.AddrPort {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.conns == nil {
		return nil
	}
	addrs := make([]netip.AddrPort, len(u.conns))
	for i, c := range u.conns {
		addrs[i] = c.LocalAddr().(*net.UDPAddr).AddrPort()
	}
	return addrs
}

// readHost turns each datagram a hostfwd socket receives into a frame from
// the gateway to the guest.
func (u *User) readHost(fwd int, conn *net.UDPConn) {
	defer u.readers.Done()
	buf := make([]byte, 64<<10)
	out := gopacket.NewSerializeBuffer()
	guestPort := u.spec.HostFwds[fwd].GuestPort
	for {
		n, client, err := conn.ReadFromUDPAddrPort(buf)
		if errors.Is(err, net.ErrClosed) {
			return
		}
		if err != nil {
			continue // a datagram socket's errors are per datagram (ICMP reports and the like)
		}
		// Refuse before the NAT sees the client: a datagram that cannot be
		// queued must not evict a mapping that live clients still use.
		if n > maxUDPPayload || u.rx.len() == RxQueueFrames {
			u.rx.dropped.Add(1)
			continue
		}
		client = netip.AddrPortFrom(client.Addr().Unmap(), client.Port())
		u.mu.Lock()
		gwPort, made := u.nat.portFor(fwd, client)
		if made && u.onNewNAT != nil {
			u.onNewNAT(NATMapping{GatewayPort: gwPort, HostFwd: fwd, Client: client})
		}
		u.mu.Unlock()
		if err := u.buildToGuest(out, gwPort, guestPort, buf[:n]); err != nil {
			u.rx.dropped.Add(1)
			continue
		}
		u.rx.push(out.Bytes())
	}
}

// buildToGuest serializes an Ethernet/IPv4/UDP frame from the gateway's
// port gwPort to the guest's port guestPort.
func (u *User) buildToGuest(out gopacket.SerializeBuffer, gwPort, guestPort uint16, payload []byte) error {
	gw, guest := u.spec.Gateway.As4(), u.guest.As4()
	ip := layers.IPv4{
		Version:  4,
		TTL:      64,
		Flags:    layers.IPv4DontFragment, // every datagram fits one frame, so ID 0 is fine (RFC 6864)
		Protocol: layers.IPProtocolUDP,
		SrcIP:    gw[:],
		DstIP:    guest[:],
	}
	udp := layers.UDP{SrcPort: layers.UDPPort(gwPort), DstPort: layers.UDPPort(guestPort)}
	if err := udp.SetNetworkLayerForChecksum(&ip); err != nil {
		return err
	}
	return gopacket.SerializeLayers(out, serializeOpts,
		&layers.Ethernet{SrcMAC: GatewayMAC, DstMAC: u.spec.MAC, EthernetType: layers.EthernetTypeIPv4},
		&ip, &udp, gopacket.Payload(payload))
}

// Send takes a frame from the guest: an ARP request for the gateway is
// answered, a UDP datagram to a NAT'd gateway port goes to its client, and
// everything else is dropped.
func (u *User) Send(frame []byte) error {
	u.mu.Lock()
	closed := u.closed
	u.mu.Unlock()
	if closed {
		return ErrClosed
	}
	if err := u.carry(frame); err != nil {
		u.tx.dropped.Add(1)
		return fmt.Errorf("%w: %w", ErrDropped, err)
	}
	u.tx.carried(frame)
	return nil
}

func (u *User) carry(frame []byte) error {
	if len(frame) < MinFrame || len(frame) > MaxFrame {
		return fmt.Errorf("frame of %d bytes (want %d-%d)", len(frame), MinFrame, MaxFrame)
	}
	var eth layers.Ethernet
	if err := eth.DecodeFromBytes(frame, gopacket.NilDecodeFeedback); err != nil {
		return fmt.Errorf("Ethernet header: %w", err)
	}
	switch eth.EthernetType {
	case layers.EthernetTypeARP:
		return u.answerARP(&eth)
	case layers.EthernetTypeIPv4:
		return u.forwardUDP(&eth)
	}
	return fmt.Errorf("EtherType %v: user networking carries only ARP and IPv4", eth.EthernetType)
}

// answerARP queues the gateway's reply to the guest's ARP request for it.
func (u *User) answerARP(eth *layers.Ethernet) error {
	if !macEqual(eth.DstMAC, broadcastMAC) && !macEqual(eth.DstMAC, GatewayMAC) {
		return fmt.Errorf("ARP to %s, not to the gateway", eth.DstMAC)
	}
	p := eth.Payload
	// Checked before gopacket decodes: its ARP decoder computes the length
	// in uint8 and would slice past the end for large address sizes.
	if len(p) < 28 || binary.BigEndian.Uint16(p[0:2]) != uint16(layers.LinkTypeEthernet) ||
		binary.BigEndian.Uint16(p[2:4]) != uint16(layers.EthernetTypeIPv4) || p[4] != 6 || p[5] != 4 {
		return fmt.Errorf("ARP packet is not Ethernet/IPv4 or is short (%d bytes)", len(p))
	}
	var arp layers.ARP
	if err := arp.DecodeFromBytes(p, gopacket.NilDecodeFeedback); err != nil {
		return fmt.Errorf("ARP: %w", err)
	}
	target, _ := netip.AddrFromSlice(arp.DstProtAddress)
	if arp.Operation != layers.ARPRequest || target != u.spec.Gateway {
		return fmt.Errorf("ARP operation %d for %s: only requests for the gateway %s are answered", arp.Operation, target, u.spec.Gateway)
	}
	asker := net.HardwareAddr(arp.SourceHwAddress)
	if asker[0]&1 != 0 || macEqual(asker, make([]byte, 6)) {
		return fmt.Errorf("ARP request from a non-unicast MAC %s", asker)
	}
	gw := u.spec.Gateway.As4()
	reply, err := serialize(
		&layers.Ethernet{SrcMAC: GatewayMAC, DstMAC: asker, EthernetType: layers.EthernetTypeARP},
		&layers.ARP{
			AddrType:          layers.LinkTypeEthernet,
			Protocol:          layers.EthernetTypeIPv4,
			HwAddressSize:     6,
			ProtAddressSize:   4,
			Operation:         layers.ARPReply,
			SourceHwAddress:   GatewayMAC,
			SourceProtAddress: gw[:],
			DstHwAddress:      asker,
			DstProtAddress:    arp.SourceProtAddress,
		})
	if err != nil {
		return err
	}
	u.rx.push(reply) // a full queue loses the reply like any received frame (counted there); the guest asks again
	return nil
}

// forwardUDP checks an IPv4/UDP frame to the gateway and sends its payload
// to the client behind the destination port.
func (u *User) forwardUDP(eth *layers.Ethernet) error {
	if !macEqual(eth.DstMAC, GatewayMAC) {
		return fmt.Errorf("IPv4 frame to %s: only frames to the gateway %s are routed", eth.DstMAC, GatewayMAC)
	}
	var ip layers.IPv4
	if err := ip.DecodeFromBytes(eth.Payload, gopacket.NilDecodeFeedback); err != nil {
		return fmt.Errorf("IPv4: %w", err)
	}
	hlen := int(ip.IHL) * 4
	switch {
	case ip.Version != 4:
		return fmt.Errorf("IP version %d in an IPv4 frame", ip.Version)
	case int(ip.Length) > len(eth.Payload):
		return fmt.Errorf("IPv4 length %d exceeds the frame's %d bytes", ip.Length, len(eth.Payload))
	case !ipv4HeaderOK(eth.Payload[:hlen]):
		return fmt.Errorf("bad IPv4 header checksum")
	case ip.Flags&layers.IPv4MoreFragments != 0 || ip.FragOffset != 0:
		return fmt.Errorf("IPv4 fragment: user networking does not reassemble")
	}
	src, _ := netip.AddrFromSlice(ip.SrcIP)
	dst, _ := netip.AddrFromSlice(ip.DstIP)
	if dst != u.spec.Gateway {
		return fmt.Errorf("IPv4 to %s: user networking carries only UDP to the gateway %s", dst, u.spec.Gateway)
	}
	if src != u.guest {
		return fmt.Errorf("IPv4 from %s, not from the guest's %s", src, u.guest)
	}
	if ip.Protocol != layers.IPProtocolUDP {
		return fmt.Errorf("IP protocol %v: user networking carries only UDP", ip.Protocol)
	}
	seg := eth.Payload[hlen:ip.Length]
	if len(seg) < 8 || int(binary.BigEndian.Uint16(seg[4:6])) != len(seg) {
		return fmt.Errorf("UDP length field does not match the %d bytes IPv4 carries", len(seg))
	}
	if !udpChecksumOK(src, dst, seg) {
		return fmt.Errorf("bad UDP checksum")
	}
	var udp layers.UDP
	if err := udp.DecodeFromBytes(seg, gopacket.NilDecodeFeedback); err != nil {
		return fmt.Errorf("UDP: %w", err)
	}
	u.mu.Lock()
	m, ok := u.nat.lookup(uint16(udp.DstPort))
	var conn *net.UDPConn
	if ok && u.conns != nil {
		conn = u.conns[m.HostFwd]
	}
	u.mu.Unlock()
	if !ok {
		return fmt.Errorf("UDP to gateway port %d, which no client is mapped to", udp.DstPort)
	}
	if conn == nil {
		return fmt.Errorf("UDP to %s before the backend is bound", m.Client)
	}
	if _, err := conn.WriteToUDPAddrPort(udp.Payload, m.Client); err != nil {
		return fmt.Errorf("UDP to %s: %w", m.Client, err)
	}
	return nil
}

// Receive implements Backend.
func (u *User) Receive(buf []byte) (int, bool) { return u.rx.pop(buf) }

// Pending implements Backend.
func (u *User) Pending() <-chan struct{} { return u.rx.pending }

// Stats implements Backend.
func (u *User) Stats() Stats { return stats(u.rx, &u.tx) }

// Announce does nothing: the guest's only neighbour is the backend itself.
func (u *User) Announce() error { return nil }

// NATMappings returns the NAT table, least recently used first. With
// RestoreNAT it hands the table to another backend (a new backup), so the
// guest's replies to clients it already knows still reach them there.
func (u *User) NATMappings() []NATMapping {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.nat.mappings()
}

// OnNewNATMapping implements NATShare.
func (u *User) OnNewNATMapping(f func(NATMapping)) {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.onNewNAT = f
}

// RestoreNAT adds mappings taken by NATMappings (in that order) to the table.
func (u *User) RestoreNAT(ms []NATMapping) error {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.nat.restore(ms, len(u.spec.HostFwds))
}

// Close closes the hostfwd sockets and waits for their readers.
func (u *User) Close() error {
	u.mu.Lock()
	if u.closed {
		u.mu.Unlock()
		return nil
	}
	u.closed = true
	var errs []error
	for _, c := range u.conns {
		errs = append(errs, c.Close())
	}
	u.mu.Unlock()
	u.readers.Wait()
	return errors.Join(errs...)
}

func macEqual(a, b net.HardwareAddr) bool { return string(a) == string(b) }
