package replay

import (
	"bytes"
	"errors"
	"testing"
)

// TestNetReceiveRoundTrip records receive batches (empty, one frame, a full
// batch of 256 maximum-size frames), encodes them, and replays them.
func TestNetReceiveRoundTrip(t *testing.T) {
	big := bytes.Repeat([]byte{0xab}, MaxFrame)
	batches := [][][]byte{nil, {[]byte("frame one")}, make([][]byte, 256)}
	for i := range batches[2] {
		batches[2][i] = big
	}
	var log bytes.Buffer
	enc := NewEncoder(&log)
	live := &scriptedWorld{}
	rec := NewRecorder(live, enc, RecorderConfig{})
	if err := rec.Start(StartInfo{VMID: "t"}); err != nil {
		t.Fatal(err)
	}
	bufs, lens := make([][]byte, 256), make([]int, 256)
	for i := range bufs {
		bufs[i] = make([]byte, MaxFrame)
	}
	for i, b := range batches {
		live.packets = b
		n, err := rec.NetReceive(ExecPoint{Exit: uint64(i + 1), Regs: Regs{RIP: 0x100000}}, bufs, lens)
		if err != nil || n != len(b) {
			t.Fatalf("batch %d: recorded %d frames, %v", i, n, err)
		}
	}
	if err := rec.Finish([32]byte{}); err != nil {
		t.Fatal(err)
	}
	if err := enc.Flush(); err != nil {
		t.Fatal(err)
	}
	rep := NewReplayer(NewDecoder(bytes.NewReader(log.Bytes())))
	if _, err := rep.VerifyStart(StartInfo{}); err != nil {
		t.Fatal(err)
	}
	for i, b := range batches {
		n, err := rep.NetReceive(ExecPoint{Exit: uint64(i + 1), Regs: Regs{RIP: 0x100000}}, bufs, lens)
		if err != nil || n != len(b) {
			t.Fatalf("batch %d: replayed %d frames, %v", i, n, err)
		}
		for j := 0; j < n; j++ {
			if !bytes.Equal(bufs[j][:lens[j]], b[j]) {
				t.Fatalf("batch %d frame %d differs", i, j)
			}
		}
	}
	if err := rep.Finish([32]byte{}); err != nil {
		t.Fatal(err)
	}
}

// TestNetReceiveReplayWithFewerBuffers: a replaying guest that offers fewer
// buffers than the recording filled has diverged.
func TestNetReceiveReplayWithFewerBuffers(t *testing.T) {
	var log bytes.Buffer
	enc := NewEncoder(&log)
	rec := NewRecorder(&scriptedWorld{packets: [][]byte{[]byte("a"), []byte("b")}}, enc, RecorderConfig{})
	rec.Start(StartInfo{})
	bufs, lens := [][]byte{make([]byte, MaxFrame), make([]byte, MaxFrame)}, make([]int, 2)
	p := ExecPoint{Exit: 1, Regs: Regs{RIP: 0x100000}}
	if _, err := rec.NetReceive(p, bufs, lens); err != nil {
		t.Fatal(err)
	}
	enc.Flush()
	rep := NewReplayer(NewDecoder(bytes.NewReader(log.Bytes())))
	rep.VerifyStart(StartInfo{})
	_, err := rep.NetReceive(p, bufs[:1], lens[:1])
	var d *DivergenceError
	if !errors.As(err, &d) || d.Exit != 1 {
		t.Fatalf("got %v, want a divergence at exit 1", err)
	}
}

func TestNextFrameRejectsMalformedBatches(t *testing.T) {
	for _, b := range [][]byte{{0x05, 1, 2}, {0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01}, AppendFrame(nil, make([]byte, MaxFrame+1))} {
		if _, _, ok := NextFrame(b); ok {
			t.Errorf("% x accepted", b[:min(len(b), 12)])
		}
	}
}
