package vnet

import (
	"crypto/sha256"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
)

// Kind names a backend.
type Kind int

const (
	KindUser Kind = iota + 1 // user networking: a gateway and UDP port forwarding, no privileges
	KindTap                  // a Linux TAP device
)

func (k Kind) String() string {
	switch k {
	case KindUser:
		return "user"
	case KindTap:
		return "tap"
	}
	return fmt.Sprintf("Kind(%d)", int(k))
}

// The guest's addresses under user networking (guests/ABI.md), and the
// defaults under TAP.
var (
	DefaultGuestAddr = netip.MustParsePrefix("10.0.2.15/24")
	DefaultGateway   = netip.MustParseAddr("10.0.2.2")
)

// Spec is a parsed --net flag: which backend, and what the VMM tells the
// guest about its NIC (the ABI's NIC info call).
type Spec struct {
	Kind Kind

	// MAC is the guest's MAC address: unicast, 6 bytes. By default it is
	// DefaultMAC of the VM id, so a primary and its backup agree on it.
	MAC net.HardwareAddr

	// Addr is the guest's IPv4 address with its prefix length; Gateway is
	// inside Addr's subnet and differs from Addr.Addr().
	Addr    netip.Prefix
	Gateway netip.Addr

	// HostFwds lists the user backend's forwarded ports (KindUser only).
	HostFwds []HostFwd

	// IfName is the TAP device's name (KindTap only).
	IfName string
}

// HostFwd forwards UDP datagrams sent to a host socket to a guest port; the
// guest's replies to the NAT'd source go back to the sender.
type HostFwd struct {
	Host      netip.AddrPort // the host socket's address; port 0 picks a free port (see (*User).HostAddrs)
	GuestPort uint16         // 1-65535
}

// String gives the hostfwd's --net form.
func (h HostFwd) String() string {
	return fmt.Sprintf("udp:%s-:%d", h.Host, h.GuestPort)
}

// String gives the spec's canonical --net form with every default spelled
// out: equal strings mean the guest sees the same NIC.
func (s Spec) String() string {
	var b strings.Builder
	b.WriteString(s.Kind.String())
	if s.Kind == KindTap {
		fmt.Fprintf(&b, ",ifname=%s,ip=%s,gw=%s", s.IfName, s.Addr, s.Gateway)
	}
	for _, h := range s.HostFwds {
		fmt.Fprintf(&b, ",hostfwd=%s", h)
	}
	fmt.Fprintf(&b, ",mac=%s", s.MAC)
	return b.String()
}

// DefaultMAC derives a guest MAC from a VM id: 52:54 (locally administered,
// unicast) then four bytes of the id's SHA-256. The same id gives the same
// MAC on every host, which a backup needs to take over the primary's
// address; the 52:54 prefix never equals GatewayMAC (52:55:...).
func DefaultMAC(vmID string) net.HardwareAddr {
	sum := sha256.Sum256([]byte("ftvm-guest-mac\x00" + vmID))
	return net.HardwareAddr{0x52, 0x54, sum[0], sum[1], sum[2], sum[3]}
}

