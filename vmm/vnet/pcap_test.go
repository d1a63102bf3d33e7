package vnet

import (
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/google/gopacket/layers"
	"github.com/google/gopacket/pcapgo"
)

// TestPcapRecordsExchange records a user-backend exchange to a file and
// reads it back with pcapgo: the frames in the order they crossed the NIC.
func TestPcapRecordsExchange(t *testing.T) {
	u, hosts := newUser(t, 1)
	path := filepath.Join(t.TempDir(), "nic.pcap")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	p, err := WithPcap(u, f)
	if err != nil {
		t.Fatal(err)
	}
	var b Backend = p // it is a Backend
	start := time.Now()

	var want [][]byte
	arpReq := arpFrame(t, layers.ARPRequest, u.spec.MAC, broadcastMAC, guestIP, gwIP, make([]byte, 6))
	if err := b.Send(arpReq); err != nil {
		t.Fatal(err)
	}
	want = append(want, arpReq, receiveFrame(t, b, time.Second))

	c := newClient(t)
	c.WriteToUDPAddrPort([]byte("ping"), hosts[0])
	in := receiveFrame(t, b, 5*time.Second)
	_, _, udp := udpOf(t, in)
	out := guestReply(t, u, udp, []byte("pong"))
	if err := b.Send(out); err != nil {
		t.Fatal(err)
	}
	clientRead(t, c, 5*time.Second)
	junk := []byte("not a frame at all") // dropped by the backend, recorded all the same
	b.Send(junk)
	want = append(want, in, out, junk)

	// Read the file while the backend is still open: it is readable as written.
	got := readPcap(t, path)
	if len(got) != len(want) {
		t.Fatalf("pcap holds %d frames, want %d", len(got), len(want))
	}
	for i := range want {
		if !bytes.Equal(got[i].data, want[i]) {
			t.Errorf("frame %d = %x, want %x", i, got[i].data, want[i])
		}
		if got[i].at.Before(start.Truncate(time.Second)) || got[i].at.After(time.Now()) || (i > 0 && got[i].at.Before(got[i-1].at)) {
			t.Errorf("frame %d stamped %v", i, got[i].at)
		}
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	if !errors.Is(b.Send(out), ErrClosed) {
		t.Error("the pcap wrapper did not pass Close through")
	}
}

type pcapRecord struct {
	data []byte
	at   time.Time
}

func readPcap(t *testing.T, path string) []pcapRecord {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	r, err := pcapgo.NewReader(f)
	if err != nil {
		t.Fatal(err)
	}
	if r.LinkType() != layers.LinkTypeEthernet {
		t.Errorf("link type %v", r.LinkType())
	}
	var recs []pcapRecord
	for {
		data, ci, err := r.ReadPacketData()
		if err == io.EOF {
			return recs
		}
		if err != nil {
			t.Fatalf("record %d: %v", len(recs), err)
		}
		recs = append(recs, pcapRecord{data, ci.Timestamp})
	}
}

// TestPcapOneWritePerRecord checks what makes a crash leave a readable
// file: the header and each record reach the writer whole, in one Write.
func TestPcapOneWritePerRecord(t *testing.T) {
	var w writeLog
	u, _ := newUser(t, 0)
	p, err := WithPcap(u, &w)
	if err != nil {
		t.Fatal(err)
	}
	frames := [][]byte{make([]byte, MaxFrame), make([]byte, MinFrame), make([]byte, 60)}
	for _, f := range frames {
		p.Send(f)
	}
	if len(w.writes) != 1+len(frames) || len(w.writes[0]) != 24 {
		t.Fatalf("%d writes (first %d bytes), want the 24-byte header then one per frame", len(w.writes), len(w.writes[0]))
	}
	for i, f := range frames {
		if len(w.writes[i+1]) != 16+len(f) {
			t.Errorf("record %d written as %d bytes, want %d", i, len(w.writes[i+1]), 16+len(f))
		}
	}
}

type writeLog struct{ writes [][]byte }

func (w *writeLog) Write(b []byte) (int, error) {
	w.writes = append(w.writes, bytes.Clone(b))
	return len(b), nil
}

type failingWriter struct{ left int }

func (w *failingWriter) Write(b []byte) (int, error) {
	if w.left == 0 {
		return 0, errors.New("disk full")
	}
	w.left--
	return len(b), nil
}

// TestPcapWriteErrorStopsRecordingOnly: a failing capture never fails the NIC.
func TestPcapWriteErrorStopsRecordingOnly(t *testing.T) {
	u, _ := newUser(t, 0)
	p, err := WithPcap(u, &failingWriter{left: 1})
	if err != nil {
		t.Fatal(err)
	}
	req := arpFrame(t, layers.ARPRequest, u.spec.MAC, broadcastMAC, guestIP, gwIP, make([]byte, 6))
	if err := p.Send(req); err != nil {
		t.Fatalf("Send with a failing capture: %v", err)
	}
	receiveFrame(t, p, time.Second)
	if p.Err() == nil {
		t.Error("the write error was lost")
	}
	if err := p.Close(); err == nil {
		t.Error("Close did not report the capture's error")
	}
	if _, err := WithPcap(u, &failingWriter{}); err == nil {
		t.Error("WithPcap ignored a failing header write")
	}
}
