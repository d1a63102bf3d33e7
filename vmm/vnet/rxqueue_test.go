package vnet

import (
	"bytes"
	"net/netip"
	"testing"
)

func frameOf(size int, mark byte) []byte {
	f := make([]byte, size)
	f[0] = mark
	return f
}

func hasToken(q *rxQueue) bool {
	select {
	case <-q.pending:
		q.pending <- struct{}{} // put it back: only looking
		return true
	default:
		return false
	}
}

func TestRxQueueOrderAndBound(t *testing.T) {
	q := newRxQueue(3)
	if hasToken(q) {
		t.Fatal("an empty queue has a pending token")
	}
	for i := range 5 {
		q.push(frameOf(60, byte(i)))
	}
	if q.len() != 3 || q.dropped.Load() != 2 {
		t.Fatalf("after 5 pushes into 3 slots: len %d dropped %d, want 3 and 2", q.len(), q.dropped.Load())
	}
	buf := make([]byte, MaxFrame)
	for i := range 3 {
		if !hasToken(q) {
			t.Fatalf("frame %d queued but no pending token", i)
		}
		n, ok := q.pop(buf)
		if !ok || n != 60 || buf[0] != byte(i) {
			t.Fatalf("pop %d = %d, %v, mark %d; want 60 bytes marked %d", i, n, ok, buf[0], i)
		}
	}
	if hasToken(q) {
		t.Error("a drained queue kept its pending token")
	}
	if _, ok := q.pop(buf); ok {
		t.Error("pop from an empty queue succeeded")
	}
	if q.frames.Load() != 3 || q.bytes.Load() != 180 {
		t.Errorf("counted %d frames %d bytes, want 3 and 180", q.frames.Load(), q.bytes.Load())
	}
}

func TestRxQueueRefusesBadSizes(t *testing.T) {
	q := newRxQueue(4)
	q.push(frameOf(MinFrame-1, 0))
	q.push(frameOf(MaxFrame+1, 0))
	q.push(frameOf(MaxFrame, 1))
	if q.len() != 1 || q.dropped.Load() != 2 {
		t.Fatalf("len %d dropped %d, want 1 and 2", q.len(), q.dropped.Load())
	}
	// A buffer that breaks the precondition loses the frame, never truncates it.
	if n, ok := q.pop(make([]byte, 100)); ok {
		t.Errorf("pop into a short buffer returned %d bytes", n)
	}
	if q.dropped.Load() != 3 || hasToken(q) {
		t.Errorf("dropped %d, token %v; want 3 and none", q.dropped.Load(), hasToken(q))
	}
}

func TestRxQueueReusesSlots(t *testing.T) {
	q := newRxQueue(2)
	buf := make([]byte, MaxFrame)
	q.push(frameOf(MaxFrame, 1))
	q.pop(buf)
	small := frameOf(64, 2)
	allocs := testing.AllocsPerRun(100, func() {
		q.push(small)
		q.pop(buf)
	})
	if allocs != 0 {
		t.Errorf("a steady push/pop allocates %.0f times", allocs)
	}
	q.push([]byte("0123456789abcdef"))
	n, _ := q.pop(buf)
	if !bytes.Equal(buf[:n], []byte("0123456789abcdef")) {
		t.Errorf("reused slot returned %q", buf[:n])
	}
}

func TestNATTableLRU(t *testing.T) {
	tab := newNATTable(3)
	c := func(i int) netip.AddrPort {
		return netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), uint16(10000+i))
	}
	port := func(fwd int, client netip.AddrPort, wantMade bool) uint16 {
		t.Helper()
		p, made := tab.portFor(fwd, client)
		if made != wantMade {
			t.Fatalf("portFor(%d, %v): made %v, want %v", fwd, client, made, wantMade)
		}
		return p
	}
	p0, p1, p2 := port(0, c(0), true), port(0, c(1), true), port(1, c(2), true)
	if p0 != natFirstPort || p1 != natFirstPort+1 || p2 != natFirstPort+2 {
		t.Fatalf("ports %d %d %d, want %d.. in order", p0, p1, p2, natFirstPort)
	}
	if again := port(0, c(0), false); again != p0 {
		t.Fatalf("a known client got port %d, had %d", again, p0)
	}
	// c(1) is now the least recently used: a fourth client takes its port.
	if p3 := port(0, c(3), true); p3 != p1 {
		t.Fatalf("fourth client got port %d, want the evicted %d", p3, p1)
	}
	if m, ok := tab.lookup(p1); !ok || m.Client != c(3) {
		t.Fatalf("port %d maps to %v, %v; want %v", p1, m, ok, c(3))
	}
	// The same client through another hostfwd is another entry.
	if p := port(1, c(0), true); p == p0 {
		t.Error("one client on two hostfwds shares a port")
	}
	if _, ok := tab.lookup(natFirstPort + 3); ok {
		t.Error("lookup outside the table succeeded")
	}

	saved := tab.mappings()
	other := newNATTable(3)
	if err := other.restore(saved, 2); err != nil {
		t.Fatal(err)
	}
	if got := other.mappings(); len(got) != len(saved) || got[0] != saved[0] || got[2] != saved[2] {
		t.Errorf("restored %v, want %v", got, saved)
	}
	if err := other.restore([]NATMapping{{GatewayPort: 80, Client: c(0)}}, 2); err == nil {
		t.Error("restore accepted a port outside the table")
	}
}

// TestNATMappingText: a mapping survives its text form, and malformed or
// non-canonical text is refused.
func TestNATMappingText(t *testing.T) {
	m := NATMapping{GatewayPort: 49153, HostFwd: 1, Client: netip.MustParseAddrPort("127.0.0.1:40000")}
	got, err := ParseNATMapping(m.String())
	if err != nil || got != m {
		t.Fatalf("ParseNATMapping(%q) = %+v, %v", m.String(), got, err)
	}
	for _, bad := range []string{"", "49153", "49153 1", "49153 1 nohost", "70000 1 127.0.0.1:1", "49153 1 127.0.0.1:1 junk", "049153 1 127.0.0.1:1", "-1 1 127.0.0.1:1"} {
		if _, err := ParseNATMapping(bad); err == nil {
			t.Errorf("ParseNATMapping(%q) accepted", bad)
		}
	}
}