// ParseSpec parses a --net flag:
//
//	user[,hostfwd=udp:[HOSTADDR]:HOSTPORT-:GUESTPORT]...[,mac=M]
//	tap,ifname=NAME[,ip=A.B.C.D/N][,gw=A.B.C.D][,mac=M]
//
// HOSTADDR defaults to 127.0.0.1 (an IPv6 address goes in brackets);
// HOSTPORT 0 picks a free port. Under user networking the guest is always
// 10.0.2.15/24 behind 10.0.2.2; under TAP those are the defaults. The MAC
// defaults to DefaultMAC(vmID).
func ParseSpec(s, vmID string) (Spec, error) {
	words := strings.Split(s, ",")
	spec := Spec{Addr: DefaultGuestAddr, Gateway: DefaultGateway}
	var allowed []string
	switch words[0] {
	case "user":
		spec.Kind, allowed = KindUser, []string{"hostfwd", "mac"}
	case "tap":
		spec.Kind, allowed = KindTap, []string{"ifname", "ip", "gw", "mac"}
	case "":
		return Spec{}, specErr(s, "empty: want user[,hostfwd=...] or tap,ifname=NAME[,...]")
	default:
		return Spec{}, specErr(s, "unknown kind %q: want user or tap", words[0])
	}
	seen := map[string]bool{}
	for _, w := range words[1:] {
		key, val, ok := strings.Cut(w, "=")
		if !ok {
			return Spec{}, specErr(s, "%q is not key=value", w)
		}
		if val == "" {
			return Spec{}, specErr(s, "%s= has no value", key)
		}
		if spec.Kind == KindUser && (key == "ip" || key == "gw") {
			return Spec{}, specErr(s, "%s: user networking always puts the guest at %s behind %s", key, DefaultGuestAddr, DefaultGateway)
		}
		if !slices.Contains(allowed, key) {
			return Spec{}, specErr(s, "unknown option %q (%s takes %s)", key, spec.Kind, strings.Join(allowed, ", "))
		}
		if seen[key] && key != "hostfwd" {
			return Spec{}, specErr(s, "%s given twice", key)
		}
		seen[key] = true
		var err error
		switch key {
		case "hostfwd":
			var h HostFwd
			h, err = parseHostFwd(val)
			spec.HostFwds = append(spec.HostFwds, h)
		case "ifname":
			spec.IfName, err = val, checkIfName(val)
		case "ip":
			spec.Addr, err = netip.ParsePrefix(val)
			if err == nil && (!spec.Addr.Addr().Is4() || spec.Addr.Bits() < 1 || spec.Addr.Bits() > 30) {
				err = fmt.Errorf("want an IPv4 address with a prefix length of 1-30, like 10.0.2.15/24")
			}
		case "gw":
			spec.Gateway, err = netip.ParseAddr(val)
			if err == nil && !spec.Gateway.Is4() {
				err = fmt.Errorf("want an IPv4 address")
			}
		case "mac":
			spec.MAC, err = parseMAC(val)
		}
		if err != nil {
			return Spec{}, specErr(s, "%s=%s: %v", key, val, err)
		}
	}
	if spec.Kind == KindTap && spec.IfName == "" {
		return Spec{}, specErr(s, "tap needs ifname=NAME")
	}
	if spec.MAC == nil {
		spec.MAC = DefaultMAC(vmID)
	}
	if err := spec.check(); err != nil {
		return Spec{}, specErr(s, "%v", err)
	}
	return spec, nil
}

// Validate reports whether the spec describes a NIC the backends can serve;
// ParseSpec's specs always do, hand-made ones are checked by New.
func (s Spec) Validate() error {
	if err := s.check(); err != nil {
		return fmt.Errorf("vnet: spec %s: %w", s, err)
	}
	return nil
}

func (s Spec) check() error {
	if s.Kind != KindUser && s.Kind != KindTap {
		return fmt.Errorf("unknown backend kind %v", s.Kind)
	}
	if len(s.MAC) != 6 || s.MAC[0]&1 != 0 {
		return fmt.Errorf("guest MAC %q is not a 6-byte unicast address", s.MAC)
	}
	if s.Kind == KindUser && macEqual(s.MAC, GatewayMAC) {
		return fmt.Errorf("guest MAC %s is the user gateway's", s.MAC)
	}
	if s.Kind == KindUser && (s.Addr != DefaultGuestAddr || s.Gateway != DefaultGateway) {
		return fmt.Errorf("user networking needs the guest at %s behind %s", DefaultGuestAddr, DefaultGateway)
	}
	if !s.Addr.IsValid() || !s.Addr.Addr().Is4() {
		return fmt.Errorf("guest address %s is not IPv4", s.Addr)
	}
	if isNetOrBroadcast(s.Addr, s.Addr.Addr()) {
		return fmt.Errorf("guest address %s is its subnet's network or broadcast address", s.Addr)
	}
	if !s.Addr.Contains(s.Gateway) || s.Gateway == s.Addr.Addr() || isNetOrBroadcast(s.Addr, s.Gateway) {
		return fmt.Errorf("gateway %s must be another address in the guest's subnet %s (give gw=)", s.Gateway, s.Addr.Masked())
	}
	if s.Kind == KindTap {
		if s.IfName == "" {
			return fmt.Errorf("tap needs an interface name")
		}
		if err := checkIfName(s.IfName); err != nil {
			return fmt.Errorf("ifname %q: %w", s.IfName, err)
		}
	}
	if s.Kind == KindTap && len(s.HostFwds) > 0 {
		return fmt.Errorf("hostfwd is for user networking only")
	}
	bound := map[netip.AddrPort]bool{}
	for _, h := range s.HostFwds {
		if h.Host.Port() != 0 && bound[h.Host] {
			return fmt.Errorf("host address %s is forwarded twice", h.Host)
		}
		if !h.Host.Addr().IsValid() || h.GuestPort == 0 {
			return fmt.Errorf("hostfwd %s: want a host address and a guest port 1-65535", h)
		}
		bound[h.Host] = true
	}
	return nil
}

