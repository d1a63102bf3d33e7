package vmm

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"
)

func testDisk(t *testing.T, blocks int) (*DiskFile, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "disk.img")
	if err := os.WriteFile(path, make([]byte, blocks*DiskBlock), 0o600); err != nil {
		t.Fatal(err)
	}
	d, err := OpenDiskFile(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	return d, path
}

func block(b byte) []byte { return bytes.Repeat([]byte{b}, DiskBlock) }

func readBlock(t *testing.T, d *DiskFile, n uint64) []byte {
	t.Helper()
	buf := make([]byte, DiskBlock)
	if err := d.ReadAt([]uint64{n * DiskBlock}, [][]byte{buf}); err != nil {
		t.Fatal(err)
	}
	return buf
}

// TestDiskFileStagedThenApplied: a staged batch is seen by reads at once
// and reaches the file only when applied; a later batch to the same block
// wins, also while the earlier one is being written.
func TestDiskFileStagedThenApplied(t *testing.T) {
	ctx := context.Background()
	d, path := testDisk(t, 4)
	b1 := EncodeDiskWrite(nil, DiskBlock, block(1))
	b2 := EncodeDiskFlush(EncodeDiskWrite(nil, DiskBlock, block(2)))
	if _, _, err := d.Stage(ctx, b1); err != nil {
		t.Fatal(err)
	}
	t2, flush, err := d.Stage(ctx, b2)
	if err != nil || !flush {
		t.Fatalf("second batch: flush %t, %v", flush, err)
	}
	if got := readBlock(t, d, 1); !bytes.Equal(got, block(2)) {
		t.Fatalf("a read after staging sees %d, want the newest write, 2", got[0])
	}
	file, _ := os.ReadFile(path)
	if !bytes.Equal(file, make([]byte, len(file))) {
		t.Fatal("a staged batch reached the file before it was applied")
	}
	if err := d.Apply(b1); err != nil {
		t.Fatal(err)
	}
	if err := d.Wait(ctx, 1); err != nil {
		t.Fatal(err)
	}
	if got := readBlock(t, d, 1); !bytes.Equal(got, block(2)) {
		t.Fatalf("after the first batch was written, a read sees %d: the second, staged, must still win", got[0])
	}
	if err := d.Apply(b2); err != nil {
		t.Fatal(err)
	}
	if err := d.Wait(ctx, t2); err != nil {
		t.Fatal(err)
	}
	file, _ = os.ReadFile(path)
	if !bytes.Equal(file[DiskBlock:2*DiskBlock], block(2)) || d.Pending() != 0 {
		t.Fatalf("after both batches: block 1 is %d, %d pending", file[DiskBlock], d.Pending())
	}
	if err := d.Apply(b2); err == nil {
		t.Fatal("a batch applied twice (never staged again) was taken")
	}
}

// TestDiskFileHoldsBackAGuestThatOutrunsIt: with more than the bound
// staged and unwritten, Stage waits until writes are applied, and gives
// up when its context ends.
func TestDiskFileHoldsBackAGuestThatOutrunsIt(t *testing.T) {
	d, _ := testDisk(t, 16)
	ctx := context.Background()
	big := make([]byte, 0, maxUnwrittenDisk/2+64)
	for off := uint64(0); len(big)+DiskBlock+32 <= maxUnwrittenDisk/2; off = (off + DiskBlock) % (16 * DiskBlock) {
		big = EncodeDiskWrite(big, off, block(byte(off/DiskBlock)))
	}
	for i := 0; i < 2; i++ {
		if _, _, err := d.Stage(ctx, big); err != nil {
			t.Fatal(err)
		}
	}
	short, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel()
	if _, _, err := d.Stage(short, big); err != ErrInterrupted {
		t.Fatalf("a third batch past the bound: %v, want to wait until interrupted", err)
	}
	done := make(chan error, 1)
	go func() {
		_, _, err := d.Stage(ctx, big)
		done <- err
	}()
	if err := d.Apply(big); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatalf("after a batch was applied and written: %v", err)
	}
}

// TestDiskBatchesFromOutsideAreChecked: a batch from a log or a peer that
// does not parse, or writes outside the disk or off a block, is an error.
func TestDiskBatchesFromOutsideAreChecked(t *testing.T) {
	ok := func(DiskRecord) error { return nil }
	good := EncodeDiskFlush(EncodeDiskWrite(nil, 0, block(7)))
	if err := EachDiskRecord(good, DiskBlock, ok); err != nil {
		t.Fatalf("a good batch: %v", err)
	}
	for name, b := range map[string][]byte{
		"unknown record": {'X'},
		"cut length":     good[:3],
		"cut data":       good[:100],
		"past the end":   EncodeDiskWrite(nil, DiskBlock, block(1)),
		"off a block":    EncodeDiskWrite(nil, 512, block(1)),
		"empty write":    EncodeDiskWrite(nil, 0, nil),
		"short hash":     {batchHash, 1, 2},
	} {
		if err := EachDiskRecord(b, DiskBlock, ok); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

// TestDiskJournalKeepsWhatMayBeIncomplete: the journal forgets a write
// once a flush after the flush that covered it was replayed, keeps the
// newest data of a block, and writes it all again in block order.
func TestDiskJournalKeepsWhatMayBeIncomplete(t *testing.T) {
	j := NewDiskJournal(8 * DiskBlock)
	observe := func(b []byte) {
		t.Helper()
		if err := j.Observe(b); err != nil {
			t.Fatal(err)
		}
	}
	observe(EncodeDiskWrite(nil, 5*DiskBlock, block(1)))
	observe(EncodeDiskFlush(EncodeDiskWrite(nil, 2*DiskBlock, block(2)))) // flush 1: 5 and 2 may be incomplete
	observe(EncodeDiskWrite(nil, 5*DiskBlock, block(3)))
	if j.Blocks() != 2 {
		t.Fatalf("%d blocks after the first flush; want 2 (5 rewritten, 2)", j.Blocks())
	}
	observe(EncodeDiskFlush(nil)) // flush 2: flush 1 is done, so 2 (written before it) is durable
	if j.Blocks() != 1 {
		t.Fatalf("%d blocks after the second flush; want 1 (5, rewritten after flush 1)", j.Blocks())
	}
	var offs []uint64
	var flushed bool
	if err := EachDiskRecord(j.Batch(), 8*DiskBlock, func(r DiskRecord) error {
		if r.Flush {
			flushed = true
		} else {
			offs = append(offs, r.Off)
			if r.Data[0] != 3 {
				t.Errorf("block %d: data %d, want the newest, 3", r.Off/DiskBlock, r.Data[0])
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if len(offs) != 1 || offs[0] != 5*DiskBlock || !flushed {
		t.Fatalf("batch writes %v, flush %t; want block 5 and a flush", offs, flushed)
	}
}
