package vmm

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// diskImage makes a disk image of size bytes with a pattern and opens it.
func diskImage(t *testing.T, size int, seed byte) (*DiskFile, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "disk.img")
	b := make([]byte, size)
	for i := range b {
		b[i] = byte(i/DiskBlock) ^ seed
	}
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	d, err := OpenDiskFile(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	return d, path
}

// TestDiskOffer: an offer names the size, the chunk and each chunk's hash;
// one of another size, damaged or cut short is refused.
func TestDiskOffer(t *testing.T) {
	d, _ := diskImage(t, 200<<10, 1) // 3 whole chunks and a short one
	offer, err := DiskOffer(d)
	if err != nil {
		t.Fatal(err)
	}
	hashes, err := parseDiskOffer(offer, d.Size())
	if err != nil || len(hashes) != 4 {
		t.Fatalf("%d hashes, %v; want 4", len(hashes), err)
	}
	last := make([]byte, 200<<10-3*64<<10)
	d.ReadAt([]uint64{3 * 64 << 10}, [][]byte{last})
	if hashes[3] != sha256.Sum256(last) {
		t.Fatal("the short last chunk's hash is not of its bytes")
	}
	if _, err := parseDiskOffer(offer, d.Size()+DiskBlock); !errors.Is(err, ErrDiskSize) {
		t.Fatalf("an offer of another size: %v, want ErrDiskSize", err)
	}
	bad := bytes.Clone(offer)
	bad[40] ^= 1
	for name, b := range map[string][]byte{"flipped": bad, "short": offer[:len(offer)-33], "empty": nil} {
		if _, err := parseDiskOffer(b, d.Size()); err == nil {
			t.Fatalf("a %s offer was taken", name)
		}
	}
	if DiskChunkSize(MaxDiskSize) != 16<<20 || DiskChunkSize(1<<30) != 64<<10 {
		t.Fatalf("chunks of %d and %d bytes", DiskChunkSize(MaxDiskSize), DiskChunkSize(1<<30))
	}
}

// TestDiskTracking: writes staged while a transfer tracks the disk mark
// their chunks, once.
func TestDiskTracking(t *testing.T) {
	d, _ := diskImage(t, 1<<20, 0)
	if err := d.StartTracking(64 << 10); err != nil {
		t.Fatal(err)
	}
	defer d.StopTracking()
	batch := EncodeDiskWrite(nil, 64<<10-DiskBlock, make([]byte, 2*DiskBlock)) // spans chunks 0 and 1
	batch = EncodeDiskWrite(batch, 10*64<<10, make([]byte, DiskBlock))
	if _, _, err := d.Stage(t.Context(), batch); err != nil {
		t.Fatal(err)
	}
	dirty := make([]uint64, 1)
	d.TakeDirty(dirty)
	if dirty[0] != 1|2|1<<10 {
		t.Fatalf("dirty chunks %#x, want %#x", dirty[0], 1|2|1<<10)
	}
	dirty[0] = 0
	d.TakeDirty(dirty)
	if dirty[0] != 0 {
		t.Fatalf("taken chunks came back: %#x", dirty[0])
	}
}

