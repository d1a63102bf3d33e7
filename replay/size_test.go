package replay

import (
	"bytes"
	"io"
	"math/rand/v2"
	"testing"
)

// A synthetic long compute run: the guest reads the TSC at one RDTSC site
// every ~50 us of virtual time (50,000 ticks at 1 GHz), with jitter drawn
// uniformly from +-jitter ticks, and between reads a loop counter, an
// accumulator and the previous TSC value move in its registers.
type computeRun struct {
	rng    *rand.Rand
	jitter int64
	tsc    uint64
	point  ExecPoint
}

func newComputeRun(seed uint64, jitter int64) *computeRun {
	c := &computeRun{rng: rand.New(rand.NewPCG(seed, 0)), jitter: jitter, tsc: 1_000_000_000}
	c.point.Regs = Regs{RSP: 0x7ff000, RBP: 0x7ff040, RDI: 0x4000, RSI: 0x201000, RFLAGS: 0x3202, RIP: 0x100040}
	return c
}

// next advances the run to its next RDTSC: the point and the value the
// live world answers with.
func (c *computeRun) next() (ExecPoint, uint64) {
	d := int64(50_000)
	if c.jitter > 0 {
		d += c.rng.Int64N(2*c.jitter+1) - c.jitter
	}
	c.tsc += uint64(d)
	p := &c.point
	p.Exit++
	p.Regs.RAX = c.tsc & 0xffffffff // the previous read, as the loop left it
	p.Regs.RDX = c.tsc >> 32
	p.Regs.RCX++
	p.Regs.RBX = p.Regs.RBX*31 + c.tsc // an accumulator: any 64-bit value
	return *p, c.tsc
}

// liveTSC is a live World for benchmarks: it answers TSC with the value
// set by the caller and nothing else.
type liveTSC struct {
	scriptedWorld
}

type countingWriter struct{ n int64 }

func (w *countingWriter) Write(p []byte) (int, error) { w.n += int64(len(p)); return len(p), nil }

// tscBytesPerEntry records n TSC reads of a compute run and returns the
// encoded bytes per TSC entry: of the TSC entries alone (encoder, no
// checkpoints, no frame overhead), and of the whole log through a Recorder
// (header, frames, CRCs and a checkpoint every 256 entries included).
func tscBytesPerEntry(t testing.TB, n int, jitter int64) (entryOnly, whole float64) {
	// The entries alone: the payload the encoder adds per entry.
	run := newComputeRun(1, jitter)
	enc := NewEncoderSize(io.Discard, MaxFrameLen/2)
	var exit uint64
	if err := enc.Append(Entry{Seq: 1, Kind: KindStart}); err != nil {
		t.Fatal(err)
	}
	before := enc.Buffered()
	for i := range n {
		p, v := run.next()
		exit = p.Exit
		if err := enc.Append(Entry{Seq: uint64(i + 2), Kind: KindTSC, Exit: exit, RIP: p.Regs.RIP, Value: v}); err != nil {
			t.Fatal(err)
		}
	}
	entryOnly = float64(enc.Buffered()-before) / float64(n)

	// The whole log, as a recording writes it.
	run = newComputeRun(1, jitter)
	live := &liveTSC{}
	w := &countingWriter{}
	rec := NewRecorder(live, NewEncoder(w), RecorderConfig{})
	if err := rec.Start(StartInfo{VMID: "compute"}); err != nil {
		t.Fatal(err)
	}
	for range n {
		p, v := run.next()
		live.value = v
		if _, err := rec.TSC(p); err != nil {
			t.Fatal(err)
		}
	}
	if err := rec.Finish([32]byte{}); err != nil {
		t.Fatal(err)
	}
	return entryOnly, float64(w.n) / float64(n)
}

// TestTSCBytesPerEntry holds the log to its size target: RDTSC entries
// average at most 4 bytes each in a long compute run, everything included.
func TestTSCBytesPerEntry(t *testing.T) {
	n := 1_000_000
	if testing.Short() {
		n = 100_000
	}
	for _, tc := range []struct {
		name   string
		jitter int64
		limit  float64
	}{
		{"jitter +-5000", 5000, 4},
		{"equal deltas", 0, 1.5},
	} {
		entryOnly, whole := tscBytesPerEntry(t, n, tc.jitter)
		t.Logf("%s: %d TSC reads: %.3f bytes per entry alone, %.3f bytes per entry for the whole log",
			tc.name, n, entryOnly, whole)
		if whole > tc.limit {
			t.Errorf("%s: %.3f bytes per TSC entry, over the target of %.1f", tc.name, whole, tc.limit)
		}
	}
}

