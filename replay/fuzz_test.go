package replay

import (
	"bytes"
	"encoding/binary"
	"flag"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"testing"
)

var writeFuzzSeeds = flag.Bool("write-fuzz-seeds", false, "rewrite testdata/fuzz/FuzzDecode from the encoder")

// fuzzSeeds are a few valid logs written by the encoder: the fuzzer mutates
// them, so that it starts from streams that get past the header and the
// checksums.
func fuzzSeeds(t testing.TB) map[string][]byte {
	seeds := map[string][]byte{}
	var empty bytes.Buffer
	if err := NewEncoder(&empty).Flush(); err != nil {
		t.Fatal(err)
	}
	seeds["empty"] = empty.Bytes()

	// A short recording of every World call, as the transcripts make.
	var rec bytes.Buffer
	live := &scriptedWorld{}
	r := NewRecorder(live, NewEncoderSize(&rec, 64), RecorderConfig{CheckpointEvery: 3})
	p := func(exit, rip uint64) ExecPoint {
		return ExecPoint{Exit: exit, Regs: Regs{RIP: rip, RAX: exit * 3, RSP: 0x7ff000, RFLAGS: 0x3202}}
	}
	steps := []func() error{
		func() error { return r.Start(StartInfo{VMID: "seed", ImageSHA256: [32]byte{1, 2, 3}}) },
		func() error { live.value = 1000; _, err := r.TSC(p(1, 0x100040)); return err },
		func() error { live.value = 51000; _, err := r.TSC(p(2, 0x100040)); return err },
		func() error { live.value = 0xfeed; _, err := r.Random(p(4, 0x100080), RandRDSEED); return err },
		func() error { live.value = 12345; _, err := r.Clock(p(5, 0x1000c0), ClockRealtime); return err },
		func() error {
			live.input = []byte("input")
			_, _, err := r.ConsoleRead(p(6, 0x100100), make([]byte, 16))
			return err
		},
		func() error { live.value = 1; _, err := r.Wait(p(7, 0x100140), 0); return err },
		func() error { return r.Output(p(8, 0x100180), OutputConsole, []byte("hello")) },
		func() error { return r.PowerOff(p(9, 0x1001c0), 0) },
		func() error { return r.Finish([32]byte{9}) },
	}
	for _, step := range steps {
		if err := step(); err != nil {
			t.Fatal(err)
		}
	}
	seeds["record"] = rec.Bytes()

	// Random entries of every kind, among them NetRX and DiskRead.
	_, w := randomLog(t, 99, 14, 8)
	seeds["kinds"] = w.buf.Bytes()

	// A compute run of TSC reads with checkpoints.
	var compute bytes.Buffer
	run := newComputeRun(6, 5000)
	tsc := &liveTSC{}
	cr := NewRecorder(tsc, NewEncoderSize(&compute, 100), RecorderConfig{CheckpointEvery: 8})
	if err := cr.Start(StartInfo{}); err != nil {
		t.Fatal(err)
	}
	for range 30 {
		pt, v := run.next()
		tsc.value = v
		if _, err := cr.TSC(pt); err != nil {
			t.Fatal(err)
		}
	}
	if err := cr.Finish([32]byte{}); err != nil {
		t.Fatal(err)
	}
	seeds["compute"] = compute.Bytes()
	return seeds
}

const fuzzSeedDir = "testdata/fuzz/FuzzDecode"

// TestFuzzSeeds keeps the committed seed corpus in step with the encoder:
// each seed must still decode to the end. Run with -write-fuzz-seeds to
// rewrite it.
func TestFuzzSeeds(t *testing.T) {
	seeds := fuzzSeeds(t)
	if *writeFuzzSeeds {
		if err := os.MkdirAll(fuzzSeedDir, 0o755); err != nil {
			t.Fatal(err)
		}
		for name, data := range seeds {
			body := fmt.Sprintf("go test fuzz v1\n[]byte(%s)\n", strconv.Quote(string(data)))
			if err := os.WriteFile(filepath.Join(fuzzSeedDir, "seed-"+name), []byte(body), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	for name, want := range seeds {
		body, err := os.ReadFile(filepath.Join(fuzzSeedDir, "seed-"+name))
		if err != nil {
			t.Fatalf("%v (run go test -run TestFuzzSeeds -write-fuzz-seeds)", err)
		}
		wantBody := fmt.Sprintf("go test fuzz v1\n[]byte(%s)\n", strconv.Quote(string(want)))
		if string(body) != wantBody {
			t.Errorf("seed %s is out of date with the encoder (run go test -run TestFuzzSeeds -write-fuzz-seeds)", name)
		}
		if _, err := decodeAll(want); err != io.EOF {
			t.Errorf("seed %s: %v", name, err)
		}
	}
}

// FuzzDecode feeds the decoder arbitrary bytes. It must never panic, and
// whatever it decodes must be valid: the encoder takes every entry back,
// and decoding that again gives the same entries.
//
// Almost every mutation of a log breaks a frame's CRC, which the decoder
// checks before it parses an entry; so each input is also decoded with its
// CRCs recomputed, which lets the mutations reach the entry parser.
func FuzzDecode(f *testing.F) {
	for _, data := range fuzzSeeds(f) {
		f.Add(data)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		checkDecodeReencode(t, data)
		checkDecodeReencode(t, fixChecksums(data))
	})
}

// fixChecksums returns a copy of data in which every frame that the length
// fields delimit carries a correct CRC.
func fixChecksums(data []byte) []byte {
	data = bytes.Clone(data)
	pos := headerLen
	for pos < len(data) {
		start := pos
		size, n := binary.Uvarint(data[pos:])
		if n <= 0 {
			break
		}
		pos += n
		_, n = binary.Uvarint(data[pos:])
		if n <= 0 || size > uint64(len(data)-pos-n) {
			break
		}
		pos += n + int(size)
		if len(data)-pos < 4 {
			break
		}
		binary.LittleEndian.PutUint32(data[pos:], crc32.Checksum(data[start:pos], castagnoli))
		pos += 4
	}
	return data
}

// checkDecodeReencode decodes data and checks that the entries it gives
// re-encode and decode to themselves.
func checkDecodeReencode(t *testing.T, data []byte) {
	entries, _ := decodeAll(data)
	var buf bytes.Buffer
	enc := NewEncoderSize(&buf, 1+len(data)%512)
	for _, e := range entries {
		if err := enc.Append(e); err != nil {
			t.Fatalf("re-encoding decoded entry %v: %v", e, err)
		}
	}
	if err := enc.Flush(); err != nil {
		t.Fatal(err)
	}
	again, err := decodeAll(buf.Bytes())
	if err != io.EOF {
		t.Fatalf("decoding the re-encoded log: %v", err)
	}
	if len(again) != len(entries) {
		t.Fatalf("re-encoded %d entries, decoded %d", len(entries), len(again))
	}
	for i := range entries {
		if !again[i].Equal(&entries[i]) {
			t.Fatalf("entry %d:\n got %v\nwant %v", i, again[i], entries[i])
		}
	}
}