func specErr(s, format string, args ...any) error {
	return fmt.Errorf("vnet: --net %q: %s", s, fmt.Sprintf(format, args...))
}

// parseHostFwd parses udp:[HOSTADDR]:HOSTPORT-:GUESTPORT.
func parseHostFwd(v string) (HostFwd, error) {
	proto, rest, ok := strings.Cut(v, ":")
	if !ok {
		return HostFwd{}, fmt.Errorf("want udp:[HOSTADDR]:HOSTPORT-:GUESTPORT")
	}
	if proto != "udp" {
		return HostFwd{}, fmt.Errorf("protocol %q: only udp is forwarded", proto)
	}
	hostPart, guestPart, ok := strings.Cut(rest, "-")
	if !ok {
		return HostFwd{}, fmt.Errorf("no '-' between host and guest: want udp:[HOSTADDR]:HOSTPORT-:GUESTPORT")
	}
	host, port, err := net.SplitHostPort(hostPart)
	if err != nil {
		return HostFwd{}, fmt.Errorf("host side %q: want [HOSTADDR]:HOSTPORT", hostPart)
	}
	addr := netip.AddrFrom4([4]byte{127, 0, 0, 1})
	if host != "" {
		if addr, err = netip.ParseAddr(host); err != nil || addr.Zone() != "" {
			return HostFwd{}, fmt.Errorf("host address %q is not an IP address", host)
		}
		addr = addr.Unmap()
	}
	hostPort, err := strconv.ParseUint(port, 10, 16)
	if err != nil {
		return HostFwd{}, fmt.Errorf("host port %q: want 0-65535", port)
	}
	guestPort, ok := strings.CutPrefix(guestPart, ":")
	if !ok {
		return HostFwd{}, fmt.Errorf("guest side %q: the guest address is implied, write -:GUESTPORT", guestPart)
	}
	gp, err := strconv.ParseUint(guestPort, 10, 16)
	if err != nil || gp == 0 {
		return HostFwd{}, fmt.Errorf("guest port %q: want 1-65535", guestPort)
	}
	return HostFwd{Host: netip.AddrPortFrom(addr, uint16(hostPort)), GuestPort: uint16(gp)}, nil
}

// isNetOrBroadcast reports whether a is the first or last address of
// prefix p, which no host may use.
func isNetOrBroadcast(p netip.Prefix, a netip.Addr) bool {
	b := a.As4()
	v := uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
	host := uint32(1)<<(32-p.Bits()) - 1
	return v&host == 0 || v&host == host
}

// checkIfName applies Linux's rules for an interface name (dev_valid_name).
func checkIfName(name string) error {
	if len(name) > 15 || name == "." || name == ".." || strings.ContainsAny(name, "/: \t\n") {
		return fmt.Errorf("not a valid interface name: at most 15 bytes, no '/', ':' or spaces")
	}
	return nil
}

func parseMAC(v string) (net.HardwareAddr, error) {
	mac, err := net.ParseMAC(v)
	if err != nil || len(mac) != 6 {
		return nil, fmt.Errorf("want a MAC like 52:54:00:12:34:56")
	}
	if mac[0]&1 != 0 || mac.String() == "00:00:00:00:00:00" {
		return nil, fmt.Errorf("the guest's MAC must be a unicast address")
	}
	if mac.String() == GatewayMAC.String() {
		return nil, fmt.Errorf("%s is the user gateway's MAC", mac)
	}
	return mac, nil
}

// New creates the backend of spec without touching the host network: call
// Bind to connect it (a backup does that when it goes live).
func New(spec Spec) (Backend, error) {
	if err := spec.Validate(); err != nil {
		return nil, err
	}
	switch spec.Kind {
	case KindUser:
		return NewUser(spec)
	case KindTap:
		return NewTap(spec)
	}
	return nil, fmt.Errorf("vnet: unknown backend kind %v", spec.Kind)
}

// Open creates the backend of spec and binds it.
func Open(spec Spec) (Backend, error) {
	b, err := New(spec)
	if err != nil {
		return nil, err
	}
	if err := b.Bind(); err != nil {
		b.Close()
		return nil, err
	}
	return b, nil
}
