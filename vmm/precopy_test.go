package vmm

import (
	"bytes"
	"context"
	"errors"
	"io"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ftvm/ftvm/replay"
	"github.com/ftvm/ftvm/vmm/backend"
	"github.com/ftvm/ftvm/vmm/backends"
	"github.com/ftvm/ftvm/vmm/vmmtest"
)

// markerWorld is a scripted world whose console input is empty until
// deliver is set, then holds marker once (delivered is closed when the
// guest has read it). busy is closed once the guest has asked for input
// 100 times: the dirty guest has then written its region several times.
type markerWorld struct {
	scriptedWorld
	marker    string
	deliver   atomic.Bool
	once      sync.Once
	delivered chan struct{}
	reads     int
	busy      chan struct{}
}

func newMarkerWorld(marker string) *markerWorld {
	return &markerWorld{marker: marker, delivered: make(chan struct{}), busy: make(chan struct{})}
}

func (w *markerWorld) ConsoleRead(_ replay.ExecPoint, buf []byte) (int, bool, error) {
	if w.reads++; w.reads == 100 {
		close(w.busy)
	}
	n := 0
	if w.deliver.Load() {
		w.once.Do(func() { n = copy(buf, w.marker); close(w.delivered) })
	}
	return n, false, nil
}

// precopyResult is a transfer's outcome: the state the receiver built, a
// snapshot taken in the same pause, and the figures.
type precopyResult struct {
	got, want *State
	stats     PrecopyStats
}

// transfer runs img with cfg on b and, once the guest is busy, pre-copies
// it to a receiver while it runs.
func transfer(t testing.TB, b backend.Backend, img *Image, cfg Config, world *markerWorld, opt PrecopyOptions) precopyResult {
	t.Helper()
	m, err := New(b, img, cfg, world)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	opt.snapshotAtPause = true
	pr, pw := io.Pipe()
	type received struct {
		st  *State
		err error
	}
	recv := make(chan received, 1)
	go func() {
		st, err := ReceivePrecopy(pr)
		io.Copy(io.Discard, pr)
		recv <- received{st, err}
	}()
	ctx, cancel := context.WithCancel(context.Background())
	runErr := make(chan error, 1)
	go func() { _, err := m.Run(ctx); runErr <- err }()
	select {
	case <-world.busy:
	case err := <-runErr:
		t.Fatalf("the guest stopped before the transfer: %v", err)
	}
	p, err := m.StartPrecopy(pw, opt)
	if err != nil {
		t.Fatal(err)
	}
	stats, err := p.Wait()
	pw.Close()
	cancel()
	if rerr := <-runErr; !errors.Is(rerr, ErrInterrupted) && err == nil {
		t.Fatalf("the source run ended with %v", rerr)
	}
	if err != nil {
		t.Fatalf("pre-copy: %v", err)
	}
	r := <-recv
	if r.err != nil {
		t.Fatalf("receiving: %v", r.err)
	}
	return precopyResult{got: r.st, want: p.pauseSnapshot, stats: stats}
}

// fullRAM expands a state's runs into all of RAM.
func fullRAM(s *State) []byte {
	ram := make([]byte, s.MemSize)
	for _, r := range s.RAM {
		copy(ram[r.FirstPage*pageSize:], r.Data)
	}
	return ram
}

func stateDigest(s *State) [32]byte { return replay.StateDigest(&s.Regs, fullRAM(s)) }

// sameState fails unless got is want in everything a guest can observe.
func sameState(t *testing.T, want, got *State) {
	t.Helper()
	if want.Exits != got.Exits || want.Regs != got.Regs || want.FP != got.FP || want.Seen != got.Seen || !bytes.Equal(want.Perms, got.Perms) {
		t.Fatalf("state differs: exits %d/%d rip %#x/%#x fp equal %v seen %v/%v", want.Exits, got.Exits, want.Regs.RIP, got.Regs.RIP, want.FP == got.FP, want.Seen, got.Seen)
	}
	wram, gram := fullRAM(want), fullRAM(got)
	if !bytes.Equal(wram, gram) {
		diff := 0
		first := -1
		for p := 0; p < len(wram)/pageSize; p++ {
			if !bytes.Equal(wram[p*pageSize:(p+1)*pageSize], gram[p*pageSize:(p+1)*pageSize]) {
				if first < 0 {
					first = p
				}
				diff++
			}
		}
		t.Fatalf("RAM differs from the snapshot at the pause (exit %d) in %d pages, the first at %#x", want.Exits, diff, first*pageSize)
	}
}

