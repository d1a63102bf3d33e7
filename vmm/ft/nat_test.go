package ft

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/ftvm/ftvm/logchannel"
	"github.com/ftvm/ftvm/vmm"
	"github.com/ftvm/ftvm/vmm/vnet"
)

// udpClient is a kvstore client on a socket of its own, so that the test
// sees which client a reply reaches.
type udpClient struct {
	t    *testing.T
	conn *net.UDPConn
	buf  []byte
}

func newUDPClient(t *testing.T, addr string) *udpClient {
	raddr, err := net.ResolveUDPAddr("udp", addr)
	if err != nil {
		t.Fatal(err)
	}
	conn, err := net.DialUDP("udp", nil, raddr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return &udpClient{t: t, conn: conn, buf: make([]byte, 2048)}
}

func (c *udpClient) addr() netip.AddrPort {
	return c.conn.LocalAddr().(*net.UDPAddr).AddrPort()
}

// ask sends req until the reply with req's ids arrives on this socket (the
// guest may be between primaries; UDP may drop) and returns the rest.
func (c *udpClient) ask(req string) string {
	c.t.Helper()
	f := strings.Fields(req)
	prefix := f[0] + " " + f[1] + " "
	for deadline := time.Now().Add(time.Minute); time.Now().Before(deadline); {
		c.conn.Write([]byte(req))
		try := time.Now().Add(200 * time.Millisecond)
		c.conn.SetReadDeadline(try)
		for {
			n, err := c.conn.Read(c.buf)
			if err != nil {
				time.Sleep(time.Until(try)) // refused while nobody is bound: wait out the try
				break
			}
			r := string(c.buf[:n])
			if strings.HasPrefix(r, prefix) {
				return r[len(prefix):]
			}
			if !strings.HasPrefix(r, f[0]+" ") {
				c.t.Fatalf("%q got a reply for another client: %q", req, r)
			}
			// A late answer to a retransmission of an earlier request.
		}
	}
	c.t.Fatalf("no reply to %q", req)
	return ""
}

// TestFailoverKeepsTheNAT: client A talks to kvstore through the primary's
// user-network NAT; the primary dies; client B is the first to reach the
// new primary. B must not get A's gateway port (the guest knows A by it),
// and A, asking again, must get its own answer on its own socket. The
// backup used to go live with an empty NAT table and give A's port to B.
func TestFailoverKeepsTheNAT(t *testing.T) {
	b := requireBackend(t)
	img := loadImage(t, "kvstore")
	probe, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	port := probe.LocalAddr().(*net.UDPAddr).Port
	probe.Close()
	spec, err := vnet.ParseSpec(fmt.Sprintf("user,hostfwd=udp:127.0.0.1:%d-:7000", port), "test")
	if err != nil {
		t.Fatal(err)
	}
	cfg := vmm.Config{NIC: &vmm.NICConfig{Addr: spec.Addr, Gateway: spec.Gateway}}
	copy(cfg.NIC.MAC[:], spec.MAC)
	pnet, err := vnet.Open(spec)
	if err != nil {
		t.Fatal(err)
	}
	defer pnet.Close()
	bnet, err := vnet.New(spec)
	if err != nil {
		t.Fatal(err)
	}
	defer bnet.Close()

	ln, arb, ctx := pairSetup(t)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	pch, bch := channels(t, "test", logchannel.Config{})
	common := func(role string, nic vnet.Backend, ch logchannel.Config, m *Metrics) Common {
		return Common{Backend: b, Image: img, Config: cfg, VMID: "test", Generation: 1, Arbiter: arb, Claimant: role, Net: nic,
			Stdin: strings.NewReader(""), Stdout: io.Discard, Channel: ch, Metrics: m, Logf: func(f string, a ...any) { t.Logf(role+": "+f, a...) }}
	}
	pm, bm := NewMetrics(), NewMetrics()
	backupDone := make(chan error, 1)
	go func() {
		_, err := RunBackup(ctx, BackupOptions{Common: common("backup", bnet, bch, bm), Listener: ln})
		backupDone <- err
	}()
	pctx, killPrimary := context.WithCancel(ctx)
	primaryDone := make(chan error, 1)
	go func() {
		_, err := RunPrimary(pctx, PrimaryOptions{Common: common("primary", pnet, pch, pm), BackupAddr: ln.Addr().String()})
		primaryDone <- err
	}()

	a := newUDPClient(t, fmt.Sprintf("127.0.0.1:%d", port))
	if r := a.ask("1 1 HELLO"); r != "OK" {
		t.Fatalf("A's HELLO: %q", r)
	}
	if r := a.ask("1 2 PUT k for-A-only"); r != "OK" {
		t.Fatalf("A's PUT: %q", r)
	}
	var aPort uint16
	for _, m := range pnet.(vnet.NATShare).NATMappings() {
		if m.Client == a.addr() {
			aPort = m.GatewayPort
		}
	}
	if aPort == 0 {
		t.Fatalf("A has no mapping on the primary: %v", pnet.(vnet.NATShare).NATMappings())
	}
	for deadline := time.Now().Add(time.Minute); metric(t, bm, "ftvm_log_entries_received_total") < metric(t, pm, "ftvm_log_entries_sent_total"); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the backup never received the primary's log")
		}
	}
	killPrimary()
	<-primaryDone
	pnet.Close() // the dead host's sockets go with it

	bc := newUDPClient(t, fmt.Sprintf("127.0.0.1:%d", port))
	if r := bc.ask("2 1 HELLO"); r != "OK" {
		t.Fatalf("B's HELLO on the new primary: %q", r)
	}
	var bPort, aPortNow uint16
	for _, m := range bnet.(vnet.NATShare).NATMappings() {
		switch m.Client {
		case a.addr():
			aPortNow = m.GatewayPort
		case bc.addr():
			bPort = m.GatewayPort
		}
	}
	if aPortNow != aPort || bPort == aPort || bPort == 0 {
		t.Fatalf("after failover A has gateway port %d (had %d) and B %d: the NAT did not survive", aPortNow, aPort, bPort)
	}
	if r := a.ask("1 3 GET k"); r != "OK for-A-only" {
		t.Fatalf("A's GET after failover: %q", r)
	}
	cancel()
	<-backupDone
}
