// Package vmmtest holds what the KVM tests of several packages share. It
// imports nothing of ftvm, so that vmm's own tests can use it.
package vmmtest

import (
	"fmt"
	"os"
	"os/exec"
	"testing"
)

// RequireKVM skips a test without /dev/kvm, except in CI (CI=true), where
// a missing KVM is a failure: the KVM tests must never be skipped there.
func RequireKVM(t testing.TB) {
	t.Helper()
	f, err := os.OpenFile("/dev/kvm", os.O_RDWR, 0)
	if err == nil {
		f.Close()
		return
	}
	{
		if os.Getenv("CI") == "true" {
			t.Fatalf("KVM is required in CI: %v", err)
		}
		t.Skipf("no KVM: %v", err)
	}
}

// BuildGuests runs make in the guests directory at dir (relative to the
// test's package) and exits the test binary if it fails. Call it from
// TestMain.
func BuildGuests(dir string) {
	if out, err := exec.Command("make", "-s", "-C", dir).CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "building guests: %v\n%s", err, out)
		os.Exit(1)
	}
}
