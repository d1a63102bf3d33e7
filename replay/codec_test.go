package replay

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"reflect"
	"runtime"
	"strings"
	"testing"
)

// boundaryWriter notes the stream length after every Write: an Encoder
// writes the header with the first frame and each frame in one Write, so
// these are the frame boundaries.
type boundaryWriter struct {
	buf    bytes.Buffer
	bounds []int
}

func (w *boundaryWriter) Write(p []byte) (int, error) {
	n, err := w.buf.Write(p)
	w.bounds = append(w.bounds, w.buf.Len())
	return n, err
}

// randomEntry returns a valid entry of kind k with random fields, at an
// exit after *exit.
func randomEntry(rng *rand.Rand, k Kind, seq uint64, exit *uint64, maxData int) Entry {
	e := Entry{Seq: seq, Kind: k}
	if !k.IsControl() {
		switch rng.IntN(4) {
		case 0:
			*exit += 1
		case 1:
			*exit += rng.Uint64N(1 << 20)
		default:
			*exit += rng.Uint64N(3)
		}
		if *exit == 0 {
			*exit = 1
		}
		e.Exit = *exit
		rips := []uint64{0x100040, 0x100080, 0x1000c0, rng.Uint64()}
		e.RIP = rips[rng.IntN(len(rips))]
	}
	randBytes := func(limit int) []byte {
		n := rng.IntN(min(limit, maxData) + 1)
		if n == 0 {
			return nil
		}
		b := make([]byte, n)
		for i := range b {
			b[i] = byte(rng.Uint32())
		}
		return b
	}
	switch k {
	case KindStart:
		for i := range 32 {
			e.Start.ImageSHA256[i] = byte(rng.Uint32())
			e.Start.CPUIDDigest[i] = byte(rng.Uint32())
			e.Start.ConfigDigest[i] = byte(rng.Uint32())
		}
		e.Start.VMID = string(randBytes(40))
	case KindEnd:
		for i := range 32 {
			e.Digest[i] = byte(rng.Uint32())
		}
	case KindCheckpoint:
		a := [18]uint64{}
		for i := range a {
			if rng.IntN(2) == 0 {
				a[i] = rng.Uint64() >> rng.IntN(64)
			}
		}
		a[ripIndex] = e.RIP
		e.Regs = regsFromArray(a)
		e.Hash = rng.Uint64()
	case KindTSC, KindClock:
		e.Value = rng.Uint64() >> rng.IntN(64)
		if k == KindClock {
			e.Clock = ClockID(rng.IntN(2))
		}
	case KindRandom:
		e.Value = rng.Uint64()
		e.RandKind = RandKind(rng.IntN(2))
	case KindWait:
		e.Value = rng.Uint64N(8)
	case KindConsoleRead:
		e.Data = randBytes(100)
		e.EOF = rng.IntN(3) == 0
	case KindNetRX, KindDiskRead:
		e.Data = randBytes(1500)
	case KindOutput:
		e.OutputKind = OutputKind(rng.IntN(2))
		e.Length = rng.Uint64N(1 << 16)
		e.Hash = rng.Uint64()
	case KindPowerOff:
		e.Status = int64(rng.IntN(512) - 256)
	}
	return e
}