// TestRecordAndReplayDoNotAllocate: recording a TSC read costs no
// allocation in steady state, and neither does replaying one.
func TestRecordAndReplayDoNotAllocate(t *testing.T) {
	run := newComputeRun(2, 5000)
	live := &liveTSC{}
	var log bytes.Buffer
	rec := NewRecorder(live, NewEncoder(&log), RecorderConfig{})
	if err := rec.Start(StartInfo{}); err != nil {
		t.Fatal(err)
	}
	step := func() {
		p, v := run.next()
		live.value = v
		if _, err := rec.TSC(p); err != nil {
			t.Fatal(err)
		}
	}
	for range 100_000 { // warm up: buffers reach their size
		step()
	}
	log.Grow(4 << 20)
	const runs = 100_000
	if a := testing.AllocsPerRun(runs, step); a != 0 {
		t.Errorf("Recorder.TSC: %v allocations per call", a)
	}
	if err := rec.Finish([32]byte{}); err != nil {
		t.Fatal(err)
	}

	replay := newComputeRun(2, 5000)
	rp := NewReplayer(NewDecoder(&log))
	if _, err := rp.VerifyStart(StartInfo{}); err != nil {
		t.Fatal(err)
	}
	replayStep := func() {
		p, v := replay.next()
		got, err := rp.TSC(p)
		if err != nil || got != v {
			t.Fatalf("replay at exit %d: %d, %v; want %d", p.Exit, got, err, v)
		}
	}
	for range 100_000 {
		replayStep()
	}
	if a := testing.AllocsPerRun(runs, replayStep); a != 0 {
		t.Errorf("Replayer.TSC: %v allocations per call", a)
	}
}

// BenchmarkEncodeTSC is the encoder's cost per TSC entry of a jittery
// compute run (the entries are made before the timer starts).
func BenchmarkEncodeTSC(b *testing.B) {
	const n = 1 << 16
	run := newComputeRun(3, 5000)
	entries := make([]Entry, n)
	for i := range entries {
		p, v := run.next()
		entries[i] = Entry{Kind: KindTSC, Exit: p.Exit, RIP: p.Regs.RIP, Value: v}
	}
	w := &countingWriter{}
	enc := NewEncoder(w)
	b.ReportAllocs()
	seq, exitBase := uint64(0), uint64(0)
	for b.Loop() {
		e := &entries[seq%n]
		if seq%n == 0 && seq > 0 {
			exitBase += n
		}
		seq++
		if err := enc.Append(Entry{Seq: seq, Kind: KindTSC, Exit: exitBase + e.Exit, RIP: e.RIP, Value: e.Value}); err != nil {
			b.Fatal(err)
		}
	}
	if err := enc.Flush(); err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(float64(w.n)/float64(seq), "bytes/entry")
}

// BenchmarkRecordTSC is the recorder's cost per TSC read (hashing the
// registers, the checkpoints, encoding), over a live world that costs
// nothing. An exit costs ~20 us on these machines (PLATFORM.md): this is
// the recording overhead on top of it.
func BenchmarkRecordTSC(b *testing.B) {
	run := newComputeRun(4, 5000)
	live := &liveTSC{}
	w := &countingWriter{}
	rec := NewRecorder(live, NewEncoder(w), RecorderConfig{})
	if err := rec.Start(StartInfo{}); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	n := 0
	for b.Loop() {
		p, v := run.next()
		live.value = v
		if _, err := rec.TSC(p); err != nil {
			b.Fatal(err)
		}
		n++
	}
	if err := rec.Finish([32]byte{}); err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(float64(w.n)/float64(n), "bytes/entry")
}

// BenchmarkReplayTSC is the replayer's cost per TSC read, decoding
// included.
func BenchmarkReplayTSC(b *testing.B) {
	const n = 1 << 20
	run := newComputeRun(5, 5000)
	live := &liveTSC{}
	var log bytes.Buffer
	rec := NewRecorder(live, NewEncoder(&log), RecorderConfig{})
	if err := rec.Start(StartInfo{}); err != nil {
		b.Fatal(err)
	}
	points := make([]ExecPoint, n)
	for i := range points {
		p, v := run.next()
		live.value = v
		points[i] = p
		if _, err := rec.TSC(p); err != nil {
			b.Fatal(err)
		}
	}
	if err := rec.Finish([32]byte{}); err != nil {
		b.Fatal(err)
	}
	data := log.Bytes()
	b.ReportAllocs()
	var rp *Replayer
	i := n
	for b.Loop() {
		if i == n {
			b.StopTimer()
			rp = NewReplayer(NewDecoder(bytes.NewReader(data)))
			if _, err := rp.VerifyStart(StartInfo{}); err != nil {
				b.Fatal(err)
			}
			i = 0
			b.StartTimer()
		}
		if _, err := rp.TSC(points[i]); err != nil {
			b.Fatal(err)
		}
		i++
	}
}