func logStats(t testing.TB, s PrecopyStats) {
	t.Helper()
	for i, r := range s.Rounds {
		t.Logf("round %d: %d pages, %d bytes, %v", i, r.Pages, r.Bytes, r.Time)
	}
	t.Logf("final: %d pages, %d bytes; pause %v after waiting %v for an exit; total %v, exit %d; tracking: %v",
		s.Final.Pages, s.Final.Bytes, s.Pause, s.WaitForExit, s.Total, s.Exit, s.Tracking)
}

const dirtyCmdline = "pages=2048 every=64"

// TestPrecopyMatchesPauseState: a guest writing 8 MiB over and over is
// transferred while it runs; the receiver's state equals a snapshot taken
// in the final pause, registers and every byte of RAM, including console
// input the VMM wrote into guest memory after the full copy, and restores
// to the same digest.
func TestPrecopyMatchesPauseState(t *testing.T) {
	img := loadGuest(t, "dirty")
	vmmtest.ForEachBackend(t, func(t *testing.T, b backend.Backend) {
		const marker = "pre-copy marker: console input written by the VMM"
		world := newMarkerWorld(marker)
		// StopPages 16: the guest writes 2048 pages between two rounds
		// unless it is starved, so at least one dirty round is sent.
		opt := PrecopyOptions{StopPages: 16, afterRound: func(round int) {
			if round == 0 {
				world.deliver.Store(true)
				<-world.delivered // the write lands after the full copy
			}
		}}
		res := transfer(t, b, img, Config{Cmdline: dirtyCmdline}, world, opt)
		logStats(t, res.stats)
		if res.stats.Tracking != nil {
			t.Logf("%s cannot track dirty pages here, so the transfer was stop-and-copy: %v", b.Name(), res.stats.Tracking)
		} else if len(res.stats.Rounds) < 2 {
			t.Errorf("only the full copy was sent before the pause, no dirty round: %+v", res.stats.Rounds)
		}
		sameState(t, res.want, res.got)
		if !bytes.Contains(fullRAM(res.got), []byte(marker)) {
			t.Fatal("the console input the VMM wrote into guest RAM during the copy is not in the received state")
		}
		m, err := Restore(b, img, res.got, &scriptedWorld{})
		if err != nil {
			t.Fatal(err)
		}
		defer m.Close()
		d, err := m.StateDigest()
		if err != nil {
			t.Fatal(err)
		}
		if d != stateDigest(res.want) {
			t.Fatal("the restored machine's digest is not the paused source's")
		}
	})
}

// TestPrecopyWithoutDirtyLogDiffers: the same transfer with the backend's
// dirty log ignored misses the guest's writes after the full copy, so the
// check above can fail.
func TestPrecopyWithoutDirtyLogDiffers(t *testing.T) {
	img := loadGuest(t, "dirty")
	vmmtest.ForEachBackend(t, func(t *testing.T, b backend.Backend) {
		res := transfer(t, b, img, Config{Cmdline: dirtyCmdline}, newMarkerWorld(""), PrecopyOptions{ignoreGuestWrites: true})
		if res.stats.Tracking != nil {
			t.Skipf("%s cannot track dirty pages here: %v", b.Name(), res.stats.Tracking)
		}
		if bytes.Equal(fullRAM(res.want), fullRAM(res.got)) {
			t.Fatal("with the guest's writes ignored, the received RAM still equals the source's: the test cannot tell a working dirty log from none")
		}
	})
}