// randomLog encodes n random entries of every kind, with at most maxData
// bytes of data each, flushing at random points, and returns the entries
// and the writer.
func randomLog(t testing.TB, seed uint64, n, maxData int) ([]Entry, *boundaryWriter) {
	rng := rand.New(rand.NewPCG(seed, 1))
	w := &boundaryWriter{}
	enc := NewEncoderSize(w, 1+rng.IntN(2000))
	var entries []Entry
	var exit uint64
	for i := range n {
		k := Kind(1 + rng.IntN(int(maxKind)))
		e := randomEntry(rng, k, uint64(i+1), &exit, maxData)
		if err := enc.Append(e); err != nil {
			t.Fatalf("append %v: %v", e, err)
		}
		entries = append(entries, e)
		if rng.IntN(10) == 0 {
			if err := enc.Flush(); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := enc.Flush(); err != nil {
		t.Fatal(err)
	}
	return entries, w
}

// decodeAll returns every entry of data and the error that ended them.
func decodeAll(data []byte) ([]Entry, error) {
	dec := NewDecoder(bytes.NewReader(data))
	var entries []Entry
	for {
		e, err := dec.Next()
		if err != nil {
			return entries, err
		}
		entries = append(entries, e)
	}
}

func TestRoundTripEveryKind(t *testing.T) {
	for seed := range uint64(20) {
		want, w := randomLog(t, seed, 500, 1500)
		got, err := decodeAll(w.buf.Bytes())
		if err != io.EOF {
			t.Fatalf("seed %d: decoding ended with %v, want io.EOF", seed, err)
		}
		if len(got) != len(want) {
			t.Fatalf("seed %d: decoded %d entries, wrote %d", seed, len(got), len(want))
		}
		for i := range want {
			if !got[i].Equal(&want[i]) {
				t.Fatalf("seed %d: entry %d:\n got %v\nwant %v", seed, i, got[i], want[i])
			}
		}
	}
}

func TestEmptyLog(t *testing.T) {
	var buf bytes.Buffer
	if err := NewEncoder(&buf).Flush(); err != nil {
		t.Fatal(err)
	}
	if buf.Len() != headerLen {
		t.Fatalf("empty log is %d bytes, want the %d-byte header", buf.Len(), headerLen)
	}
	if _, err := decodeAll(buf.Bytes()); err != io.EOF {
		t.Fatalf("empty log: %v, want io.EOF", err)
	}
	_, err := decodeAll(nil)
	var de *DecodeError
	if !errors.As(err, &de) || !errors.Is(err, io.ErrUnexpectedEOF) || de.Offset != 0 {
		t.Fatalf("no bytes at all: %v, want a truncation at byte 0", err)
	}
}

// TestTruncated cuts a log at every byte: a cut on a frame boundary looks
// like a shorter log; any other cut is an error naming the byte where the
// stream ended, and the entries before it are all correct.
func TestTruncated(t *testing.T) {
	want, w := randomLog(t, 7, 60, 20)
	data := w.buf.Bytes()
	isBound := map[int]bool{headerLen: true} // a header alone is an empty log
	for _, b := range w.bounds {
		isBound[b] = true
	}
	for cut := range len(data) {
		got, err := decodeAll(data[:cut])
		for i := range got {
			if !got[i].Equal(&want[i]) {
				t.Fatalf("cut at %d: entry %d differs", cut, i)
			}
		}
		if isBound[cut] {
			if err != io.EOF {
				t.Fatalf("cut at frame boundary %d: %v, want io.EOF", cut, err)
			}
			continue
		}
		var de *DecodeError
		if !errors.As(err, &de) || !errors.Is(err, io.ErrUnexpectedEOF) {
			t.Fatalf("cut at %d: %v, want a truncation", cut, err)
		}
		if de.Offset != int64(cut) || !strings.Contains(err.Error(), fmt.Sprintf("truncated at byte %d", cut)) {
			t.Fatalf("cut at %d: %q does not name byte %d", cut, err, cut)
		}
	}
}

// TestBitFlip flips every bit of a log in turn: each flip is detected, in
// the frame that holds it, before any wrong entry comes out.
func TestBitFlip(t *testing.T) {
	want, w := randomLog(t, 3, 40, 20)
	data := w.buf.Bytes()
	frameOf := func(off int) uint64 { // 0: the header
		if off < headerLen {
			return 0
		}
		for i, b := range w.bounds {
			if off < b {
				return uint64(i + 1)
			}
		}
		t.Fatalf("offset %d past the end", off)
		return 0
	}
	for off := range data {
		for bit := range 8 {
			flipped := bytes.Clone(data)
			flipped[off] ^= 1 << bit
			got, err := decodeAll(flipped)
			for i := range got {
				if !got[i].Equal(&want[i]) {
					t.Fatalf("flip at %d.%d: entry %d differs:\n got %v\nwant %v", off, bit, i, got[i], want[i])
				}
			}
			var de *DecodeError
			if !errors.As(err, &de) {
				t.Fatalf("flip at %d.%d: %v, want a *DecodeError", off, bit, err)
			}
			if de.Frame != frameOf(off) {
				t.Fatalf("flip at %d.%d in frame %d: error names frame %d: %v", off, bit, frameOf(off), de.Frame, err)
			}
			inPayload := de.Frame > 0 && !errors.Is(err, io.ErrUnexpectedEOF)
			if inPayload && !errors.Is(err, ErrChecksum) && !errors.Is(err, ErrCorrupt) {
				t.Fatalf("flip at %d.%d: %v", off, bit, err)
			}
		}
	}
}

func TestChecksumErrorNamesFrameAndOffset(t *testing.T) {
	_, w := randomLog(t, 5, 50, 20)
	if len(w.bounds) < 3 {
		t.Fatalf("want at least 3 frames, got %d", len(w.bounds))
	}
	data := bytes.Clone(w.buf.Bytes())
	start := w.bounds[1] // frame 3 starts where the second Write ended
	data[w.bounds[2]-1] ^= 0x80
	_, err := decodeAll(data)
	if !errors.Is(err, ErrChecksum) {
		t.Fatalf("got %v, want a checksum error", err)
	}
	wantMsg := fmt.Sprintf("replay: log frame 3 at byte %d: checksum mismatch", start)
	if !strings.HasPrefix(err.Error(), wantMsg) {
		t.Fatalf("got %q, want it to start with %q", err, wantMsg)
	}
}

// TestRandomBytes feeds the decoder garbage, with and without a valid
// header in front: always an error, never a panic, and little memory.
func TestRandomBytes(t *testing.T) {
	rng := rand.New(rand.NewPCG(42, 42))
	header := appendHeader(nil, Header{Version: Version})
	for i := range 20000 {
		n := rng.IntN(300)
		data := make([]byte, n)
		for j := range data {
			data[j] = byte(rng.Uint32())
		}
		if i%2 == 0 {
			data = append(bytes.Clone(header), data...)
		}
		if _, err := decodeAll(data); err == nil || err == io.EOF && len(data) > headerLen {
			// A random tail of zero length after the header is a
			// valid empty log; anything else must not decode fully.
			t.Fatalf("random bytes %x decoded without error: %v", data, err)
		}
	}
}

// TestHugeLengthDoesNotAllocate: a frame claiming the maximum length in a
// short stream is a truncation, found without allocating the claimed size;
// one claiming more is refused outright.
func TestHugeLengthDoesNotAllocate(t *testing.T) {
	header := appendHeader(nil, Header{Version: Version})
	over := binary.AppendUvarint(bytes.Clone(header), MaxFrameLen+1)
	over = binary.AppendUvarint(over, 1)
	if _, err := decodeAll(over); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("length over the limit: %v, want ErrCorrupt", err)
	}
	atMax := binary.AppendUvarint(bytes.Clone(header), MaxFrameLen)
	atMax = binary.AppendUvarint(atMax, 1)
	atMax = append(atMax, make([]byte, 1000)...)
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	_, err := decodeAll(atMax)
	runtime.ReadMemStats(&after)
	if !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("short frame: %v, want a truncation", err)
	}
	if alloc := after.TotalAlloc - before.TotalAlloc; alloc > 1<<20 {
		t.Fatalf("decoding a 1 KB stream allocated %d bytes", alloc)
	}
}

