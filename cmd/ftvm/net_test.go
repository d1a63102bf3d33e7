package main

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ftvm/ftvm/bench/kv"
	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
	"github.com/google/gopacket/pcapgo"
)

// freeUDPPort returns a UDP port on 127.0.0.1 that was free a moment ago.
func freeUDPPort(t *testing.T) int {
	t.Helper()
	c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	return c.LocalAddr().(*net.UDPAddr).Port
}

// startFTVM starts the binary in the background; wait returns its status.
func startFTVM(t *testing.T, args ...string) (wait func() (string, string, int)) {
	t.Helper()
	return startCmd(t, append([]string{ftvmBin}, args...)...)
}

// startCmd starts a command in the background; wait returns its status.
func startCmd(t *testing.T, args ...string) (wait func() (string, string, int)) {
	t.Helper()
	cmd := exec.Command(args[0], args[1:]...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	t.Cleanup(func() { cmd.Process.Kill(); <-done })
	return func() (string, string, int) {
		select {
		case <-done:
		case <-time.After(60 * time.Second):
			cmd.Process.Kill()
			<-done
			t.Fatalf("ftvm %v did not finish; stderr:\n%s", args, errb.String())
		}
		return out.String(), errb.String(), cmd.ProcessState.ExitCode()
	}
}

// kvSession runs a scripted kvstore session and checks every reply. It
// makes 8 requests (the client's HELLO and 7 operations) and returns the
// client's id.
func kvSession(t *testing.T, addr string) uint64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := kv.Dial(addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	steps := []struct {
		op         kv.Op
		key, value string
		want       string
	}{
		{kv.Get, "color", "", "NOTFOUND "},
		{kv.Put, "color", "blue", "OK "},
		{kv.Get, "color", "", "OK blue"},
		{kv.Append, "color", "-green", "OK "},
		{kv.Get, "color", "", "OK blue-green"},
		{kv.Put, "size", "10", "OK "},
		{kv.Get, "size", "", "OK 10"},
	}
	for i, s := range steps {
		r, err := c.Do(ctx, s.op, s.key, s.value)
		if err != nil {
			t.Fatalf("step %d %v: %v", i, s.op, err)
		}
		if got := r.Status + " " + r.Value; got != s.want {
			t.Fatalf("step %d %v %s: got %q want %q", i, s.op, s.key, got, s.want)
		}
	}
	return c.ID()
}

// TestKVStoreUserNet: a scripted session against kvstore under ftvm run
// with user networking, captured with --pcap; the capture parses with
// gopacket and holds the session's datagrams.
func TestKVStoreUserNet(t *testing.T) {
	requireBackend(t)
	port := freeUDPPort(t)
	pcap := filepath.Join(t.TempDir(), "kv.pcap")
	wait := startFTVM(t, "run", "--net", fmt.Sprintf("user,hostfwd=udp:127.0.0.1:%d-:7000", port), "--pcap", pcap,
		guest("kvstore"), "requests=8")
	id := kvSession(t, fmt.Sprintf("127.0.0.1:%d", port))
	out, errOut, status := wait()
	if status != 0 || !strings.Contains(out, "executed 8") {
		t.Fatalf("status %d\n%s%s", status, out, errOut)
	}
	f, err := os.Open(pcap)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	r, err := pcapgo.NewReader(f)
	if err != nil {
		t.Fatal(err)
	}
	var toGuest, fromGuest int
	src := gopacket.NewPacketSource(r, r.LinkType())
	for p := range src.Packets() {
		udp, ok := p.Layer(layers.LayerTypeUDP).(*layers.UDP)
		if !ok {
			continue
		}
		switch {
		case udp.DstPort == 7000:
			toGuest++
		case udp.SrcPort == 7000:
			fromGuest++
			if !bytes.HasPrefix(udp.Payload, []byte(fmt.Sprintf("%d ", id))) {
				t.Errorf("reply %q is not for client %d", udp.Payload, id)
			}
		}
	}
	// A retried request is a datagram too, and gets its reply again.
	if toGuest < 8 || fromGuest != toGuest {
		t.Fatalf("capture has %d requests and %d replies; want at least 8, one reply each", toGuest, fromGuest)
	}
}

// TestNICBadInput: descriptors outside RAM, runt and oversized frames,
// batches over the limit: each call fails cleanly and the NIC still works.
func TestNICBadInput(t *testing.T) {
	requireBackend(t)
	out, errOut, status := ftvm(t, "", "run", "--net", "user", guest("nicabuse"))
	if status != 0 || !strings.Contains(out, "all cases behaved") {
		t.Fatalf("status %d\n%s%s", status, out, errOut)
	}
	out, _, status = ftvm(t, "", "run", guest("nicabuse")) // no --net: no NIC
	if status != 1 || !strings.Contains(out, "no NIC") {
		t.Fatalf("without a NIC: status %d %q", status, out)
	}
}

// TestKVStoreRecordReplay records kvstore serving a session over user
// networking and replays it without any network: received packets come
// from the log, the replies are checked against it, the final state matches.
func TestKVStoreRecordReplay(t *testing.T) {
	requireBackend(t)
	port := freeUDPPort(t)
	log := filepath.Join(t.TempDir(), "kv.log")
	wait := startFTVM(t, "record", "--log", log, "--net", fmt.Sprintf("user,hostfwd=udp:127.0.0.1:%d-:7000", port),
		guest("kvstore"), "requests=8")
	kvSession(t, fmt.Sprintf("127.0.0.1:%d", port))
	recOut, errOut, status := wait()
	if status != 0 {
		t.Fatalf("record: status %d\n%s", status, errOut)
	}
	repOut, errOut, status := ftvm(t, "", "replay", "--log", log, guest("kvstore"))
	if status != 0 || repOut != recOut || !strings.Contains(errOut, "verified") || !strings.Contains(errOut, "net-rx=") {
		t.Fatalf("replay: status %d\nstdout %q (recorded %q)\n%s", status, repOut, recOut, errOut)
	}
}

// TestPairEcho: under ftvm pair, echo with stdin fed by the test prints
// exactly what ftvm run prints, and the backup verifies its replay.
func TestPairEcho(t *testing.T) {
	requireBackend(t)
	input := "first\nsecond line\nthird\n"
	want, _, status := ftvm(t, input, "run", guest("echo"))
	if status != 0 {
		t.Fatalf("run: status %d", status)
	}
	out, errOut, status := ftvm(t, input, "pair", guest("echo"))
	if status != 0 || out != want || !strings.Contains(errOut, "backup: verified") {
		t.Fatalf("pair: status %d\nstdout %q (run printed %q)\n%s", status, out, want, errOut)
	}
}

// TestPairKVStore: a scripted kvstore session under ftvm pair; the backup
// replays every exit, packets included, and verifies the final state.
func TestPairKVStore(t *testing.T) {
	requireBackend(t)
	port := freeUDPPort(t)
	wait := startFTVM(t, "pair", "--net", fmt.Sprintf("user,hostfwd=udp:127.0.0.1:%d-:7000", port), guest("kvstore"), "requests=8")
	kvSession(t, fmt.Sprintf("127.0.0.1:%d", port))
	out, errOut, status := wait()
	if status != 0 || !strings.Contains(out, "executed 8") || !strings.Contains(errOut, "backup: verified") || !strings.Contains(errOut, "net-rx=") {
		t.Fatalf("status %d\n%s%s", status, out, errOut)
	}
}

// TestNetClients drives netsink and netsource through the CLI's client
// modes under ftvm run.
func TestNetClients(t *testing.T) {
	requireBackend(t)
	for _, c := range []struct{ guest, mode string }{{"netsink", "sink"}, {"netsource", "source"}} {
		port := freeUDPPort(t)
		gport := map[string]string{"netsink": "7001", "netsource": "7002"}[c.guest]
		startFTVM(t, "run", "--net", fmt.Sprintf("user,hostfwd=udp:127.0.0.1:%d-:%s", port, gport), guest(c.guest))
		time.Sleep(200 * time.Millisecond)
		args := []string{"net", c.mode, "--addr", fmt.Sprintf("127.0.0.1:%d", port)}
		if c.mode == "sink" {
			args = append(args, "--duration", "500ms")
		} else {
			args = append(args, "--count", "2000")
		}
		out, errOut, status := ftvm(t, "", args...)
		if status != 0 || !strings.Contains(out, "Mbit/s") {
			t.Fatalf("%v: status %d %s %s", args, status, out, errOut)
		}
		t.Logf("%s: %s", c.guest, strings.TrimSpace(out))
	}
}

// TestKVStoreForgetsNoRequestTwice: at the client table's limit, a client
// the store forgot (1024 newer clients since its last request) that
// retransmits its last APPEND gets ERR nosession, and the APPEND does not
// run twice.
func TestKVStoreForgetsNoRequestTwice(t *testing.T) {
	requireBackend(t)
	port := freeUDPPort(t)
	// 1027 executed: 7's HELLO and APPEND, 1024 HELLOs, 9's GET (not the
	// nosession answer, which runs nothing).
	wait := startFTVM(t, "run", "--net", fmt.Sprintf("user,hostfwd=udp:127.0.0.1:%d-:7000", port), guest("kvstore"), "requests=1027")
	conn, err := net.Dial("udp", fmt.Sprintf("127.0.0.1:%d", port))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	buf := make([]byte, 2048)
	// ask sends req until a reply with req's ids arrives (the guest may
	// still be booting, and UDP may drop).
	ask := func(req string) string {
		t.Helper()
		f := strings.Fields(req)
		prefix := f[0] + " " + f[1] + " "
		for deadline := time.Now().Add(time.Minute); time.Now().Before(deadline); {
			conn.Write([]byte(req))
			try := time.Now().Add(300 * time.Millisecond)
			conn.SetReadDeadline(try)
			for {
				n, err := conn.Read(buf)
				if err != nil {
					// A timeout, or refused while nothing listens yet:
					// either way, resend once this try's time is up.
					time.Sleep(time.Until(try))
					break
				}
				if r := string(buf[:n]); strings.HasPrefix(r, prefix) {
					return r[len(prefix):]
				}
			}
		}
		t.Fatalf("no reply to %q", req)
		return ""
	}
	if r := ask("7 1 HELLO"); r != "OK" {
		t.Fatalf("HELLO: %q", r)
	}
	if r := ask("7 2 APPEND log x"); r != "OK" {
		t.Fatalf("APPEND: %q", r)
	}
	for c := 0; c < 1024; c++ {
		if r := ask(fmt.Sprintf("%d 1 HELLO", 1000+c)); r != "OK" {
			t.Fatalf("client %d HELLO: %q", 1000+c, r)
		}
	}
	if r := ask("7 2 APPEND log x"); r != "ERR nosession" {
		t.Fatalf("the forgotten client's retransmission got %q, want ERR nosession", r)
	}
	if r := ask("9 1 GET log"); r != "OK x" {
		t.Fatalf("log = %q after the retransmission, want \"OK x\" (the APPEND once)", r)
	}
	if out, errOut, status := wait(); status != 0 || !strings.Contains(out, "executed 1027") {
		t.Fatalf("status %d\n%s%s", status, out, errOut)
	}
}
