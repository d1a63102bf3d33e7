package vnet

import (
	"net/netip"
	"strings"
	"testing"
)

func TestParseSpec(t *testing.T) {
	mac := DefaultMAC("vm1")
	tests := []struct {
		in      string
		want    string // Spec.String(), when the input is good
		wantErr string // a part of the error, when it is bad
	}{
		{in: "user", want: "user,mac=" + mac.String()},
		{in: "user,hostfwd=udp:127.0.0.1:7000-:7000",
			want: "user,hostfwd=udp:127.0.0.1:7000-:7000,mac=" + mac.String()},
		{in: "user,hostfwd=udp::7000-:8000", want: "user,hostfwd=udp:127.0.0.1:7000-:8000,mac=" + mac.String()},
		{in: "user,hostfwd=udp:127.0.0.1:7000-:7000,hostfwd=udp:127.0.0.1:7001-:7001",
			want: "user,hostfwd=udp:127.0.0.1:7000-:7000,hostfwd=udp:127.0.0.1:7001-:7001,mac=" + mac.String()},
		{in: "user,hostfwd=udp:[::1]:7000-:7000", want: "user,hostfwd=udp:[::1]:7000-:7000,mac=" + mac.String()},
		{in: "user,hostfwd=udp:0.0.0.0:0-:53", want: "user,hostfwd=udp:0.0.0.0:0-:53,mac=" + mac.String()},
		{in: "user,mac=02:00:00:00:00:01", want: "user,mac=02:00:00:00:00:01"},
		{in: "tap,ifname=tap0", want: "tap,ifname=tap0,ip=10.0.2.15/24,gw=10.0.2.2,mac=" + mac.String()},
		{in: "tap,ifname=tap0,ip=192.168.7.2/24,gw=192.168.7.1",
			want: "tap,ifname=tap0,ip=192.168.7.2/24,gw=192.168.7.1,mac=" + mac.String()},

		{in: "", wantErr: "empty"},
		{in: "slirp", wantErr: `unknown kind "slirp"`},
		{in: "user,hostfwd=tcp::22-:22", wantErr: `protocol "tcp": only udp`},
		{in: "user,hostfwd=udp:127.0.0.1:7000", wantErr: "no '-'"},
		{in: "user,hostfwd=udp:127.0.0.1:70000-:7000", wantErr: `host port "70000"`},
		{in: "user,hostfwd=udp:localhost:7000-:7000", wantErr: `host address "localhost"`},
		{in: "user,hostfwd=udp:127.0.0.1:7000-:0", wantErr: `guest port "0"`},
		{in: "user,hostfwd=udp:127.0.0.1:7000-10.0.2.15:7000", wantErr: "write -:GUESTPORT"},
		{in: "user,hostfwd=udp:127.0.0.1:7000-:7000,hostfwd=udp:127.0.0.1:7000-:7001", wantErr: "forwarded twice"},
		{in: "user,hostfwd", wantErr: `"hostfwd" is not key=value`},
		{in: "user,ip=10.0.0.2/24", wantErr: "always puts the guest at 10.0.2.15/24"},
		{in: "user,ifname=tap0", wantErr: `unknown option "ifname" (user takes hostfwd, mac)`},
		{in: "user,mac=01:00:5e:00:00:01", wantErr: "unicast"},
		{in: "user,mac=52:55:0a:00:02:02", wantErr: "gateway's MAC"},
		{in: "user,mac=zz", wantErr: "mac=zz"},
		{in: "tap", wantErr: "tap needs ifname"},
		{in: "tap,ifname=a/b", wantErr: "not a valid interface name"},
		{in: "tap,ifname=abcdefghijklmnop", wantErr: "not a valid interface name"},
		{in: "tap,ifname=tap0,ifname=tap1", wantErr: "ifname given twice"},
		{in: "tap,ifname=tap0,ip=192.168.7.2/24", wantErr: "gateway 10.0.2.2 must be another address in the guest's subnet 192.168.7.0/24"},
		{in: "tap,ifname=tap0,ip=10.0.2.15", wantErr: "ip=10.0.2.15"},
		{in: "tap,ifname=tap0,ip=fd00::2/64", wantErr: "IPv4"},
		{in: "tap,ifname=tap0,gw=10.0.2.15", wantErr: "another address"},
		{in: "tap,ifname=tap0,gw=nope", wantErr: "gw=nope"},
		{in: "tap,ifname=tap0,ip=192.168.7.0/24,gw=192.168.7.1", wantErr: "network or broadcast"},
		{in: "tap,ifname=tap0,ip=192.168.7.2/24,gw=192.168.7.255", wantErr: "another address"},
		{in: "tap,ifname=tap0,hostfwd=udp::1-:1", wantErr: `unknown option "hostfwd"`},
		{in: "tap,ifname=tap0,", wantErr: `"" is not key=value`},
		{in: "user,mac=", wantErr: "mac= has no value"},
	}
	for _, tt := range tests {
		spec, err := ParseSpec(tt.in, "vm1")
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) || !strings.Contains(err.Error(), "vnet: --net") {
				t.Errorf("ParseSpec(%q) = %v, want an error containing %q", tt.in, err, tt.wantErr)
			}
			continue
		}
		if err != nil {
			t.Errorf("ParseSpec(%q): %v", tt.in, err)
			continue
		}
		if got := spec.String(); got != tt.want {
			t.Errorf("ParseSpec(%q) = %s, want %s", tt.in, got, tt.want)
		}
		// The canonical form parses back to itself.
		again, err := ParseSpec(spec.String(), "other-vm")
		if err != nil || again.String() != spec.String() {
			t.Errorf("ParseSpec(%q) = %v, %v; want %s", spec.String(), again, err, spec)
		}
	}
}