// TestPrecopyAcrossBackends: a transfer from each backend restores on each,
// and every restored machine runs on to the same output and final state.
func TestPrecopyAcrossBackends(t *testing.T) {
	usable := backends.UsableBackends()
	if len(usable) < 2 {
		t.Skipf("needs two usable backends, this host has %s", strings.Join(backends.Usable(), ", "))
	}
	img := loadGuest(t, "dirty")
	for _, from := range usable {
		res := transfer(t, from, img, Config{Cmdline: dirtyCmdline}, newMarkerWorld(""), PrecopyOptions{})
		sameState(t, res.want, res.got)
		var first *outcome
		for _, to := range usable {
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			world := &scriptedWorld{input: "q"}
			m, err := Restore(to, img, res.got, world)
			if err != nil {
				t.Fatal(err)
			}
			r, err := m.Run(ctx)
			cancel()
			if err != nil || r.Status != 0 {
				t.Fatalf("from %s on %s: status %d, %v", from.Name(), to.Name(), r.Status, err)
			}
			o := outcome{Console: world.console.String(), Status: r.Status, Exits: r.Exits}
			if o.Digest, err = m.StateDigest(); err != nil {
				t.Fatal(err)
			}
			m.Close()
			if first == nil {
				first = &o
			} else if *first != o {
				t.Fatalf("from %s: restored on %s ends %+v, on %s %+v", from.Name(), usable[0].Name(), *first, to.Name(), o)
			}
		}
		t.Logf("from %s: every backend ends with %q after %d exits", from.Name(), first.Console, first.Exits)
	}
}

// TestPrecopyStopAndCopy: without dirty tracking the transfer degrades to
// sending all of RAM in the pause, and is still exact.
func TestPrecopyStopAndCopy(t *testing.T) {
	img := loadGuest(t, "dirty")
	vmmtest.ForEachBackend(t, func(t *testing.T, b backend.Backend) {
		res := transfer(t, b, img, Config{Cmdline: dirtyCmdline}, newMarkerWorld(""), PrecopyOptions{noDirtyLog: true})
		logStats(t, res.stats)
		if !errors.Is(res.stats.Tracking, backend.ErrNoDirtyLog) || len(res.stats.Rounds) != 1 || res.stats.Final.Pages < 2048 {
			t.Fatalf("want stop-and-copy (one round, the working set in the pause), got tracking %v, %d rounds, %d pages in the pause", res.stats.Tracking, len(res.stats.Rounds), res.stats.Final.Pages)
		}
		sameState(t, res.want, res.got)
	})
}

// TestReceivePrecopyRefuses: a truncated or damaged stream is refused
// with ErrPrecopyCorrupt, never applied or a panic.
func TestReceivePrecopyRefuses(t *testing.T) {
	m, err := New(requireBackend(t), loadGuest(t, "hello"), Config{}, &scriptedWorld{})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	regs, err := m.Regs()
	if err != nil {
		t.Fatal(err)
	}
	var st *State
	m.vcpu.Do(func() { st, err = m.captureCPUState(&regs) })
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	w := newPrecopyWriter(&buf)
	page := bytes.Repeat([]byte{7}, 3*pageSize)
	if w.header(st.MemSize) != nil || w.pages(0, 100, page) != nil || w.clearAll(1) != nil || w.pages(1, 200, page) != nil || w.state(1, st) != nil || w.flush() != nil {
		t.Fatal("writing the stream failed")
	}
	good := buf.Bytes()
	got, err := ReceivePrecopy(bytes.NewReader(good))
	if err != nil {
		t.Fatal(err)
	}
	if len(got.RAM) != 1 || got.RAM[0].FirstPage != 200 || got.Pages() != 3 {
		t.Fatalf("want pages 200-202 only (100-102 were cleared), got %d runs, %d pages", len(got.RAM), got.Pages())
	}
	for _, n := range []int{0, 7, 20, 23, 24, 50, recHeadSize + 24, len(good) / 2, len(good) - 1} {
		if _, err := ReceivePrecopy(bytes.NewReader(good[:n])); !errors.Is(err, ErrPrecopyCorrupt) {
			t.Errorf("truncated to %d bytes: %v", n, err)
		}
	}
	for off := 0; off < len(good); off += 997 {
		bad := bytes.Clone(good)
		bad[off] ^= 0x40
		if _, err := ReceivePrecopy(bytes.NewReader(bad)); err == nil {
			t.Errorf("byte %d flipped: accepted", off)
		}
	}
	// A record that claims pages outside RAM, with a valid CRC.
	var out bytes.Buffer
	w = newPrecopyWriter(&out)
	w.header(st.MemSize)
	w.write(recHead(recPages, 0, st.MemSize/pageSize-1, 2), make([]byte, 2*pageSize))
	w.flush()
	if _, err := ReceivePrecopy(&out); !errors.Is(err, ErrPrecopyCorrupt) || !strings.Contains(err.Error(), "outside") {
		t.Errorf("pages past the end of RAM: %v", err)
	}
}

