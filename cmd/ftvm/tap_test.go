package main

import (
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
)

// requireNetns checks for what the namespace tests need: root, ip, a TUN
// device. In CI their absence is a failure, elsewhere a skip.
func requireNetns(t *testing.T) {
	t.Helper()
	var missing string
	if os.Geteuid() != 0 {
		missing = "root"
	} else if _, err := exec.LookPath("ip"); err != nil {
		missing = "the ip command (iproute2)"
	} else if _, err := os.Stat("/dev/net/tun"); err != nil {
		missing = "/dev/net/tun"
	}
	if missing != "" {
		if os.Getenv("CI") == "true" {
			t.Fatalf("network namespace tests need %s", missing)
		}
		t.Skipf("needs %s", missing)
	}
}

// sh runs a command and fails the test on error.
func sh(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// tapNet makes a VM host namespace (a bridge, the guest's TAP tap0 on it,
// loopback up for a pair's logging channel) and a client namespace linked
// to the bridge by a veth pair, the client at NET.1/24. The names are
// PREFIXh and PREFIXc with the test's pid; nothing is created in the root
// namespace, and both go when the test ends.
func tapNet(t *testing.T, prefix, net string) (host, client string) {
	t.Helper()
	host, client = fmt.Sprintf("%sh%d", prefix, os.Getpid()), fmt.Sprintf("%sc%d", prefix, os.Getpid())
	sh(t, "ip", "netns", "add", host)
	t.Cleanup(func() { exec.Command("ip", "netns", "del", host).Run() })
	sh(t, "ip", "netns", "add", client)
	t.Cleanup(func() { exec.Command("ip", "netns", "del", client).Run() })
	for _, c := range [][]string{
		{"-n", host, "link", "set", "lo", "up"},
		{"-n", host, "link", "add", "br0", "type", "bridge"},
		{"-n", host, "link", "set", "br0", "up"},
		{"-n", host, "tuntap", "add", "dev", "tap0", "mode", "tap"},
		{"-n", host, "link", "set", "tap0", "master", "br0", "up"},
		{"-n", client, "link", "add", "vc", "type", "veth", "peer", "name", "vh", "netns", host},
		{"-n", host, "link", "set", "vh", "master", "br0", "up"},
		{"-n", client, "addr", "add", net + ".1/24", "dev", "vc"},
		{"-n", client, "link", "set", "vc", "up"},
		{"-n", client, "link", "set", "lo", "up"},
	} {
		sh(t, append([]string{"ip"}, c...)...)
	}
	return host, client
}

// TestKVStoreOverTAP builds, inside namespaces the test creates, a VM host
// with a bridge and the VM's TAP device, and a client host linked to the
// bridge by a veth pair; the client talks to kvstore across the bridge.
// Nothing is created in the root namespace.
func TestKVStoreOverTAP(t *testing.T) {
	requireBackend(t)
	requireNetns(t)
	host, client := tapNet(t, "ftvm", "10.99.0")
	wait := startCmd(t, "ip", "netns", "exec", host, ftvmBin, "run", "--net", "tap,ifname=tap0,ip=10.99.0.2/24,gw=10.99.0.1",
		guest("kvstore"), "requests=6") // 3 clients: a HELLO and one operation each
	kvIn := func(args ...string) string {
		t.Helper()
		cmd := exec.Command("ip", append([]string{"netns", "exec", client, ftvmBin, "kv", "--addr", "10.99.0.2:7000", "--timeout", "20s"}, args...)...)
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("kv %v: %v\n%s", args, err, out)
		}
		return strings.TrimSpace(string(out))
	}
	kvIn("put", "color", "blue")
	kvIn("append", "color", "-green")
	if got := kvIn("get", "color"); got != "blue-green" {
		t.Fatalf("get color = %q", got)
	}
	out, errOut, status := wait()
	if status != 0 || !strings.Contains(out, "executed 6") {
		t.Fatalf("status %d\n%s%s", status, out, errOut)
	}
	if strings.Contains(sh(t, "ip", "link"), "tap0") {
		t.Fatal("a tap0 appeared in the root namespace")
	}
}
