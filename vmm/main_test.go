package vmm

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ftvm/ftvm/vmm/backend"
	"github.com/ftvm/ftvm/vmm/vmmtest"
)

// TestMain builds the guests, which every KVM test runs.
func TestMain(m *testing.M) {
	vmmtest.BuildGuests("../guests")
	os.Exit(m.Run())
}

func requireBackend(t testing.TB) backend.Backend { t.Helper(); return vmmtest.Backend(t) }

func guestPath(name string) string { return filepath.Join("..", "guests", "build", name+".elf") }

func loadGuest(t testing.TB, name string) *Image {
	t.Helper()
	file, err := os.ReadFile(guestPath(name))
	if err != nil {
		t.Fatal(err)
	}
	img, err := LoadELF(file)
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	return img
}

// runGuest runs a guest in a live world with the given console input and
// returns its console output and how it ended. It fails the test after 20 s.
func runGuest(t testing.TB, name, input string, cfg Config) (string, Result, error) {
	t.Helper()
	requireBackend(t)
	img := loadGuest(t, name)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var out bytes.Buffer
	m, err := New(requireBackend(t), img, cfg, NewLiveWorld(ctx, strings.NewReader(input), &out))
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	res, err := m.Run(ctx)
	if errors.Is(err, ErrInterrupted) {
		t.Fatalf("%s did not finish in time; output so far:\n%s", name, out.String())
	}
	return out.String(), res, err
}