func TestParseSpecUserAddresses(t *testing.T) {
	spec, err := ParseSpec("user,hostfwd=udp::7000-:7001", "vm1")
	if err != nil {
		t.Fatal(err)
	}
	if spec.Kind != KindUser || spec.Addr != netip.MustParsePrefix("10.0.2.15/24") || spec.Gateway != netip.MustParseAddr("10.0.2.2") {
		t.Errorf("user spec = %+v, want the guest at 10.0.2.15/24 behind 10.0.2.2", spec)
	}
	want := HostFwd{Host: netip.MustParseAddrPort("127.0.0.1:7000"), GuestPort: 7001}
	if len(spec.HostFwds) != 1 || spec.HostFwds[0] != want {
		t.Errorf("hostfwds = %v, want [%v]", spec.HostFwds, want)
	}
}

func TestDefaultMAC(t *testing.T) {
	a, b := DefaultMAC("vm-a"), DefaultMAC("vm-b")
	if a.String() != DefaultMAC("vm-a").String() {
		t.Error("DefaultMAC is not deterministic")
	}
	if a.String() == b.String() {
		t.Errorf("two VM ids got the same MAC %s", a)
	}
	for _, m := range [][]byte{a, b} {
		if len(m) != 6 || m[0] != 0x52 || m[1] != 0x54 || m[0]&1 != 0 || m[0]&2 == 0 {
			t.Errorf("DefaultMAC = %x, want 52:54:... (unicast, locally administered)", m)
		}
	}
}

func TestNewRejectsBadSpec(t *testing.T) {
	spec, _ := ParseSpec("user", "vm")
	spec.MAC = nil
	if _, err := New(spec); err == nil {
		t.Error("New accepted a spec without a MAC")
	}
	spec, _ = ParseSpec("user", "vm")
	spec.Addr = netip.MustParsePrefix("192.168.0.2/24")
	if _, err := NewUser(spec); err == nil {
		t.Error("NewUser accepted a guest outside 10.0.2.15/24")
	}
	if _, err := NewTap(spec); err == nil {
		t.Error("NewTap accepted a user spec")
	}
}