// TestResumeAtFrameBoundary: a stream may start at any frame (a backup
// reconnecting), given a header; a gap between frames is an error.
func TestResumeAtFrameBoundary(t *testing.T) {
	want, w := randomLog(t, 11, 200, 100)
	data := w.buf.Bytes()
	header := data[:headerLen]
	for i := 1; i < len(w.bounds); i++ {
		stream := append(bytes.Clone(header), data[w.bounds[i-1]:]...)
		got, err := decodeAll(stream)
		if err != io.EOF || len(got) == 0 {
			t.Fatalf("resume at frame %d: %d entries, %v", i+1, len(got), err)
		}
		tail := want[len(want)-len(got):]
		for j := range got {
			if !got[j].Equal(&tail[j]) {
				t.Fatalf("resume at frame %d: entry %d differs", i+1, j)
			}
		}
	}
	// Frames 1 and 3 without 2.
	if len(w.bounds) >= 3 {
		gap := append(bytes.Clone(data[:w.bounds[0]]), data[w.bounds[1]:]...)
		if _, err := decodeAll(gap); !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), "missing") {
			t.Fatalf("a missing frame: %v", err)
		}
	}
}

func TestHeaderErrors(t *testing.T) {
	good := appendHeader(nil, Header{Version: Version})
	for _, tc := range []struct {
		name string
		data []byte
		want error
	}{
		{"magic", append([]byte("FTVMLOX\x00"), good[8:]...), ErrCorrupt},
		{"version", appendHeader(nil, Header{Version: 2}), ErrVersion},
		{"flags", appendHeader(nil, Header{Version: Version, Flags: 1}), ErrCorrupt},
		{"short", good[:5], io.ErrUnexpectedEOF},
	} {
		if _, err := decodeAll(tc.data); !errors.Is(err, tc.want) {
			t.Errorf("%s: %v, want %v", tc.name, err, tc.want)
		}
	}
}