// diskStream writes a pre-copy stream for RAM of one page whose records
// come from f, for a receiver with a disk.
func diskStream(t *testing.T, f func(w *precopyWriter)) []byte {
	t.Helper()
	var b bytes.Buffer
	w := newPrecopyWriter(&b)
	if err := w.header(pageSize); err != nil {
		t.Fatal(err)
	}
	f(w)
	if err := w.flush(); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

// TestPrecopyDiskRecordsRefused: a damaged or hostile disk record in a
// pre-copy stream is refused before it writes anything: outside the disk,
// misaligned, too long, out of place, or with a bad CRC; a stream for a
// disk of another size, or that never proves the copy, is refused too.
func TestPrecopyDiskRecordsRefused(t *testing.T) {
	const size = 256 << 10
	chunk := DiskChunkSize(size)
	block := bytes.Repeat([]byte{0xee}, DiskBlock)
	begin := func(w *precopyWriter) { w.diskBegin(size, chunk) }
	raw := func(w *precopyWriter, kind uint8, first, count uint64, payload []byte) {
		w.write(recHead(kind, 0, first, count), payload)
	}
	tests := []struct {
		name    string
		noDisk  bool
		records func(w *precopyWriter)
		corrupt bool // ErrPrecopyCorrupt; else want
		want    string
	}{
		{name: "disk data before its begin", corrupt: true, want: "outside the disk's begin",
			records: func(w *precopyWriter) { w.disk(0, 0, block) }},
		{name: "past the end", corrupt: true, want: "outside a disk of 262144 bytes",
			records: func(w *precopyWriter) { begin(w); raw(w, recDisk, size, DiskBlock, block) }},
		{name: "running over the end", corrupt: true, want: "outside a disk",
			records: func(w *precopyWriter) {
				begin(w)
				raw(w, recDisk, size-DiskBlock, 2*DiskBlock, append(block, block...))
			}},
		{name: "offset overflowing", corrupt: true, want: "outside a disk",
			records: func(w *precopyWriter) { begin(w); raw(w, recDisk, ^uint64(0)-DiskBlock+1, DiskBlock, block) }},
		{name: "misaligned", corrupt: true, want: "not block aligned",
			records: func(w *precopyWriter) { begin(w); raw(w, recDisk, 512, DiskBlock, block) }},
		{name: "a huge length", corrupt: true, want: "over 1048576",
			records: func(w *precopyWriter) { begin(w); raw(w, recDisk, 0, 1<<40, nil) }},
		{name: "a bad checksum", corrupt: true, want: "checksum",
			records: func(w *precopyWriter) {
				begin(w)
				h := recHead(recDisk, 0, 0, DiskBlock)
				w.w.Write(h)
				w.w.Write(block)
				w.w.Write([]byte{1, 2, 3, 4})
			}},
		{name: "a second begin", corrupt: true, want: "a second disk begin",
			records: func(w *precopyWriter) { begin(w); begin(w) }},
		{name: "a disk for a side without one", noDisk: true, corrupt: true, want: "no local disk",
			records: func(w *precopyWriter) { begin(w) }},
		{name: "another chunk size", corrupt: true, want: "disk chunks of 4096 bytes",
			records: func(w *precopyWriter) { w.diskBegin(size, DiskBlock) }},
		{name: "a disk of another size", want: "the sender's disk has 266240 bytes",
			records: func(w *precopyWriter) { w.diskBegin(size+DiskBlock, chunk) }},
		{name: "the state without the disk proven", corrupt: true, want: "never proved",
			records: func(w *precopyWriter) { begin(w); raw(w, recState, 0, 1, []byte{0}) }},
		{name: "a stream without the disk", corrupt: true, want: "never proved",
			records: func(w *precopyWriter) { raw(w, recState, 0, 1, []byte{0}) }},
		{name: "a root of other copies", want: "the copies differ",
			records: func(w *precopyWriter) { begin(w); w.diskDone(0, [32]byte{1}) }},
	}
	for _, tt := range tests {
		t.Run(strings.ReplaceAll(tt.name, " ", "_"), func(t *testing.T) {
			d, path := diskImage(t, size, 5)
			before, _ := os.ReadFile(path)
			disk := d
			if tt.noDisk {
				disk = nil
			}
			_, err := ReceivePrecopyDisk(bytes.NewReader(diskStream(t, tt.records)), disk)
			if err == nil || errors.Is(err, ErrPrecopyCorrupt) != tt.corrupt || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("%v; want %q (corrupt %t)", err, tt.want, tt.corrupt)
			}
			d.Sync(t.Context())
			if after, _ := os.ReadFile(path); !bytes.Equal(before, after) {
				t.Fatal("the refused stream wrote the disk")
			}
		})
	}
}

// TestPrecopyDiskRecordsApplied: good disk records are written, and the
// root of the copy they make is proven.
func TestPrecopyDiskRecordsApplied(t *testing.T) {
	const size = 256 << 10
	src, srcPath := diskImage(t, size, 9)
	d, path := diskImage(t, size, 5)
	chunk := DiskChunkSize(size)
	hashes, err := diskChunkHashes(src, chunk)
	if err != nil {
		t.Fatal(err)
	}
	stream := diskStream(t, func(w *precopyWriter) {
		w.diskBegin(size, chunk)
		buf := make([]byte, chunk)
		for i := range uint64(size / chunk) {
			b, _ := readChunk(src, chunk, i, buf)
			w.disk(0, i*chunk, b)
		}
		w.diskDone(0, diskRoot(size, chunk, hashes))
	})
	// No state follows: the error is the stream's end, after the proof.
	_, err = ReceivePrecopyDisk(bytes.NewReader(stream), d)
	if err == nil || !strings.Contains(err.Error(), "ends before its state") {
		t.Fatalf("%v; want the stream's end after a proven disk", err)
	}
	a, _ := os.ReadFile(srcPath)
	b, _ := os.ReadFile(path)
	if !bytes.Equal(a, b) {
		t.Fatal("the copy is not the sender's")
	}
}
