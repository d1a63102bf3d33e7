package vmm

import (
	"bytes"
	"encoding/binary"
	"errors"
	"hash/crc32"
	"math/rand/v2"
	"os"
	"path/filepath"
	"reflect"
	"testing"

	"github.com/ftvm/ftvm/replay"
)

func testState() *State {
	s := &State{
		ImageSHA256: [32]byte{1}, CPUIDDigest: [32]byte{2}, ConfigDigest: [32]byte{3},
		ABIProfile: ABIProfile, Config: `{"mem":65536,"cmdline":""}`, Backend: "kvm", LogVMID: "test",
		Exits: 42, Log: replay.Position{Seq: 17, Hash: 0xabcdef, Last: replay.ExecPoint{Exit: 41, Regs: replay.Regs{RAX: 9, RIP: 0x100010}}},
		Seen: seenTime{TSC: 123456, Monotonic: 99}, Regs: replay.Regs{RAX: 1, R15: 15, RIP: 0x100000, RFLAGS: 0x202},
		MemSize: 16 * pageSize, Perms: make([]byte, 16),
	}
	s.FP.FCW, s.FP.MXCSR, s.FP.XMM[3][7], s.FP.ST[2][9] = 0x27f, 0x7f80, 7, 0x40
	s.Perms[1] = byte(permUserR)
	s.RAM = []MemRun{{FirstPage: 1, Data: bytes.Repeat([]byte{0xaa}, pageSize)}, {FirstPage: 5, Data: bytes.Repeat([]byte{0x55}, 2*pageSize)}}
	return s
}

// TestSnapshotFileRoundTrip: what WriteFile writes, ReadStateFile reads
// back unchanged, and no temporary file is left.
func TestSnapshotFileRoundTrip(t *testing.T) {
	want := testState()
	path := filepath.Join(t.TempDir(), "s.snap")
	if err := want.WriteFile(path); err != nil {
		t.Fatal(err)
	}
	got, err := ReadStateFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("read back:\n%+v\nwant\n%+v", got, want)
	}
	if _, err := os.Stat(path + ".incomplete"); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("temporary file left: %v", err)
	}
}

// TestSnapshotDecodeRefuses: every truncation, a flipped bit, another
// version and bad runs (with a valid checksum) are errors wrapping
// ErrSnapshotCorrupt, never a panic.
func TestSnapshotDecodeRefuses(t *testing.T) {
	var buf bytes.Buffer
	if err := testState().Encode(&buf); err != nil {
		t.Fatal(err)
	}
	file := buf.Bytes()
	for cut := 0; cut < len(file); cut += 1 + cut/64 {
		if _, err := DecodeState(file[:cut]); !errors.Is(err, ErrSnapshotCorrupt) {
			t.Fatalf("truncated to %d bytes: %v", cut, err)
		}
	}
	flipped := bytes.Clone(file)
	flipped[200] ^= 1
	if _, err := DecodeState(flipped); !errors.Is(err, ErrSnapshotCorrupt) {
		t.Fatalf("a flipped bit: %v", err)
	}
	v2 := bytes.Clone(file)
	v2[8] = 2
	if _, err := DecodeState(v2); !errors.Is(err, ErrSnapshotCorrupt) {
		t.Fatalf("version 2: %v", err)
	}
	// Overlapping runs, resealed with a valid checksum: the parser itself
	// must refuse them.
	s := testState()
	s.RAM[1].FirstPage = 1
	buf.Reset()
	s.Encode(&buf)
	if _, err := DecodeState(buf.Bytes()); !errors.Is(err, ErrSnapshotCorrupt) {
		t.Fatalf("overlapping runs: %v", err)
	}
}

// reseal gives b (a snapshot without its checksum) a valid checksum, so a
// fuzzer reaches the parser behind the CRC.
func reseal(b []byte) []byte {
	out := append(bytes.Clone(b), 0, 0, 0, 0)
	binary.LittleEndian.PutUint32(out[len(b):], crc32.Checksum(b, snapCRC))
	return out
}

// FuzzDecodeState: the parser never panics or over-allocates on any input,
// checksum valid or not; `go test -fuzz FuzzDecodeState ./vmm`.
func FuzzDecodeState(f *testing.F) {
	var buf bytes.Buffer
	testState().Encode(&buf)
	f.Add(buf.Bytes())
	f.Add(buf.Bytes()[:100])
	f.Fuzz(func(t *testing.T, b []byte) {
		DecodeState(b)
		if len(b) >= 4 {
			s, err := DecodeState(reseal(b[:len(b)-4]))
			if err == nil && s.MemSize/pageSize != uint64(len(s.Perms)) {
				t.Fatalf("decoded %d perms for %d bytes of RAM", len(s.Perms), s.MemSize)
			}
		}
	})
}

// TestSnapshotDecodeMutations is a brief fuzz that runs in every test run:
// random byte edits, cuts and splices of a valid snapshot, resealed with a
// valid checksum so the parser behind it is exercised, must decode or fail
// cleanly.
func TestSnapshotDecodeMutations(t *testing.T) {
	var buf bytes.Buffer
	testState().Encode(&buf)
	body := buf.Bytes()[:buf.Len()-4]
	rng := rand.New(rand.NewPCG(1, 2))
	for i := 0; i < 20000; i++ {
		b := bytes.Clone(body)
		for n := rng.IntN(4); n >= 0; n-- {
			switch rng.IntN(3) {
			case 0: // overwrite a byte, often in the header
				pos := rng.IntN(min(len(b), 1200))
				b[pos] = byte(rng.Uint32())
			case 1: // write a large count somewhere in the header
				pos := rng.IntN(min(len(b)-8, 1200))
				binary.LittleEndian.PutUint64(b[pos:], rng.Uint64()>>rng.IntN(64))
			case 2: // cut
				b = b[:rng.IntN(len(b)+1)]
			}
			if len(b) < 16 {
				break
			}
		}
		s, err := DecodeState(reseal(b))
		if err == nil && uint64(len(s.Perms)) != s.MemSize/pageSize {
			t.Fatalf("mutation %d decoded %d perms for %d bytes of RAM", i, len(s.Perms), s.MemSize)
		}
		if err != nil && !errors.Is(err, ErrSnapshotCorrupt) {
			t.Fatalf("mutation %d: an error not wrapping ErrSnapshotCorrupt: %v", i, err)
		}
	}
}