func TestEncoderRefusesInvalidEntries(t *testing.T) {
	ok := Entry{Seq: 1, Kind: KindTSC, Exit: 5, RIP: 0x100040, Value: 1}
	for _, tc := range []struct {
		name string
		edit func(e *Entry)
	}{
		{"seq 0", func(e *Entry) { e.Seq = 0 }},
		{"unknown kind", func(e *Entry) { e.Kind = 0 }},
		{"kind 31", func(e *Entry) { e.Kind = 31 }},
		{"exit 0", func(e *Entry) { e.Exit = 0 }},
		{"data on tsc", func(e *Entry) { e.Data = []byte{1} }},
		{"status on tsc", func(e *Entry) { e.Status = 1 }},
		{"regs on tsc", func(e *Entry) { e.Regs.RAX = 1 }},
		{"digest on tsc", func(e *Entry) { e.Digest[0] = 1 }},
		{"start exit", func(e *Entry) { *e = Entry{Seq: 1, Kind: KindStart, Exit: 1} }},
		{"checkpoint rip", func(e *Entry) { *e = Entry{Seq: 1, Kind: KindCheckpoint, Exit: 1, RIP: 5} }},
		{"clock id", func(e *Entry) { *e = Entry{Seq: 1, Kind: KindClock, Exit: 1, Clock: 2} }},
		{"big data", func(e *Entry) {
			*e = Entry{Seq: 1, Kind: KindNetRX, Exit: 1, Data: make([]byte, MaxDataLen+1)}
		}},
	} {
		e := ok
		tc.edit(&e)
		if err := NewEncoder(io.Discard).Append(e); !errors.Is(err, ErrInvalidEntry) {
			t.Errorf("%s: %v, want ErrInvalidEntry", tc.name, err)
		}
	}
	enc := NewEncoder(io.Discard)
	if err := enc.Append(ok); err != nil {
		t.Fatal(err)
	}
	gap := ok
	gap.Seq, gap.Exit = 3, 6
	if err := enc.Append(gap); !errors.Is(err, ErrInvalidEntry) {
		t.Errorf("seq gap: %v", err)
	}
	back := ok
	back.Seq, back.Exit = 2, 4
	if err := enc.Append(back); !errors.Is(err, ErrInvalidEntry) {
		t.Errorf("exit going back: %v", err)
	}
}

// failingWriter fails every Write.
type failingWriter struct{}

func (failingWriter) Write([]byte) (int, error) { return 0, errors.New("disk full") }

func TestEncoderWriteErrorSticks(t *testing.T) {
	enc := NewEncoder(failingWriter{})
	if err := enc.Append(Entry{Seq: 1, Kind: KindTSC, Exit: 1, Value: 1}); err != nil {
		t.Fatal(err)
	}
	err := enc.Flush()
	if err == nil || !strings.Contains(err.Error(), "disk full") {
		t.Fatalf("flush: %v", err)
	}
	if err2 := enc.Append(Entry{Seq: 2, Kind: KindTSC, Exit: 2, Value: 2}); err2 != err {
		t.Fatalf("append after a write error: %v, want %v", err2, err)
	}
}

// TestEntryEqualSeesEveryField: a field added to Entry must be compared by
// Equal too (the fuzz test relies on it).
func TestEntryEqualSeesEveryField(t *testing.T) {
	var zero Entry
	v := reflect.ValueOf(&zero).Elem()
	var setAll func(f reflect.Value) bool // makes f non-zero everywhere it can
	setAll = func(f reflect.Value) bool {
		switch f.Kind() {
		case reflect.Bool:
			f.SetBool(true)
		case reflect.Uint8, reflect.Uint64:
			f.SetUint(1)
		case reflect.Int64:
			f.SetInt(1)
		case reflect.String:
			f.SetString("x")
		case reflect.Slice:
			f.Set(reflect.ValueOf([]byte{1}))
		case reflect.Array:
			f.Index(0).SetUint(1)
		case reflect.Struct:
			for i := range f.NumField() {
				setAll(f.Field(i))
			}
		default:
			return false
		}
		return true
	}
	for i := range v.NumField() {
		var e Entry
		if !setAll(reflect.ValueOf(&e).Elem().Field(i)) {
			t.Fatalf("field %s: unhandled type", v.Type().Field(i).Name)
		}
		if e.Equal(&zero) || zero.Equal(&e) {
			t.Errorf("Equal does not see field %s", v.Type().Field(i).Name)
		}
	}
}