// failingWriter takes n bytes, then fails every write: a receiver that
// went away in the middle of a transfer.
type failingWriter struct{ n int }

func (f *failingWriter) Write(p []byte) (int, error) {
	if f.n <= 0 {
		return 0, errors.New("the receiver went away (test)")
	}
	k := min(len(p), f.n)
	f.n -= k
	if k < len(p) {
		return k, errors.New("the receiver went away (test)")
	}
	return k, nil
}

// TestPrecopyAfterAFailedOne: a transfer whose receiver went away before
// the pause frees the machine for the next one, which ends in the state
// of its pause. (The failed one used to keep the machine's transfer slot:
// "a transfer is already under way", for good.)
func TestPrecopyAfterAFailedOne(t *testing.T) {
	img := loadGuest(t, "dirty")
	vmmtest.ForEachBackend(t, func(t *testing.T, b backend.Backend) {
		world := newMarkerWorld("")
		m, err := New(b, img, Config{Cmdline: dirtyCmdline}, world)
		if err != nil {
			t.Fatal(err)
		}
		defer m.Close()
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		runErr := make(chan error, 1)
		go func() { _, err := m.Run(ctx); runErr <- err }()
		<-world.busy
		p, err := m.StartPrecopy(&failingWriter{n: 100 << 10}, PrecopyOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := p.Wait(); err == nil {
			t.Fatal("a transfer to a receiver that went away succeeded")
		}
		pr, pw := io.Pipe()
		got := make(chan error, 1)
		go func() {
			st, err := ReceivePrecopy(pr)
			io.Copy(io.Discard, pr)
			if err == nil && st.Exits == 0 {
				err = errors.New("a state at exit 0")
			}
			got <- err
		}()
		p, err = m.StartPrecopy(pw, PrecopyOptions{})
		if err != nil {
			t.Fatalf("the second transfer: %v", err)
		}
		if _, err := p.Wait(); err != nil {
			t.Fatalf("the second transfer: %v", err)
		}
		pw.Close()
		if err := <-got; err != nil {
			t.Fatalf("receiving the second transfer: %v", err)
		}
		cancel()
		if err := <-runErr; !errors.Is(err, ErrInterrupted) {
			t.Fatalf("the run ended with %v", err)
		}
	})
}

// slowWriter takes every write after a short wait: a slow link.
type slowWriter struct{ n atomic.Int64 }

func (s *slowWriter) Write(p []byte) (int, error) {
	time.Sleep(200 * time.Microsecond)
	s.n.Add(int64(len(p)))
	return len(p), nil
}

// TestCloseDuringPrecopy: a machine closed (its run ended) while a
// transfer still reads its RAM stops the transfer with an error and frees
// the RAM only once the transfer let go. It used to unmap the RAM under
// the transfer's goroutine: SIGSEGV, the whole VMM down (seen when a
// primary stopped while a backup joined it).
func TestCloseDuringPrecopy(t *testing.T) {
	img := loadGuest(t, "dirty")
	vmmtest.ForEachBackend(t, func(t *testing.T, b backend.Backend) {
		world := newMarkerWorld("")
		m, err := New(b, img, Config{MemSize: 64 << 20, Cmdline: "pages=8192 every=64"}, world)
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		runErr := make(chan error, 1)
		go func() { _, err := m.Run(ctx); runErr <- err }()
		<-world.busy
		w := &slowWriter{}
		p, err := m.StartPrecopy(w, PrecopyOptions{})
		if err != nil {
			t.Fatal(err)
		}
		for w.n.Load() < 1<<20 { // the full copy is under way
			time.Sleep(time.Millisecond)
		}
		cancel()
		<-runErr
		if err := m.Close(); err != nil {
			t.Fatal(err)
		}
		if _, err := p.Wait(); err == nil {
			t.Fatal("a transfer whose machine was closed under it succeeded")
		}
		if _, err := m.StartPrecopy(w, PrecopyOptions{}); err == nil {
			t.Fatal("a transfer of a closed machine started")
		}
	})
}
