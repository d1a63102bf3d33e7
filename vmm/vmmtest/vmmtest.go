// Package vmmtest holds what the guest tests of several packages share: the
// backend they run on, and the guest build. It imports nothing of vmm, so
// that vmm's own tests can use it.
package vmmtest

import (
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/ftvm/ftvm/vmm/backend"
	"github.com/ftvm/ftvm/vmm/backends"
)

// BackendName is the backend this test process runs guests on:
// $FTVM_BACKEND, or "auto" (KVM where it is usable, else ptrace). The
// ftvm processes that tests start inherit the variable, so they agree.
func BackendName() string {
	if b := os.Getenv("FTVM_BACKEND"); b != "" {
		return b
	}
	return "auto"
}

// Backend returns the backend for this test's guests. A backend that is
// not usable skips the test with the reason, except in CI (CI=true), where
// it is a failure: CI must run every guest test.
func Backend(t testing.TB) backend.Backend {
	t.Helper()
	b, err := backends.Choose(BackendName())
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("no backend for the guest tests in CI: %v", err)
		}
		t.Skipf("no backend for the guest tests: %v", err)
	}
	return b
}

// ForEachBackend runs f as a subtest on every backend usable here, and
// logs each one that is not, with why: a contract must hold on all.
func ForEachBackend(t *testing.T, f func(t *testing.T, b backend.Backend)) {
	t.Helper()
	ran := 0
	for _, b := range backends.All {
		if err := b.Usable(); err != nil {
			t.Logf("backend %s is not usable here, so not checked: %v", b.Name(), err)
			continue
		}
		ran++
		t.Run(b.Name(), func(t *testing.T) { f(t, b) })
	}
	if ran == 0 {
		t.Fatal("no backend is usable here")
	}
}

// BuildGuests runs make in the guests directory at dir (relative to the
// test's package) and exits the test binary if it fails. Call it from
// TestMain. It also says which backend the package's guest tests use.
func BuildGuests(dir string) {
	if out, err := exec.Command("make", "-s", "-C", dir).CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "building guests: %v\n%s", err, out)
		os.Exit(1)
	}
	if b, err := backends.Choose(BackendName()); err == nil {
		fmt.Fprintf(os.Stderr, "vmmtest: guest tests run on the %s backend (FTVM_BACKEND=%s; usable here: %s)\n", b.Name(), BackendName(), strings.Join(backends.Usable(), ", "))
	} else {
		fmt.Fprintf(os.Stderr, "vmmtest: %v\n", err)
	}
}
